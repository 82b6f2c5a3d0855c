"""Issue 3: datasets, timm encoders and the latent cache.

The end-to-end tests run ``semalign encode`` in a tiny setting (two small encoders, 16x16
images, one epoch, 64 rows per split) so the whole file stays fast on two cores.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from semalign.common.classifier import LinearClassifier
from semalign.common.errors import LatentsError
from semalign.common.task_models import MlpClassifier, recipe_key

from semalign.cli import main
from semalign.encoders import cache, pool, registry, store
from semalign.encoders.datasets import DatasetUnavailable, load_dataset
from semalign.encoders.reporter import Reporter

TINY = ["mobilenetv3_small_075", "levit_128"]
TINY_ARGS = ["--image-size", "16", "--epochs", "1", "--limit", "64", "--no-progress"]
SPLIT_FILES = ("train.npz", "val.npz", "test.npz")


def encode_cli(cache_dir: Path, *extra: str, encoders: list[str] = TINY) -> tuple[int, dict]:
    out = cache_dir / "summary.json"
    out.unlink(missing_ok=True)
    argv = ["encode", "--dataset", "digits", "--encoders", ",".join(encoders)]
    argv += ["--cache-dir", str(cache_dir), "--json", str(out), *TINY_ARGS, *extra]
    rc = main(argv)
    summary = json.loads(out.read_text()) if out.exists() else {}
    return rc, {e["encoder"]: e for e in summary.get("encoders", [])}


def snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache holding the tiny setting, built once for the module."""
    cache_dir = tmp_path_factory.mktemp("cache")
    rc, results = encode_cli(cache_dir)
    assert rc == 0
    assert all(not r["cached"] and r["trained"] for r in results.values())
    return cache_dir


# ---------------------------------------------------------------------------------- registry


def test_registry_groups_match_table_one():
    assert registry.DEFAULT_AP == "vit_tiny_patch16_224"
    assert len(registry.GROUPS["paper-users"]) == 10
    assert len(registry.GROUPS["homogeneous"]) == 4
    assert len(registry.GROUPS["heterogeneous"]) == 4
    grouped = {n for members in registry.GROUPS.values() for n in members}
    assert grouped <= set(registry.GROUPS["paper-users"])  # one default set serves all groups
    assert set(registry.DEFAULT_SET) == grouped | {registry.DEFAULT_AP}
    assert len(registry.DEFAULT_SET) == 11
    families = {registry.get_spec(n).family for n in registry.DEFAULT_SET}
    assert families == {"vit", "convnet", "efficientvit", "levit"}


def test_resolve_encoders_groups_lists_and_dedup():
    assert registry.resolve_encoders("homogeneous") == list(registry.GROUPS["homogeneous"])
    assert registry.resolve_encoders("levit_128, rexnet_100,levit_128") == [
        "levit_128",
        "rexnet_100",
    ]
    mixed = registry.resolve_encoders("heterogeneous,resnet18")
    assert mixed == [*registry.GROUPS["heterogeneous"], "resnet18"]
    assert registry.resolve_encoders("default") == list(registry.DEFAULT_SET)


@pytest.mark.parametrize(
    ("bad", "suggested"),
    [
        ("mobilenetv3_small_10", "mobilenetv3_small_100"),
        ("vit_tiny_patch16", "vit_tiny_patch16_224"),
        ("homogenous", "homogeneous"),
    ],
)
def test_unknown_encoder_lists_close_names(bad, suggested):
    with pytest.raises(ValueError, match="unknown encoder") as info:
        registry.resolve_encoders(f"levit_128,{bad}")
    assert suggested in str(info.value)


def test_vit_patch_grid_scales_with_image_size():
    spec = registry.get_spec("vit_small_patch32_224")
    assert spec.timm_kwargs(32)["patch_size"] == 16  # patch32 -> 2x2 grid
    assert registry.get_spec("vit_base_patch16_224").timm_kwargs(32)["patch_size"] == 8
    with pytest.raises(ValueError, match="not divisible"):
        registry.get_spec("vit_tiny_patch16_224").timm_kwargs(30)


