"""Files and options of ``simulate``, ``sweep``, ``plot``, ``encode``, ``certs``, ``run`` and
``ap``: every output path is checked before any work, damaged input files are one clear line
(or are rebuilt), and bad option values are one line with exit code 2.

Every case runs the command in-process with the commands' work entry points replaced by a
trap: a case passes only if the command refused *before* starting any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_latents

from semalign.cli import main

SECRET = "cli-files-secret-0123456789"
SIM = ["simulate", "--latents", "{d}/lat", "--ap", "ap_enc", "--users", "user_enc0,user_enc1"]
SIM += ["--iterations", "2", "--seeds", "1", "-q"]
LOGISTIC = ["--task-model", "logistic"]  # the task model that reads classifier.npz
SWEEP = ["sweep", "--latents", "{d}/lat", "--ap", "ap_enc", "--groups", "user_enc0+user_enc1"]
SWEEP += ["--iterations", "2", "--seeds", "1", "-q"]
ENCODE = ["encode", "--encoders", "levit_128", "--cache-dir", "{d}/cache", "--no-progress"]
PLOT = ["plot", "--table", "{d}/table.csv"]
RUN = ["run", "--latents", "{d}/lat", "--ap", "ap_enc", "--users", "1", "--insecure"]
AP = ["ap", "--latents", "{d}/lat", "--ap", "ap_enc", "--users", "1", "--insecure"]
AP += ["--secret-file", "{d}/secret"]
USER = ["user", "--ap", "127.0.0.1:1", "--user-id", "user1", "--encoder", "user_enc0"]
USER += ["--latents", "{d}/lat", "--token", "t"]

#: case -> (argv, what the one line on stderr must contain). ``{d}`` is the test's folder,
#: which holds a file ``afile``, a folder ``adir`` and garbage ``junk.pem``.
OUTPUTS = {
    "simulate out under a file": ([*SIM, "--out", "{d}/afile/r.json"], "{d}/afile is not a folder"),
    "simulate out a folder": ([*SIM, "--out", "{d}/adir"], "--out {d}/adir: cannot write there"),
    "simulate cache-dir a file": (
        ["simulate", "--users", "1", "--cache-dir", "{d}/afile"],
        "--cache-dir {d}/afile: exists and is not a folder",
    ),
    "sweep table under a file": ([*SWEEP, "--table", "{d}/afile/t.csv"], "--table {d}/afile"),
    "sweep table a folder": ([*SWEEP, "--table", "{d}/adir"], "--table {d}/adir: cannot write"),
    "sweep cache-dir under a file": (
        ["sweep", "--groups", "paper-users", "--cache-dir", "{d}/afile/c", "-q"],
        "--cache-dir {d}/afile/c: {d}/afile is not a folder",
    ),
    "plot out a file": ([*PLOT, "--out", "{d}/afile"], "--out {d}/afile: exists and is not a"),
    "plot out under a file": ([*PLOT, "--out", "{d}/afile/f"], "{d}/afile is not a folder"),
    "encode cache-dir under a file": (
        [*ENCODE[:-3], "--cache-dir", "{d}/afile/c", "--no-progress"],
        "--cache-dir {d}/afile/c: {d}/afile is not a folder",
    ),
    "encode json under a file": ([*ENCODE, "--json", "{d}/afile/j.json"], "--json {d}/afile/j"),
    "encode json a folder": ([*ENCODE, "--json", "{d}/adir"], "--json {d}/adir: cannot write"),
    "certs out a file": (["certs", "--out", "{d}/afile"], "--out {d}/afile: exists and is not"),
    "certs out under a file": (["certs", "--out", "{d}/afile/s"], "{d}/afile is not a folder"),
    "run out under a file": ([*RUN, "--out", "{d}/afile/r.json"], "{d}/afile is not a folder"),
    "run workdir under a file": ([*RUN, "--workdir", "{d}/afile/w"], "{d}/afile is not a folder"),
    "ap out a folder": ([*AP, "--out", "{d}/adir"], "--out {d}/adir: cannot write there"),
    "ap workdir a file": ([*AP, "--workdir", "{d}/afile"], "exists and is not a folder"),
    "user flwr-home under a file": ([*USER, "--flwr-home", "{d}/afile/h"], "is not a folder"),
}

OPTIONS = {
    "simulate seeds negative": ([*SIM, "--seeds=-1"], "--seeds must be in 0..4294967295"),
    "simulate seeds too large": ([*SIM, "--seeds", str(2**32)], "--seeds must be in 0.."),
    "simulate users empty": ([*SIM, "--users", ""], "--users is empty"),
    "simulate snr nan": ([*SIM, "--snr-db", "nan"], "--snr-db"),
    "simulate rho inf": ([*SIM, "--rho", "inf"], "--rho"),
    "simulate csi-error nan": ([*SIM, "--csi-error", "nan"], "--csi-error"),
    "simulate distances empty": ([*SIM, "--distances", ""], "--distances"),
    "run seeds negative": ([*RUN, "--seeds=-5"], "--seeds must be in 0.."),
    "ap seeds negative": ([*AP, "--seeds=1,-2"], "--seeds must be in 0.."),
    "sweep seeds negative": ([*SWEEP, "--seeds=-1"], "--seeds"),
    "sweep strategies empty": ([*SWEEP, "--strategies", ""], "--strategies is empty"),
    "sweep groups empty": ([*SWEEP, "--groups", ""], "--groups is empty"),
    "sweep antennas empty": ([*SWEEP, "--antennas", ""], "--antennas is empty"),
    "sweep channel-models empty": ([*SWEEP, "--channel-models", ""], "--channel-models is empty"),
    "sweep workers zero": ([*SWEEP, "--workers", "0"], "--workers must be at least 1"),
    "sweep pilot-fractions nan": ([*SWEEP, "--pilot-fractions", "nan"], "--pilot-fractions"),
    "plot figures empty": ([*PLOT, "--figures", ""], "--figures is empty"),
    "plot formats empty": ([*PLOT, "--formats", ""], "--formats is empty"),
    "plot confidence nan": ([*PLOT, "--confidence", "nan"], "confidence level must be in"),
    "plot dpi negative": ([*PLOT, "--dpi", "-1"], "dpi must be at least"),
    "encode seed negative": ([*ENCODE, "--seed=-1"], "--seed must be 0 or more, got -1"),
    "encode device unknown": ([*ENCODE, "--device", "bogus"], "--device 'bogus'"),
    "encode data-dir missing": (
        [*ENCODE, "--data-dir", "{d}/none"],
        "--data-dir {d}/none: no such",
    ),
    "encode encoders empty": ([*ENCODE[:1], "--encoders", "", *ENCODE[3:]], "no encoder named"),
    "certs users zero": (["certs", "--out", "{d}/s", "--users", "0"], "at least one user"),
    "certs users path": (["certs", "--out", "{d}/s", "--users", "../x"], "user id '../x' is not"),
    "ap tls cert not pem": (
        [
            *AP[:-3],
            "--secret-file",
            "{d}/secret",
            "--tls-cert",
            "{d}/junk.pem",
            "--tls-key",
            "{d}/junk.pem",
        ],
        "--tls-cert {d}/junk.pem: not a PEM certificate",
    ),
    "user tls ca not pem": (
        [*USER[:-2], "--token", "t", "--tls-ca", "{d}/junk.pem"],
        "--tls-ca {d}/junk.pem: not a PEM certificate",
    ),
}

#: Checked by ``semalign.encoders.encode`` itself before it builds anything (no trap on it).
ENCODE_CHECKED = {
    "encode limit negative": ([*ENCODE, "--limit=-3"], "limit must be at least 10"),
    "encode epochs zero": ([*ENCODE, "--epochs", "0"], "epochs must be at least 1"),
    "encode image-size": ([*ENCODE, "--image-size", "4"], "image size must be at least 8"),
}


def _no_work(*_args, **_kwargs):
    pytest.fail("the command started its work before refusing a bad option")


#: The entry points of the commands' work: a refused command must reach none of them.
WORK = (
    "semalign.engine.scenario.load_scenario",  # simulate and audit load through it
    "semalign.commands.sweep.make_plan",
    "semalign.commands.plot.make_figures",
    "semalign.encoders.encode",
    "semalign.encoders.ensure_latents",
    "semalign.deploy.commands.certs.make_secrets",
    "semalign.deploy.commands.run.load_plan",
    "semalign.deploy.commands.ap.load_plan",
    "semalign.deploy.commands.user.command",
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    for name in ("SEMALIGN_TOKEN", "SEMALIGN_SECRET", "SEMALIGN_SECRETS"):
        monkeypatch.delenv(name, raising=False)
    make_latents(tmp_path / "lat")
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "junk.pem").write_text("garbage\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "table.csv").write_text("run_key\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(argv: list[str], folder: Path, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``semalign argv`` (``{d}`` -> ``folder``)."""
    try:
        code = main([a.replace("{d}", str(folder)) for a in argv])
    except SystemExit as done:  # argparse's own errors
        code = int(done.code or 0)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, expected: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert expected in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", [*OUTPUTS, *OPTIONS, *ENCODE_CHECKED])
