"""``semalign certs``: whose secrets it makes, named as ``semalign ap`` names the users it waits
for (``--num-users N`` or ``--user-ids IDS``), and the deprecated ``--users`` that took either,
which still works and logs one warning."""

from __future__ import annotations

import logging

import pytest

from semalign.cli import build_parser, main


@pytest.fixture
def made(monkeypatch) -> list[list[str]]:
    """The users of each ``semalign certs`` call (no keys are made)."""
    calls: list[list[str]] = []

    def record(out, users, **kwargs) -> list:
        calls.append(list(users))
        return []

    monkeypatch.setattr("semalign.deploy.commands.certs.make_secrets", record)
    return calls


def certs(tmp_path, *options: str) -> int:
    """``semalign certs`` in this process: its exit code (argparse's own errors exit too)."""
    try:
        return main(["certs", "--out", str(tmp_path / "secrets"), "-q", *options])
    except SystemExit as exc:
        return int(exc.code or 0)


def deprecation_notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_num_users_user_ids_and_the_default(made, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="semalign.cli"):
        assert certs(tmp_path, "--num-users", "3") == 0
        assert certs(tmp_path, "--user-ids", "alice, bob") == 0
        assert certs(tmp_path) == 0
    ten = [f"user{i}" for i in range(1, 11)]
    assert made == [["user1", "user2", "user3"], ["alice", "bob"], ten]
    assert not deprecation_notes(caplog)


@pytest.mark.parametrize(("old", "users"), [("2", ["user1", "user2"]), ("u7,u9", ["u7", "u9"])])
def test_users_is_a_deprecated_alias_logging_one_warning(made, tmp_path, caplog, old, users):
    with caplog.at_level(logging.WARNING, logger="semalign.cli"):
        assert certs(tmp_path, "--users", old) == 0
    assert made == [users]
    notes = deprecation_notes(caplog)
    assert len(notes) == 1, notes
    assert (
        notes[0].startswith("--users is deprecated")
        and "--num-users N or --user-ids IDS" in notes[0]
    )


def test_the_help_names_the_new_options_and_the_old_one_as_deprecated():
    parser = build_parser()
    certs_parser = parser._subparsers._group_actions[0].choices["certs"]  # type: ignore[union-attr]
    text = certs_parser.format_help()
    assert "--num-users N" in text and "--user-ids IDS" in text
    assert "deprecated: --num-users N or --user-ids IDS" in " ".join(text.split())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--num-users", "0"], "expected a positive integer"),
        (["--user-ids", "3"], "is a count: use --num-users 3"),
        (["--user-ids", "../x"], "user id '../x' is not"),
        (["--user-ids", ","], "--user-ids must name at least one user"),
        (["--num-users", "2", "--user-ids", "a"], "not allowed with argument"),
    ],
)
def test_bad_users_are_one_line_and_make_nothing(made, tmp_path, capsys, options, message):
    assert certs(tmp_path, *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert made == []