def test_any_timm_name_gets_its_family_rule():
    clip = registry.get_spec("vit_base_patch32_clip_224")  # not registered: the vit rule
    assert (clip.family, clip.rule) == ("vit", "vit")
    assert clip.timm_kwargs(32) == {
        "depth": 2,
        "global_pool": "avg",
        "class_token": False,
        "img_size": 32,
        "patch_size": 16,
    }
    levit = registry.get_spec("levit_128s.fb_dist_in1k")  # a pretrained tag is accepted
    assert levit.name == "levit_128s.fb_dist_in1k" and levit.rule == "levit"
    assert levit.timm_kwargs(32) == {"distilled": False, "img_size": 32}
    assert registry.get_spec("convnext_atto").recipe.lr == 1e-3
    other = registry.get_spec("swin_tiny_patch4_window7_224")  # fixed input size: img_size
    assert other.rule == "other" and other.timm_kwargs(32) == {"img_size": 32}
    assert registry.get_spec("ghostnet_100").rule == "efficientnet"
    # a registered model with a tag keeps its tuned settings
    tagged = registry.get_spec("efficientvit_m5.r224_in1k")
    assert (
        tagged.rule == "registered" and tagged.recipe == registry.ENCODERS["efficientvit_m5"].recipe
    )


def test_reference_groups_are_the_reference_readme_encoders():
    groups = registry.REFERENCE_GROUPS
    assert len(groups["reference"]) == 11 and groups["reference"][-1] == registry.REFERENCE_AP
    assert list(groups["reference-users"]) == list(groups["reference"][:-1])
    for name in ("vit_base_patch32_clip_224", "levit_128s.fb_dist_in1k"):
        assert name in groups["reference-users"]
    assert registry.resolve_encoders("reference-heterogeneous")[-1] == "efficientvit_m5.r224_in1k"
    for group in groups.values():
        for name in group:
            registry.get_spec(name)  # every member is a valid timm name (and tag)
    assert "reference" not in registry.GROUPS  # DEFAULT_SET stays the paper's set


def test_unknown_pretrained_tag_lists_the_models_tags():
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope'.*fb_dist_in1k"):
        registry.get_spec("levit_128s.nope")


def test_simulate_misspelled_timm_name_suggests_the_right_one(tmp_path, capsys):
    argv = ["simulate", "--users", "vit_bse_patch32_clip_224", "--cache-dir", str(tmp_path)]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean vit_base_patch32_clip_224" in err[0], err
    assert not (tmp_path / "digits").exists()