def test_bad_path_or_option_is_refused_before_any_work(case, folder, capsys, monkeypatch):
    import importlib

    for target in WORK:
        module, name = target.rsplit(".", 1)
        if case not in ENCODE_CHECKED or name != "encode":
            monkeypatch.setattr(importlib.import_module(module), name, _no_work)
    monkeypatch.setattr("semalign.encoders.pool.build_locked", _no_work)
    argv, expected = {**OUTPUTS, **OPTIONS, **ENCODE_CHECKED}[case]
    code, err = run_cli(argv, folder, capsys)
    assert_one_line(code, err, expected.replace("{d}", str(folder)))
    assert not (folder / "afile").is_dir() and (folder / "adir").is_dir()
    assert list((folder / "adir").iterdir()) == []  # no probe or partial file left behind
    assert not (folder / "s").exists()  # certs wrote nothing


# ------------------------------------------------------------------ damaged input files
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(300))


def _save(**arrays):
    def write(path: Path) -> None:
        np.savez(path, **arrays)

    return write


LATENT_CASES = {
    "truncated": (_truncate, "truncated or corrupt"),
    "garbage": (_garbage, "truncated or corrupt"),
    "no labels": (_save(latents=np.ones((5, 12), np.float32)), "no 'labels' array"),
    "text latents": (
        _save(latents=np.array([["a"] * 12] * 5), labels=np.zeros(5, np.int64)),
        "want real latents",
    ),
    "rows mismatch": (
        _save(latents=np.ones((5, 12), np.float32), labels=np.zeros(4, np.int64)),
        "mismatch",
    ),
    "nan latents": (
        _save(latents=np.full((5, 12), np.nan, np.float32), labels=np.zeros(5, np.int64)),
        "non-finite",
    ),
}


