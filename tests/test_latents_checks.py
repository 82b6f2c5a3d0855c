"""Every command that loads latents refuses, before it starts anything, latents whose rows are
not the same data points, a misspelled encoder and a damaged or non-finite file: one line
naming the encoder (or its file) and the problem, exit code 2.

``run`` used to load only the AP's latents: a user whose labels were permuted scored at chance
and the session exited 0, and a misspelled or damaged user encoder started the session without
that user (exit 3, the cause only in its log). It now checks every user's latents as
``simulate`` does (``load_scenario``) before it makes its workdir or starts any process."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_files import AP, RUN, SIM, SWEEP, USER, assert_one_line, run_cli
from test_cli_files import folder as folder  # noqa: F401  (the fixture: latents, afile, adir)

RUN2 = [*RUN[:-3], "--users", "user_enc0,user_enc1", "--insecure", "--workdir", "{d}/work"]
RUN2 += ["--iterations", "2", "--seeds", "1", "-q", "--no-flower"]


def _no_start(*_args, **_kwargs):
    pytest.fail("run started its session before refusing the latents")


@pytest.fixture
def trapped(folder, monkeypatch):  # noqa: F811
    """``folder``, with the steps that start a session replaced by a failing trap."""
    for name in ("load_plan", "make_workdir", "start_service", "serve_with_children"):
        monkeypatch.setattr(f"semalign.deploy.commands.run.{name}", _no_start)
    return folder


def _rewrite(path, change) -> None:
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, **change(arrays))


def _permute(arrays: dict) -> dict:
    order = np.random.default_rng(3).permutation(len(arrays["labels"]))
    return {**arrays, "labels": arrays["labels"][order]}


def _drop_rows(arrays: dict) -> dict:
    return {k: v[:-7] for k, v in arrays.items()}


def _nan_rows(arrays: dict) -> dict:
    latents = arrays["latents"].copy()
    latents[[3, 17]] = np.nan
    return {**arrays, "latents": latents}


MISALIGNED = {
    "permuted labels": (_permute, "labels of user_enc0 and ap_enc differ"),
    "fewer rows": (_drop_rows, "user_enc0 has"),
}
OUT = ["--out", "{d}/r.json"]
COMMANDS = {
    "run": [*RUN2, *OUT],
    "simulate": [*SIM, *OUT],
    "sweep": [*SWEEP, "--table", "{d}/r.json"],
}


@pytest.mark.parametrize("case", list(MISALIGNED))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_misaligned_user_rows_are_refused(command, case, trapped, capsys):
    change, expected = MISALIGNED[case]
    _rewrite(trapped / "lat" / "user_enc0" / "train.npz", change)
    code, err = run_cli(COMMANDS[command], trapped, capsys)
    assert_one_line(code, err, expected)
    assert "rows" in err and "same data point" in err
    assert not (trapped / "r.json").exists() and not (trapped / "work").exists()


def test_run_refuses_a_misspelled_user_encoder(trapped, capsys):
    argv = [a.replace("user_enc0,user_enc1", "user_enc0,user_ecn1") for a in RUN2]
    code, err = run_cli(argv, trapped, capsys)
    assert_one_line(code, err, "no latents for encoder 'user_ecn1'")
    assert "did you mean user_enc1" in err
    assert not (trapped / "work").exists()  # no workdir, so no AP or user process


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGED = {
    "truncated": (_truncate, "truncated or corrupt"),
    "nan rows": (lambda path: _rewrite(path, _nan_rows), "non-finite"),
}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("case", list(DAMAGED))
def test_run_refuses_damaged_user_latents(case, split, trapped, capsys):
    damage, expected = DAMAGED[case]
    path = trapped / "lat" / "user_enc1" / f"{split}.npz"
    damage(path)
    code, err = run_cli(RUN2, trapped, capsys)
    assert_one_line(code, err, expected)
    assert str(path) in err
    assert not (trapped / "work").exists()


@pytest.mark.parametrize("command", ["ap", "user"])
def test_ap_and_user_refuse_non_finite_latents(command, folder, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr("semalign.deploy.commands.ap.start_service", _no_start)
    monkeypatch.setattr("semalign.deploy.commands.user.join_directly", _no_start)
    encoder = "ap_enc" if command == "ap" else "user_enc0"
    path = folder / "lat" / encoder / "test.npz"
    _rewrite(path, _nan_rows)
    code, err = run_cli(AP if command == "ap" else USER + ["--insecure"], folder, capsys)
    assert_one_line(code, err, "non-finite")
    assert str(path) in err


@pytest.mark.parametrize(
    "argv",
    [
        [*AP[:-2], "--secret-file", "{d}/adir"],
        ["token", "user1", "--secret-file", "{d}/adir"],
    ],
    ids=["ap", "token"],
)
def test_secret_file_that_is_a_directory_says_so(argv, folder, capsys):  # noqa: F811
    code, err = run_cli(argv, folder, capsys)
    assert_one_line(code, err, f"--secret-file {folder}/adir: is a directory")
    assert "no such file" not in err