def test_simulate_pretrained_reference_names_offline_fails_fast(tmp_path, monkeypatch, capsys):
    """The reference's own encoders resolve; without their weights the run stops at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    registry.timm_names()  # import time is not what this test measures

    start = time.monotonic()
    users = "vit_base_patch32_clip_224,levit_128s"
    argv = ["simulate", "--users", users, "--pretrained", "--cache-dir", str(tmp_path / "c")]
    rc = main([*argv, "--seeds", "1", "-q"])
    assert rc == 2 and time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("semalign simulate: error: pretrained weights for")
    for name in ("vit_base_patch32_clip_224", "levit_128s", "vit_tiny_patch16_224"):
        assert name in err[0]
    assert "--weights" in err[0] and "without --pretrained" in err[0]
    assert not list((tmp_path / "c").rglob("*.npz"))  # nothing was built


def test_import_is_cheap():
    code = "import sys, semalign.encoders; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------- datasets


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    sizes = {k: len(a[k]) for k in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
        np.testing.assert_array_equal(a[split].images, b[split].images)
        assert a[split].images.shape[1:] == (8, 8, 3) and a[split].images.dtype == np.uint8
        counts = np.bincount(a[split].labels, minlength=10) / len(a[split])
        assert counts.min() > 0.07 and counts.max() < 0.13  # stratified: every class ~10 %
    flat = {
        s: {im.tobytes() + bytes([lab]) for im, lab in zip(a[s].images, a[s].labels, strict=True)}
        for s in ("train", "test")
    }
    assert len(flat["train"] & flat["test"]) < 5  # (digits holds a few exact duplicates)


def test_to_tensor_resizes_to_rgb():
    from semalign.encoders.datasets import to_tensor

    x = to_tensor(load_dataset("digits", limit=10)["train"].images, 32)
    assert tuple(x.shape) == (10, 3, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_unknown_dataset_lists_close_names(capsys):
    rc = main(["encode", "--dataset", "cifar", "--encoders", "levit_128", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'cifar'" in err and "cifar10" in err


def test_cifar10_offline_fails_fast_with_instructions(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SEMALIGN_OFFLINE", raising=False)  # the real network check
    start = time.monotonic()
    rc = main(
        [
            "encode",
            "--dataset",
            "cifar10",
            "--encoders",
            "levit_128",
            "--cache-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    elapsed = time.monotonic() - start
    assert rc == 2
    assert elapsed < 10
    err = capsys.readouterr().err
    assert "--data-dir" in err and "cifar-10-batches-py" in err


def test_cifar10_missing_data_dir_is_reported(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no CIFAR-10 in"):
        load_dataset("cifar10", data_dir=tmp_path)


def _fake_cifar(root: Path, per_batch: int = 40) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(i % 10) for i in range(per_batch)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    return folder


def test_cifar10_reads_local_batches(tmp_path):
    _fake_cifar(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert (len(data["train"]), len(data["val"]), len(data["test"])) == (180, 20, 40)
    assert data["train"].images.shape[1:] == (32, 32, 3)
    assert np.bincount(data["val"].labels, minlength=10).tolist() == [2] * 10
    # the folder itself works too
    again = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(again["train"].labels, data["train"].labels)


# ------------------------------------------------------------------------------ pretrained


def test_pretrained_offline_fails_fast_with_instructions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    import timm  # noqa: F401  (import time is not what this test measures)

    start = time.monotonic()
    rc = main(pretrained_argv(tmp_path))
    assert rc == 2 and time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "--weights levit_128=PATH" in err


def pretrained_argv(cache_dir: Path, *extra: str) -> list[str]:
    argv = ["encode", "--encoders", "levit_128", "--cache-dir", str(cache_dir), "--pretrained"]
    return [*argv, *extra, "--no-progress"]


def test_weights_option_is_checked(tmp_path, capsys):
    missing = tmp_path / "missing.safetensors"
    rc = main(pretrained_argv(tmp_path, "--weights", f"levit_128={missing}"))
    assert rc == 2
    assert "weights file for levit_128 not found" in capsys.readouterr().err
    assert main(["encode", "--encoders", "levit_128", "--weights", "oops", "--no-progress"]) == 2


def test_pretrained_from_local_weights_file(tmp_path):
    """The real --pretrained loading path (timm with a local file), offline."""
    import timm
    import torch

    torch.manual_seed(0)
    donor = timm.create_model("mobilenetv3_small_075", pretrained=False)
    weights = tmp_path / "mnv3.pth"
    torch.save(donor.state_dict(), weights)
    argv = [
        "encode",
        "--encoders",
        "mobilenetv3_small_075",
        "--cache-dir",
        str(tmp_path / "c"),
        "--pretrained",
        "--weights",
        f"mobilenetv3_small_075={weights}",
        "--limit",
        "16",
        "--no-progress",
    ]
    assert main(argv) == 0
    folder = tmp_path / "c" / "digits" / "mobilenetv3_small_075"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["input_size"] == 224 and meta["weights"] is None  # no training, timm's size
    assert (
        meta["key_material"]["pretrained"]
        and str(weights.resolve()) in (meta["key_material"]["weights"])
    )
    latents, _ = cache.load_latents(folder.parent, "mobilenetv3_small_075", "train")
    donor.eval()
    from semalign.encoders.train import build_pretrained_model

    model, inputs = build_pretrained_model("mobilenetv3_small_075", weights)
    x = inputs.prepare(load_dataset("digits", limit=16)["train"].images[:4])
    with torch.no_grad():
        expected = donor.forward_head(donor.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(latents[:4], expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- cache end to end


def test_layout_shapes_and_row_alignment(built):
    root = built / "digits"
    assert sorted(p.name for p in root.iterdir()) == sorted(TINY)
    reference = load_dataset("digits", limit=64)
    for name in TINY:
        folder = root / name
        meta = json.loads((folder / "meta.json").read_text())
        for split in ("train", "val", "test"):
            with np.load(folder / f"{split}.npz") as data:
                latents, labels = data["latents"], data["labels"]
            assert latents.dtype == np.float32 and labels.dtype == np.int64
            assert latents.shape == (64, meta["dim"]) and labels.shape == (64,)
            assert np.all(np.isfinite(latents)) and latents.std() > 0
            # row i is the same data point for every encoder: the dataset's own order
            np.testing.assert_array_equal(labels, reference[split].labels)
        clf = LinearClassifier.load(folder / "classifier.npz")
        assert clf.weight.shape == (10, meta["dim"])
        test_latents, test_labels = cache.load_latents(root, name, "test")
        acc = clf.accuracy(test_latents, test_labels)
        assert acc == pytest.approx(meta["native_accuracy"]["test"])
        mlp = MlpClassifier.load(folder / "classifier-mlp.npz")  # the default task model
        assert (mlp.input_dim, mlp.recipe) == (meta["dim"], recipe_key())
        recorded = meta["task_model_accuracy"]["mlp"]  # what the summary reports for it
        assert recorded == {
            "test": pytest.approx(mlp.accuracy(test_latents, test_labels)),
            "recipe": recipe_key(),
        }
        assert meta["key_material"]["image_size"] == 16
        assert (folder / meta["weights"]).is_file()
    assert json.loads((root / "mobilenetv3_small_075" / "meta.json").read_text())["dim"] == 1024
    assert json.loads((root / "levit_128" / "meta.json").read_text())["dim"] == 384


def test_rerun_is_a_cache_hit_without_retraining(built, monkeypatch):
    before = {n: snapshot(built / "digits" / n) for n in TINY}

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr("semalign.encoders.train.train_scratch", no_training)
    start = time.monotonic()
    rc, results = encode_cli(built)
    assert rc == 0
    assert time.monotonic() - start < 10
    assert all(r["cached"] for r in results.values())
    assert {n: snapshot(built / "digits" / n) for n in TINY} == before
    for name, result in results.items():  # the MLP's accuracy read back from meta.json
        meta = json.loads((built / "digits" / name / "meta.json").read_text())
        assert result["mlp_test_accuracy"] == meta["task_model_accuracy"]["mlp"]["test"]


def test_ensure_latents_api_returns_latents_dir(built):
    from semalign.encoders import ensure_latents

    out = ensure_latents("digits", TINY, built, image_size=16, limit=64, epochs=1)
    assert out == built / "digits"


def test_corrupt_and_truncated_files_are_rebuilt(built, monkeypatch):
    folder = built / "digits" / "levit_128"
    good_train = (folder / "train.npz").read_bytes()
    good_latents = {
        s: cache.load_latents(folder.parent, "levit_128", s)[0] for s in ("train", "test")
    }
    # flip one byte of the latents (same size: only the checksum can tell)
    damaged = bytearray(good_train)
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "train.npz").write_bytes(bytes(damaged))
    (folder / "test.npz").write_bytes(good_train[:100])  # truncated
    monkeypatch.setattr(
        "semalign.encoders.train.train_scratch",
        lambda *a, **k: pytest.fail("weights are cached: rebuilding must not retrain"),
    )
    rc, results = encode_cli(built)
    assert rc == 0
    assert results["mobilenetv3_small_075"]["cached"]
    lev = results["levit_128"]
    assert not lev["cached"] and not lev["trained"]
    assert "checksum mismatch" in lev["reason"]
    for split, latents in good_latents.items():  # same weights -> same latents
        np.testing.assert_array_equal(
            cache.load_latents(folder.parent, "levit_128", split)[0], latents
        )
    assert store.check_entry(folder, json.loads((folder / "meta.json").read_text())["key"]) == ""


def test_truncated_weights_are_retrained_not_a_traceback(built, caplog):
    """A damaged ``weights-<key>.pt`` (with its entry untrusted) is trained again, with a
    warning, never a torch error."""
    folder = built / "digits" / "levit_128"
    (weights,) = folder.glob("weights-*.pt")
    weights.write_bytes(weights.read_bytes()[:64])
    (folder / "meta.json").unlink()
    rc, results = encode_cli(built, encoders=["levit_128"])
    assert rc == 0 and results["levit_128"]["trained"]
    assert any("cached weights unusable" in r.getMessage() for r in caplog.records)
    assert store.check_entry(folder, store.read_meta(folder)["key"]) == ""


def test_missing_mlp_task_model_is_trained_without_re_encoding(built):
    """An entry without ``classifier-mlp.npz`` (a cache of an older version) stays a cache hit:
    the next encode trains the MLP alone, the same model as the first time."""
    path = built / "digits" / "levit_128" / "classifier-mlp.npz"
    first = MlpClassifier.load(path)
    path.unlink()
    rc, results = encode_cli(built, encoders=["levit_128"])
    assert rc == 0 and results["levit_128"]["cached"]
    np.testing.assert_array_equal(MlpClassifier.load(path).w1, first.w1)


def test_mlp_accuracy_of_another_recipe_or_malformed_is_measured_again(built):
    """A ``task_model_accuracy`` recorded for another MLP recipe, or one that is not an
    accuracy, is not reported: the next encode measures the current model on the test split and
    records that instead."""
    folder = built / "digits" / "levit_128"
    meta = store.read_meta(folder)
    true = meta["task_model_accuracy"]["mlp"]["test"]
    for recorded in (
        {"mlp": {"test": 0.5, "recipe": "0000000000000000"}},  # another recipe's
        {"mlp": {"test": "high", "recipe": recipe_key()}},  # not an accuracy
        {"mlp": {"test": 7.0, "recipe": recipe_key()}},
        ["not", "a", "mapping"],
    ):
        meta["task_model_accuracy"] = recorded
        store.write_meta(folder, meta)
        rc, results = encode_cli(built, encoders=["levit_128"])
        assert rc == 0 and results["levit_128"]["cached"]
        assert results["levit_128"]["mlp_test_accuracy"] == pytest.approx(true)
        again = store.read_meta(folder)["task_model_accuracy"]["mlp"]
        assert again == {"test": pytest.approx(true), "recipe": recipe_key()}


def test_missing_meta_or_classifier_is_rebuilt(built):
    folder = built / "digits" / "mobilenetv3_small_075"
    (folder / "classifier.npz").unlink()
    rc, results = encode_cli(built)
    assert rc == 0 and "classifier.npz missing" in results["mobilenetv3_small_075"]["reason"]
    (folder / "meta.json").write_text("{not json")
    rc, results = encode_cli(built)
    assert rc == 0 and results["mobilenetv3_small_075"]["reason"] == "unreadable meta.json"
    assert results["levit_128"]["cached"]


def test_changed_settings_invalidate(built):
    folder = built / "digits" / "levit_128"
    key0 = json.loads((folder / "meta.json").read_text())["key"]
    rc, results = encode_cli(built, "--seed", "1", encoders=["levit_128"])
    assert rc == 0
    assert results["levit_128"]["trained"] and results["levit_128"]["reason"] == "settings changed"
    key1 = json.loads((folder / "meta.json").read_text())["key"]
    rc, results = encode_cli(built, "--image-size", "32", encoders=["levit_128"])
    assert rc == 0 and results["levit_128"]["trained"]
    meta = json.loads((folder / "meta.json").read_text())
    assert len({key0, key1, meta["key"]}) == 3
    assert meta["key_material"]["image_size"] == 32
    # going back to the first setting reuses its weights: re-encoded, not retrained
    rc, results = encode_cli(built, encoders=["levit_128"])
    assert rc == 0
    assert not results["levit_128"]["cached"] and not results["levit_128"]["trained"]
    assert json.loads((folder / "meta.json").read_text())["key"] == key0


def test_interrupted_encode_leaves_nothing_trusted(tmp_path):
    class Interrupt(Reporter):
        def update(self, encoder, done, total):
            if self.phase == "encode" and done > 0:
                raise KeyboardInterrupt

        def begin(self, encoder, phase, total):
            self.phase = phase

    with pytest.raises(KeyboardInterrupt):
        cache.encode(
            "digits",
            ["levit_128"],
            tmp_path,
            image_size=16,
            limit=64,
            epochs=1,
            reporter=Interrupt(),
            workers=1,
        )
    folder = tmp_path / "digits" / "levit_128"
    assert not (folder / "meta.json").exists()
    assert not list(folder.glob("*.npz"))
    assert not [p for p in folder.iterdir() if "tmp" in p.name]
    results = cache.encode("digits", ["levit_128"], tmp_path, image_size=16, limit=64, epochs=1)
    assert not results[0].cached and not results[0].trained  # weights were complete
    assert results[0].reason == "not cached"


def test_interrupt_between_files_is_not_trusted(built, tmp_path):
    """A run killed after some files were replaced but before meta.json: next run rebuilds."""
    folder = built / "digits" / "levit_128"
    meta = json.loads((folder / "meta.json").read_text())
    np.savez(
        tmp_path / "other.npz",
        latents=np.zeros((64, meta["dim"]), np.float32),
        labels=np.zeros(64, np.int64),
    )
    os.replace(tmp_path / "other.npz", folder / "val.npz")
    assert "val.npz checksum mismatch" in store.check_entry(folder, meta["key"])
    rc, results = encode_cli(built, encoders=["levit_128"])
    assert rc == 0 and "checksum mismatch" in results["levit_128"]["reason"]


def test_unknown_encoder_on_command_line(capsys, tmp_path):
    argv = ["encode", "--encoders", "levit_128,rexnet_10", "--cache-dir", str(tmp_path)]
    rc = main([*argv, "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown encoder 'rexnet_10'" in err and "rexnet_100" in err
    assert not (tmp_path / "digits").exists()  # nothing done before the names are checked


def test_unregistered_name_with_tag_trains_locally(tmp_path):
    """Any timm name (here with a pretrained tag, meaningless from scratch) builds by its
    family's rule, in a folder named as given."""
    name = "levit_128s.fb_dist_in1k"
    rc, results = encode_cli(tmp_path, encoders=[name])
    assert rc == 0 and results[name]["trained"]
    meta = json.loads((tmp_path / "digits" / name / "meta.json").read_text())
    assert meta["family"] == "levit" and meta["key_material"]["timm_kwargs"]["img_size"] == 16


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMALIGN_CACHE", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEMALIGN_CACHE")
    monkeypatch.chdir(tmp_path)
    assert cache.default_cache_dir() == tmp_path / "cache"


