"""Every option of ``semalign ap``, ``user``, ``run`` and ``token``: a bad value ends the command
with one line on stderr and exit code 2, before anything starts (no latents loaded, no port
bound, no process started), and the credential commands work."""

from __future__ import annotations

import os
import stat

import pytest
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import Processes

from semalign.cli import main

SECRET = "cli-test-secret-0123456789"
USER = ["user", "--ap", "127.0.0.1:1", "--user-id", "user1", "--encoder", "e", "--latents", "{d}"]
RUN = ["run", "--latents", "{d}", "--ap", "a", "--users", "1"]
AP = ["ap", "--latents", "{d}", "--ap", "a", "--users", "2"]

CASES = {
    # timeouts: negative, zero, not finite, not a number
    "reply-timeout -1": ([*RUN, "--reply-timeout", "-1"], "--reply-timeout must be a positive"),
    "reply-timeout=-1": ([*RUN, "--reply-timeout=-1"], "--reply-timeout must be a positive"),
    "ap reply-timeout 0": ([*AP, "--reply-timeout", "0"], "--reply-timeout must be a positive"),
    "join-timeout nan": ([*AP, "--join-timeout", "nan"], "--join-timeout must be a positive"),
    "join-timeout inf": ([*RUN, "--join-timeout", "inf"], "--join-timeout must be a positive"),
    "first-message-timeout": (
        [*AP, "--first-message-timeout", "-3"],
        "--first-message-timeout must be a positive",
    ),
    "connect-timeout": (
        [*USER, "--token", "t", "--connect-timeout", "0"],
        "--connect-timeout must be a positive",
    ),
    "timeout not a number": ([*RUN, "--reply-timeout", "soon"], "invalid float value: 'soon'"),
    # addresses
    "listen no port": ([*RUN, "--listen", "localhost"], "bad --listen address"),
    "listen port range": ([*AP, "--listen", "0.0.0.0:70000"], "out of range"),
    "advertise": ([*AP, "--advertise", "ap"], "bad --advertise address"),
    "superlink-listen": ([*AP, "--superlink-listen", "x:y"], "bad --superlink-listen"),
    "user ap address": (["user", "--ap", "", "--user-id", "u1", "--encoder", "e"], "bad AP"),
    "superlink": (["user", "--superlink", "h:0x1", "--user-id", "u1", "--encoder", "e"], "bad"),
    # user ids, tokens, secrets, limits
    "ap users zero": ([*AP[:-1], "0"], "--users must name at least one user"),
    "ap users bad id": ([*AP[:-1], "user1,a b"], "user id 'a b' is not"),
    "ap users twice": ([*AP[:-1], "user1,user1"], "a user id is given twice"),
    "ap users missing": (AP[:-2], "required: --users"),
    "user id": ([*USER[:4], "../etc", *USER[5:]], "user id '../etc' is not"),
    "user token missing": (USER, "this user's token is needed"),
    "user token non-ascii": ([*USER, "--token", "tök"], "printable ASCII"),
    "user token too long": ([*USER, "--token", "t" * 300], "printable ASCII"),
    "ap secret file missing": ([*AP, "--secret-file", "{d}/none"], "--secret-file"),
    "ap secret too short": ([*AP, "--secret-file", "{d}/short"], "at least 16 characters"),
    "streams per address": ([*AP, "--max-streams-per-address", "0"], "at least 1, got 0"),
    "token without secret": (["token", "user1"], "the AP's secret is needed"),
    "token bad id": (["token", "a/b", "--secret-file", "{d}/secret"], "user id 'a/b' is not"),
    # user's own options
    "ordinal": ([*USER, "--token", "t", "--ordinal", "-1"], "--ordinal must be 0 or more"),
    "antennas-rx": ([*USER, "--token", "t", "--antennas-rx", "0"], "--antennas-rx must be at"),
    "snr-db": ([*USER, "--token", "t", "--snr-db", "nan"], "--snr-db must be a finite"),
    "runtime-port": ([*USER, "--token", "t", "--runtime-port", "70000"], "--runtime-port"),
    "encoder unknown": (
        ["user", "--ap", "h:1", "--user-id", "u1", "--encoder", "nope", "--token", "t"],
        "unknown encoder 'nope'",
    ),
    "flwr-home under a file": (
        [*USER, "--token", "t", "--flwr-home", "{d}/secret/x"],
        "is not a folder",
    ),
    # files and folders
    "tls pair": ([*USER, "--token", "t", "--tls-cert", "{d}/secret"], "go together"),
    "tls file": ([*AP, "--tls-cert", "{d}/none", "--tls-key", "{d}/none"], "no such file"),
    "latents": (["run", "--latents", "{d}/none"], "--latents {d}/none: no such folder"),
    "cache-dir": (["ap", "--users", "2", "--cache-dir", "{d}/secret"], "not a folder"),
    "workdir": ([*RUN, "--workdir", "{d}/secret"], "exists and is not a folder"),
    "out is a folder": ([*RUN, "--out", "{d}"], "--out"),
    # --out before the checkpoint beside it; a --checkpoint of its own, checked the same way
    "ap out under a file": (
        [*AP, "--out", "{d}/secret/r.json"],
        "--out {d}/secret/r.json: {d}/secret is not a folder",
    ),
    "checkpoint under a file": (
        [*RUN, "--checkpoint", "{d}/secret/c"],
        "--checkpoint {d}/secret/c: {d}/secret is not a folder",
    ),
    "ap encoder": (["ap", "--users", "2", "--ap", "nope"], "unknown encoder 'nope'"),
    # alignment options and unknown options
    "antennas-tx": ([*RUN, "--antennas-tx", "0"], "--antennas-tx"),
    "iterations": ([*AP, "--iterations", "-3"], "--iterations"),
    "snr out of bounds": ([*RUN, "--snr-db", "1000"], "--snr-db"),
    "strategy": ([*RUN, "--strategy", "bogus"], "invalid choice: 'bogus'"),
    "channel-uses type": ([*AP, "--channel-uses", "abc"], "invalid int value"),
    "seeds": ([*RUN, "--seeds", "x"], "--seeds must be comma-separated integers"),
    "unknown option": ([*RUN, "--bogus"], "unrecognized arguments: --bogus"),
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    for name in ("SEMALIGN_TOKEN", "SEMALIGN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "short").write_text("short\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option_is_one_line_and_exit_code_2(case, folder, capsys, monkeypatch):
    argv, expected = CASES[case]
    argv = [a.replace("{d}", str(folder)) for a in argv]

    def no_process(self, name, *args, **kwargs):  # nothing starts before the options are checked
        raise AssertionError(f"{name} was started")

    monkeypatch.setattr(Processes, "start", no_process)
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's own errors
        code = done.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected.replace("{d}", str(folder)) in err, err
    assert "Traceback" not in err


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--channel-uses", "x"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid int value: 'x'" in err


def test_token_prints_each_users_own_token(folder, capsys, monkeypatch):
    assert main(["token", "user1", "user2", "--secret-file", str(folder / "secret")]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [user_token(SECRET, "user1"), user_token(SECRET, "user2")]
    monkeypatch.setenv("SEMALIGN_SECRET", SECRET)
    assert main(["token", "user3"]) == 0
    assert capsys.readouterr().out.strip() == user_token(SECRET, "user3")


def test_ap_writes_a_new_secret_readable_by_its_owner_only(folder):
    """Without --secret-file or $SEMALIGN_SECRET the AP writes WORKDIR/ap-secret (0600) and
    reuses it next time (the users' tokens stay valid)."""
    import argparse

    from semalign.deploy.commands.ap import ap_secret

    args = argparse.Namespace(secret_file=None, secret=None, flower=False)
    secret, path, source = ap_secret(args, folder)
    assert source == "new" and path == (folder / "ap-secret").resolve()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == secret and len(secret) >= 32
    again = ap_secret(args, folder)
    assert again == (secret, path, "reused")
