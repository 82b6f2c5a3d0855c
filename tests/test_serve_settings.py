"""The AP's settings record (:class:`~semalign.server.serve_settings.ServeSettings`): it refuses
bad values with one line, the CLI reports them with one line and exit code 2, and ``run`` and
``ap`` build the same record from the same options (one builder, so their serve paths cannot
drift)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from semalign.common.contract import TlsFiles
from semalign.common.errors import UsageError
from semalign.deploy.serving.ap_side import grpc_workers
from semalign.server.serve_settings import ServeSettings
from semalign.server.session import WaitPolicy
from test_cli_files import AP, RUN, assert_one_line, run_cli
from test_cli_files import folder as folder  # noqa: F401  (the fixture: latents, afile, adir)

#: field overrides -> what the one line must say
BAD_RECORDS = {
    "no invitees": ({"invitees": 0}, "--users must name at least one user"),
    "empty invitees": ({"invitees": ()}, "--users must name at least one user"),
    "duplicate ids": ({"invitees": ("u1", "u1")}, "a user id is given twice"),
    "join timeout 0": ({"join_timeout": 0.0}, "--join-timeout must be a positive"),
    "join timeout nan": ({"join_timeout": math.nan}, "--join-timeout must be a positive"),
    "reply timeout < 0": (
        {"policy": WaitPolicy(reply_timeout=-1)},
        "--reply-timeout must be a positive",
    ),
    "deadline inf": ({"policy": WaitPolicy(round_deadline=math.inf)}, "--round-deadline must"),
    "stragglers": ({"policy": WaitPolicy(stragglers="skip")}, "--stragglers must be drop or wait"),
    "grace < 0": ({"policy": WaitPolicy(rejoin_grace=-2)}, "--rejoin-grace must be 0 or"),
    "first message 0": ({"first_message_timeout": 0.0}, "--first-message-timeout must be"),
    "streams 0": ({"max_streams_per_address": 0}, "--max-streams-per-address must be at least 1"),
    "resume, no checkpoint": ({"resume": True}, "--resume needs a --checkpoint"),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_settings_record_refuses_bad_values_with_one_line(case):
    fields, expected = BAD_RECORDS[case]
    with pytest.raises(UsageError) as caught:
        ServeSettings(**{"invitees": 2, **fields})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_settings_record_keeps_good_values():
    policy = WaitPolicy(reply_timeout=3, round_deadline=1, stragglers="drop", rejoin_grace=0)
    settings = ServeSettings(["u1", "u2"], join_timeout=5, policy=policy, checkpoint="c")
    assert settings.invitees == ("u1", "u2") and settings.users == 2
    assert settings.expected == ["u1", "u2"]
    assert ServeSettings(3).expected == 3 and ServeSettings(3).users == 3
    with pytest.raises(UsageError):  # frozen values are validated again when replaced
        replace(settings, join_timeout=-1)


#: the same bad value through ``run`` and ``ap``
BAD_OPTIONS = {
    "first-message-timeout": (["--first-message-timeout", "0"], "--first-message-timeout must"),
    "reply-timeout": (["--reply-timeout", "-3"], "--reply-timeout must be a positive"),
    "rejoin-grace": (["--rejoin-grace", "nan"], "--rejoin-grace must be 0 or"),
    "round-deadline": (["--round-deadline", "0"], "--round-deadline must be a positive"),
}


@pytest.mark.parametrize("command", ["run", "ap"])
@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_setting_is_one_line_exit_2(command, case, folder, capsys):  # noqa: F811
    extra, expected = BAD_OPTIONS[case]
    argv = [*(RUN if command == "run" else AP), *extra, "--out", "{d}/r.json"]
    code, err = run_cli(argv, folder, capsys)
    assert_one_line(code, err, expected)


SHARED = ["--join-timeout", "7", "--reply-timeout", "9", "--first-message-timeout", "4"]
SHARED += ["--rejoin-grace", "3", "--round-deadline", "2", "--stragglers", "drop"]
SHARED += ["--listen", "127.0.0.1:0", "--progress-file", "{d}/progress.json"]
SHARED += ["--out", "{d}/r.json", "--seeds", "1", "-q"]


class Captured(Exception):
    pass


def _settings_of(command: str, argv: list[str], folder, capsys, monkeypatch) -> ServeSettings:  # noqa: F811
    """The settings ``command`` hands to its serve path (its ``load_plan``), nothing started."""
    seen: list[ServeSettings] = []

    def capture(latents, ap, config, seeds, settings, **_):
        seen.append(settings)
        raise UsageError("captured")

    monkeypatch.setattr(f"semalign.deploy.commands.{command}.load_plan", capture)
    code, err = run_cli(argv, folder, capsys)
    assert code == 2 and "captured" in err, err
    assert len(seen) == 1
    return seen[0]


def test_run_and_ap_build_the_same_settings(folder, capsys, monkeypatch):  # noqa: F811
    data = ["--latents", "{d}/lat", "--ap-encoder", "ap_enc", "--insecure"]
    run_argv = ["run", *data, "--user-encoders", "user_enc0", "--no-flower", *SHARED]
    ap_argv = ["ap", *data, "--user-ids", "user1", "--secret-file", "{d}/secret", *SHARED]
    run = _settings_of("run", run_argv, folder, capsys, monkeypatch)
    ap = _settings_of("ap", ap_argv, folder, capsys, monkeypatch)
    # what each command decides for itself: run's users are all on this host (and it makes
    # its own TLS once its workdir exists); ap's TLS comes from its options
    assert run.max_streams_per_address == grpc_workers(1) and run.tls is None
    assert ap.tls == TlsFiles()
    own = {"tls": None, "max_streams_per_address": None, "health_listen": None}
    assert replace(run, **own) == replace(ap, **own)
    policy = WaitPolicy(reply_timeout=9, round_deadline=2, stragglers="drop", rejoin_grace=3)
    assert run.policy == policy and run.invitees == ("user1",)
    assert (run.join_timeout, run.first_message_timeout, run.listen) == (7, 4, "127.0.0.1:0")
    assert run.checkpoint == str(folder / "r.json") + ".checkpoint" and not run.resume
    assert run.progress_file == str(folder / "progress.json")