def test_ctrl_c_leaves_no_trusted_partial_entry(tmp_path):
    """A real SIGINT to ``semalign encode`` (parallel workers): nothing half-built is trusted."""
    import signal

    cmd = [
        sys.executable,
        "-m",
        "semalign.cli",
        "encode",
        "--dataset",
        "digits",
        "--encoders",
        ",".join(TINY),
        "--cache-dir",
        str(tmp_path),
        "--image-size",
        "16",
        "--limit",
        "64",
        "--epochs",
        "400",
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )
    root = tmp_path / "digits"
    deadline = time.monotonic() + 120
    while not list(root.glob("*/weights-*.pt")) and not list(root.glob("*/.tmp-*")):
        # wait until the workers are training (the first weights appear only after training)
        if time.monotonic() > deadline or proc.poll() is not None:
            break
        if len(list(root.glob("*/.lock"))) == 2:
            time.sleep(3)
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)  # a limit, not a speed check (loaded CI hosts)
    assert proc.returncode == 130, err.decode()[-2000:]
    for name in TINY:
        folder = root / name
        meta = store.read_meta(folder)
        if meta is not None:  # only a complete entry may carry meta.json
            assert store.check_entry(folder, meta["key"]) == ""
        assert not list(folder.glob(".tmp-*"))


