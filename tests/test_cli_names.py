"""Option names: no prefix matching, one-line errors on every subcommand, the clear names
(``--ap-encoder``, ``--user-encoders``, ``--num-users``, ``--user-ids``, ``--admm-penalty``,
``--tx-correlation``/``--rx-correlation``) and their deprecated spellings, which still work and
warn once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from synthetic import make_latents

from semalign.cli import build_parser, main

SMALL = ["--channel-uses", "1", "--antennas-tx", "2", "--antennas-rx", "2", "--iterations", "2"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> tuple[Path, str, list[str]]:
    return make_latents(tmp_path_factory.mktemp("latents"), n_train=160, n_test=48)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["simulate", "--seed", "5"], "unrecognized arguments: --seed"),
        (["sweep", "--seed", "5"], "unrecognized arguments: --seed"),
        (["simulate", "--chan", "2"], "unrecognized arguments: --chan"),
        (["run", "--iter", "2"], "unrecognized arguments: --iter"),
        (["simulate", "--strategy", "nope"], "invalid choice: 'nope'"),
        (["sweep", "--preset", "nope"], "invalid choice: 'nope'"),
        (["plot", "--nope"], "unrecognized arguments: --nope"),
        (["encode", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["simulate", "--iterations", "x"], "invalid int value: 'x'"),
        (["simulate", "--user-encoders", "3"], "use --num-users 3"),
        (["simulate", "--num-users", "0"], "expected a positive integer"),
        (["ap", "--user-ids", "2"], "use --num-users 2"),
    ],
)
def test_bad_option_or_choice_is_one_line_exit_2(argv, needle, capsys):
    try:
        code = main(argv)  # a command's own check returns 2
    except SystemExit as exit_:  # argparse's exits
        code = exit_.code
    assert code == 2
    line = one_error_line(capsys)
    assert "error:" in line and needle in line, line


def test_no_subcommand_matches_option_prefixes():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert commands and all(not p.allow_abbrev for p in commands.values())
    assert not parser.allow_abbrev


def simulate(latents, out: Path, names: list[str]) -> dict:
    root, _, _ = latents
    argv = ["simulate", "--latents", str(root), *names, *SMALL, "--seeds", "1"]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def test_new_and_deprecated_spellings_run_the_same_session(latents, tmp_path, caplog):
    _, ap, users = latents
    new = ["--ap-encoder", ap, "--user-encoders", ",".join(users), "--admm-penalty", "0.5"]
    new += ["--channel-model", "kronecker", "--tx-correlation", "0.3", "--rx-correlation", "0.1"]
    old = ["--ap", ap, "--users", ",".join(users), "--rho", "0.5"]
    old += ["--channel-model", "kronecker", "--rho-tx", "0.3", "--rho-rx", "0.1"]
    with caplog.at_level(logging.WARNING, logger="semalign.cli"):
        a = simulate(latents, tmp_path / "new.json", new)
        assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
        b = simulate(latents, tmp_path / "old.json", [*old, "--rho", "0.5"])  # twice: one note
    notes = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert sorted(n.split()[0] for n in notes) == [
        "--ap",
        "--rho",
        "--rho-rx",
        "--rho-tx",
        "--users",
    ]
    assert any("use --admm-penalty" in n for n in notes)
    assert a["config"] == b["config"] and a["mean_mse"] == b["mean_mse"]
    assert a["config"]["rho"] == 0.5 and a["config"]["channel"]["rho_tx"] == 0.3


def test_num_users_takes_the_first_encoders(latents, tmp_path):
    _, ap, users = latents
    got = simulate(latents, tmp_path / "n.json", ["--ap-encoder", ap, "--num-users", "1"])
    assert got["config"]["users"] == users[:1]


def test_bad_renamed_value_names_both_spellings(latents, capsys):
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap-encoder", ap, "--num-users", "2"]
    assert main([*argv, "--admm-penalty", "-1"]) == 2
    line = one_error_line(capsys)
    assert "--admm-penalty (formerly --rho)" in line, line
    assert main([*argv, "--channel-model", "kronecker", "--tx-correlation", "2"]) == 2
    assert "--tx-correlation (formerly --rho-tx)" in one_error_line(capsys)


def test_ap_users_spellings(capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is checked (results/ap.json)
    parser = build_parser()
    for names in (["--num-users", "3"], ["--user-ids", "user1,user7"], ["--users", "2"]):
        assert parser.parse_args(["ap", *names, "--insecure"]).users == names[1]
    with caplog.at_level(logging.WARNING, logger="semalign.cli"):
        assert main(["ap", "--users", "user1,user1", "--insecure"]) == 2
    assert "--user-ids: a user id is given twice" in one_error_line(capsys)
    assert any("--users is deprecated" in r.getMessage() for r in caplog.records)
    assert main(["ap", "--insecure"]) == 2
    assert "--num-users N or --user-ids IDS" in one_error_line(capsys)