@pytest.mark.parametrize("case", list(LATENT_CASES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_damaged_latents_are_one_line_naming_the_file(case, split, folder, capsys):
    damage, expected = LATENT_CASES[case]
    path = folder / "lat" / "user_enc0" / f"{split}.npz"
    damage(path)
    code, err = run_cli([*SIM, "--out", "{d}/r.json"], folder, capsys)
    assert_one_line(code, err, expected)
    assert str(path.relative_to(folder)) in err and "replace the file" in err
    assert not (folder / "r.json").exists()


def _classifier(**changes):
    """A classifier file whose arrays are those of a valid one (12 features, 4 classes) with
    ``changes``."""
    arrays = {
        "mean": np.zeros(12),
        "scale": np.ones(12),
        "weight": np.zeros((4, 12)),
        "bias": np.zeros(4),
        "classes": np.arange(4),
    }
    return _save(**{**arrays, **changes})


CLASSIFIER_CASES = {
    "truncated": _truncate,
    "garbage": _garbage,
    "bias of another class count": _classifier(bias=np.zeros(3)),
    "scale of another dimension": _classifier(scale=np.ones(11)),
    "zero scale": _classifier(scale=np.zeros(12)),
    "nan weights": _classifier(weight=np.full((4, 12), np.nan)),
    "text classes": _classifier(classes=np.array(list("abcd"))),
    "matrix mean": _classifier(mean=np.zeros((12, 1))),
}


@pytest.fixture
def undisturbed(folder, capsys) -> dict:
    """Results of a run whose users train their logistic classifiers (no classifier file)."""
    code, _ = run_cli([*SIM, *LOGISTIC, "--out", "{d}/clean.json"], folder, capsys)
    assert code == 0
    return json.loads((folder / "clean.json").read_text())


@pytest.mark.parametrize("case", list(CLASSIFIER_CASES))
def test_damaged_classifier_is_retrained_with_a_warning(case, folder, undisturbed, capsys, caplog):
    """A user's damaged ``classifier.npz`` is never used: the user retrains it (a warning
    names the file) and the results equal those of a run without the file."""
    from semalign.common.classifier import train_classifier
    from semalign.common.latents import load_split

    train = load_split(folder / "lat", "user_enc0", "train")
    path = folder / "lat" / "user_enc0" / "classifier.npz"
    train_classifier(train.latents, train.labels).save(path)  # then damaged
    CLASSIFIER_CASES[case](path)
    code, err = run_cli([*SIM, *LOGISTIC, "--out", "{d}/r.json"], folder, capsys)
    assert code == 0, err
    assert any(
        str(path) in r.getMessage() and "retraining" in r.getMessage() for r in caplog.records
    )
    results = json.loads((folder / "r.json").read_text())
    assert [s["users"] for s in results["seeds"]] == [s["users"] for s in undisturbed["seeds"]]


def test_damaged_mlp_classifier_is_retrained(folder, capsys, caplog):
    from semalign.common.task_models import MlpClassifier

    argv = [*SIM, "--task-model", "mlp", "--users", "user_enc0", "--out", "{d}/r.json"]
    assert run_cli(argv, folder, capsys)[0] == 0
    path = folder / "lat" / "user_enc0" / "classifier-mlp.npz"
    good = MlpClassifier.load(path)
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, **{**arrays, "w2": arrays["w2"][:, :-1]})
    from semalign.common import latents

    latents._TASK_MODELS.clear()  # this process trained it: forget, as a new process would
    assert run_cli(argv, folder, capsys)[0] == 0
    assert any("classifier-mlp.npz" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(MlpClassifier.load(path).w2, good.w2)  # rewritten, same


def test_damaged_cifar_batch_is_one_line(folder, capsys):
    batches = folder / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(os.urandom(200))
    argv = [*ENCODE, "--dataset", "cifar10", "--data-dir", "{d}/cifar"]
    code, err = run_cli(argv, folder, capsys)
    assert_one_line(code, err, "data_batch_1: not a readable CIFAR-10 batch")