# ----------------------------------------------------------------- one reader, one build path


def test_truncated_split_is_a_latents_error_and_is_rebuilt(built, monkeypatch):
    from semalign.common.latents import load_split

    from semalign.encoders import ensure_latents

    folder = built / "digits" / "levit_128"
    good = (folder / "val.npz").read_bytes()
    (folder / "val.npz").write_bytes(good[: len(good) // 2])
    # (a) every reader says which file and what is wrong, never a zipfile traceback
    with pytest.raises(LatentsError, match="val.npz.*truncated or corrupt"):
        cache.load_latents(folder.parent, "levit_128", "val")
    with pytest.raises(LatentsError, match="val.npz"):
        load_split(folder.parent, "levit_128", "val")
    meta = store.read_meta(folder)
    assert "val.npz checksum mismatch" == store.check_entry(folder, meta["key"])
    # (b) ensure_latents rebuilds it from the stored weights (no retraining), bit for bit
    monkeypatch.setattr(
        "semalign.encoders.train.train_scratch",
        lambda *a, **k: pytest.fail("weights are cached: rebuilding must not retrain"),
    )
    ensure_latents("digits", TINY, built, image_size=16, limit=64, epochs=1)
    assert (folder / "val.npz").read_bytes() == good
    assert store.check_entry(folder, store.read_meta(folder)["key"]) == ""


@pytest.mark.parametrize("cut", [0, 10, 200, -1])
def test_damaged_files_never_leak_zip_errors(tmp_path, cut):
    from semalign.common.classifier import LinearClassifier, train_classifier
    from semalign.common.latents import read_split_file

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    store.save_split(tmp_path / "s.npz", x, y)
    train_classifier(x, y).save(tmp_path / "c.npz")
    for name in ("s.npz", "c.npz"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[:cut])
    with pytest.raises(LatentsError, match="s.npz"):
        read_split_file(tmp_path / "s.npz")
    with pytest.raises(LatentsError, match="c.npz"):
        LinearClassifier.load(tmp_path / "c.npz")
    np.save(tmp_path / "plain.npy", x)
    with pytest.raises(LatentsError, match="not an .npz"):
        read_split_file(tmp_path / "plain.npy")


def test_split_reader_checks_dtypes_and_shapes(tmp_path):
    from semalign.common.latents import read_split_file

    path = tmp_path / "s.npz"
    np.savez(path, latents=np.ones((4, 2), np.float64), labels=np.zeros(4, np.int32))
    split = read_split_file(path)  # hand-made folders: real latents, integer labels, cast
    assert split.latents.dtype == np.float32 and split.labels.dtype == np.int64
    with pytest.raises(LatentsError, match="want float32 and int64"):
        read_split_file(path, exact=True)  # what the cache itself writes
    np.savez(path, latents=np.ones((4, 2), np.float32), labels=np.array(["a"] * 4))
    with pytest.raises(LatentsError, match="integer labels"):
        read_split_file(path)
    np.savez(path, latents=np.ones((4, 2), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(LatentsError, match="mismatch"):
        read_split_file(path)
    np.savez(path, latents=np.ones((4, 2), np.float32))
    with pytest.raises(LatentsError, match="no 'labels' array"):
        read_split_file(path)


class _Planned(Exception):
    """Raised instead of building: carries the worker count the build would have used."""


def test_command_and_ensure_latents_build_with_the_same_workers(tmp_path, monkeypatch):
    from semalign.encoders import ensure_latents

    def plan(todo, workers, threads, reporter, on_result, results):
        raise _Planned(workers, threads, type(reporter).__name__)

    monkeypatch.setattr(pool, "usable_cores", lambda: 4)
    monkeypatch.setattr(pool, "_build_parallel", plan)
    with pytest.raises(_Planned) as by_command:
        main(["encode", "--encoders", ",".join(TINY), "--cache-dir", str(tmp_path)])
    with pytest.raises(_Planned) as by_library:
        ensure_latents("digits", TINY, tmp_path, progress=True)
    assert by_command.value.args == by_library.value.args == (2, 2, "RichReporter")


def test_old_option_names_still_work(built, capsys, caplog):
    argv = ["encode", "--encoders", ",".join(TINY), *TINY_ARGS]
    assert main([*argv, "--cache", str(built), "--jobs", "1"]) == 0
    assert "levit_128: cached" in capsys.readouterr().err
    assert "--cache is deprecated" in caplog.text
    assert main([*argv, "--cache-dir", str(built), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_quiet_prints_nothing_but_writes_json(built, capsys):
    rc, results = encode_cli(built, "-q")
    assert rc == 0 and all(r["cached"] for r in results.values())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cache_keys_are_unchanged():
    """Keys written by earlier versions (these two by the cache.py of before the split into
    keys/store/build/pool) must stay what they were, or every existing cache is rebuilt."""
    from semalign.encoders.keys import cache_key, cache_key_material

    expected = {"levit_128": "59e1001812ac1c60", "mobilenetv3_small_075": "51ae9523a33b68eb"}
    for name, key in expected.items():
        material = cache_key_material(
            "digits", name, seed=0, image_size=16, pretrained=False, limit=64, epochs=1
        )
        assert cache_key(material) == key


def _sigint_as_in_a_terminal() -> None:
    """The child takes SIGINT as from a terminal's Ctrl-C, also when this test runs as a
    background job of a non-interactive shell (which starts it with SIGINT ignored, inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_progress_prints_plain_lines_where_stderr_is_not_a_terminal():
    """In a log file rich draws nothing until the end; the reporter prints lines instead: the
    start, every 10 % and the end of each phase, per encoder, interleaved as they come."""
    import io

    from rich.console import Console

    from semalign.encoders.progress import RichReporter

    out = io.StringIO()
    with RichReporter(Console(file=out, width=200)) as reporter:
        assert reporter.lines
        reporter.begin("levit_128", "train", 200)
        reporter.begin("rexnet_100", "encode", 10)
        for done in range(1, 201):
            reporter.update("levit_128", done, 200)
        reporter.update("rexnet_100", 5, 10)
        reporter.begin("levit_128", "encode", 30)  # ends the train phase first
        reporter.end("rexnet_100")
        reporter.end("levit_128")
    lines = out.getvalue().splitlines()
    train = [line for line in lines if line.startswith("levit_128 train:")]
    assert [line.split(" (")[0] for line in train] == [
        f"levit_128 train: {d}/200 steps" for d in (0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200)
    ]
    assert "(100 %)" in train[-1]
    assert [line.split(" (")[0] for line in lines if line.startswith("rexnet_100")] == [
        "rexnet_100 encode: 0/10 images",
        "rexnet_100 encode: 5/10 images",
        "rexnet_100 encode: 10/10 images",
    ]
    assert lines[-1].startswith("levit_128 encode: 30/30 images")
