"""Research options: the MLP task model, task-oriented targets, semantic pilot selection."""

from __future__ import annotations

import numpy as np
import pytest
from semalign.common.classifier import train_classifier
from semalign.common.config import AlignmentConfig
from semalign.common.latents import MLP_CLASSIFIER_FILE, load_split, load_task_model
from semalign.common.pilots import PILOT_SELECTIONS, select_pilots
from semalign.common.targets import TARGETS, task_target
from semalign.common.task_models import MlpClassifier, train_mlp_classifier
from synthetic import make_latents

from semalign.engine.scenario import build_session, load_scenario
from semalign.engine.simulate import simulate

SMALL = {"antennas_tx": 2, "antennas_rx": 2, "channel_uses": 1, "iterations": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20))


def _blobs(n=300, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    x = rng.standard_normal((c, d))[labels] * 2 + rng.standard_normal((n, d))
    return x.astype(np.float32), labels.astype(np.int64)


def test_mlp_numpy_forward_matches_torch_and_round_trips(tmp_path):
    import torch

    x, y = _blobs()
    model = train_mlp_classifier(x, y, seed=0)
    assert model.accuracy(x, y) > 0.9
    net = torch.nn.Sequential(
        torch.nn.LayerNorm(8), torch.nn.Linear(8, 256), torch.nn.Tanh(), torch.nn.LayerNorm(256)
    )
    with torch.no_grad():
        names = ("ln1_w", "ln1_b", "w1", "b1", "ln2_w", "ln2_b")
        for p, name in zip(net.parameters(), names, strict=True):
            p.copy_(torch.from_numpy(getattr(model, name)))
        hidden = net(torch.nn.functional.normalize(torch.from_numpy(x).double().float(), dim=1))
    ref = hidden.double().numpy() @ model.w2.T + model.b2
    np.testing.assert_allclose(model.decision_function(x), ref, atol=1e-4)
    model.save(tmp_path / "m.npz")
    again = MlpClassifier.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.recipe == model.recipe


def test_mlp_training_is_seeded():
    x, y = _blobs()
    a, b = train_mlp_classifier(x, y, seed=3), train_mlp_classifier(x, y, seed=3)
    np.testing.assert_array_equal(a.w1, b.w1)


def test_task_model_cached_per_user_never_retrained(cache, monkeypatch):
    root, _, users = cache
    train = load_split(root, users[0], "train")
    model = load_task_model(root, users[0], train, kind="mlp")
    assert (root / users[0] / MLP_CLASSIFIER_FILE).exists()
    import semalign.common.latents as latents

    latents._TASK_MODELS.clear()  # a fresh process reads the file, it does not train

    def boom(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr("semalign.common.task_models.train_task_model", boom)
    again = load_task_model(root, users[0], train, kind="mlp")
    np.testing.assert_array_equal(again.w2, model.w2)


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_targets_preserve_native_predictions(kind):
    x, y = _blobs(c=4)
    model = train_classifier(x, y) if kind == "logistic" else train_mlp_classifier(x, y)
    for target in TARGETS:
        transform, head = task_target(model, target, x)
        t = transform(x)
        agree = np.mean(head.predict(t) == model.predict(x))
        if target == "task-subspace" and kind == "mlp":
            assert t.shape == (len(x), 4) and agree > 0.8  # r = classes < d: approximate
        else:
            assert agree == 1.0, target  # logits, latents; logistic subspace r = c is exact
    assert task_target(model, "logits", x)[0](x).shape == (len(x), 4)


@pytest.mark.parametrize("method", PILOT_SELECTIONS)
def test_pilot_selection_distinct_sorted_ids(method):
    x, _ = _blobs(n=200)
    ids = select_pilots(x, 30, method, seed=1)
    assert len(ids) == 30 and len(set(ids.tolist())) == 30
    assert np.all(np.diff(ids) > 0) and ids.min() >= 0 and ids.max() < 200
    if method == "first":
        np.testing.assert_array_equal(ids, np.arange(30))
    np.testing.assert_array_equal(ids, select_pilots(x, 30, method, seed=1))


def test_k_center_covers_better_than_first():
    x, _ = _blobs(n=300)
    from semalign.common.pilots import whitened_real

    z = whitened_real(x)

    def radius(ids):
        d = np.sum((z[:, None, :] - z[None, ids, :]) ** 2, axis=-1)
        return d.min(axis=1).max()

    assert radius(select_pilots(x, 20, "k-center")) < radius(select_pilots(x, 20, "first"))


@pytest.mark.parametrize(
    "options",
    [
        {"task_model": "mlp"},
        {"target": "logits"},
        {"target": "task-subspace", "task_model": "mlp", "target_dim": 6},
        {"pilot_selection": "k-center", "pilot_fraction": 0.2},
        {"pilot_selection": "herding", "pilot_fraction": 0.2, "strategy": "first-k"},
        {"target": "logits", "strategy": "top-k"},
    ],
)
def test_simulate_with_research_options(cache, options):
    root, ap, users = cache
    scenario = load_scenario(root, ap, users)
    config = AlignmentConfig(**{**SMALL, **options})
    result = simulate(scenario, config, [27]).to_dict()
    assert 0.0 <= result["mean_accuracy"] <= 1.0
    for key, value in options.items():
        assert result["config"][key] == value  # results record how they were produced
    if "pilot_selection" in options:
        ap_state, _ = build_session(scenario, config)
        assert len(ap_state.pilot_ids) == 80  # 20 % of 400
        assert not np.array_equal(ap_state.pilot_ids, np.arange(80))


def test_logits_target_beats_latents_at_high_compression(cache):
    root, ap, users = cache
    scenario = load_scenario(root, ap, users)
    acc = {
        target: simulate(
            scenario, AlignmentConfig(**{**SMALL, "target": target}), [27, 42]
        ).to_dict()["mean_accuracy"]
        for target in ("latents", "logits")
    }
    assert acc["logits"] >= acc["latents"] - 0.02


def test_cli_options_generated():
    from semalign.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", "--task-model", "mlp", "--target", "logits", "--pilot-selection", "herding"]
    )
    assert (args.task_model, args.target, args.pilot_selection) == ("mlp", "logits", "herding")


def test_digits_aug_is_seeded_prefix_stable_and_split_disjoint():
    from semalign.encoders.augment import AUG_SIZE
    from semalign.encoders.datasets import load_dataset

    base = load_dataset("digits")
    small, larger = load_dataset("digits-aug", limit=12), load_dataset("digits-aug", limit=20)
    for split in ("train", "val", "test"):
        images, labels = small[split].images, small[split].labels
        assert images.shape == (12, AUG_SIZE, AUG_SIZE, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, larger[split].images[:12])  # a limit is a prefix
        n = len(base[split].labels)  # rows of a split come from that split's originals only
        np.testing.assert_array_equal(labels, base[split].labels[np.arange(12) % n])
    assert not np.array_equal(small["train"].images[0], small["test"].images[0])


def test_encode_digits_aug_with_a_limit(tmp_path):
    from semalign.cli import main

    argv = ["encode", "--dataset", "digits-aug", "--encoders", "mobilenetv3_small_075"]
    argv += ["--cache-dir", str(tmp_path), "--image-size", "16", "--epochs", "1"]
    assert main([*argv, "--limit", "32", "--no-progress"]) == 0
    train = load_split(tmp_path / "digits-aug", "mobilenetv3_small_075", "train")
    assert len(train.labels) == 32


def test_user_groups_split_channel_uses_and_keep_channels(tmp_path):
    from semalign.engine.grouping import cluster, split_channel_uses

    root, ap, users = make_latents(tmp_path / "lat", user_dims=(12, 20, 10, 14))
    scenario = load_scenario(root, ap, users)
    config = AlignmentConfig(**{**SMALL, "channel_uses": 2, "user_groups": 2})
    result = simulate(scenario, config, [27]).to_dict()
    info = result["seeds"][0]["grouping"]
    assert sorted(sum(info["groups"], [])) == sorted(users)
    assert sum(info["channel_uses"]) == 2 and len(info["groups"]) == 2
    assert [u["name"] for u in result["users"]] == ["user1", "user2", "user3", "user4"]
    assert 0.0 <= result["mean_accuracy"] <= 1.0
    sim = np.array([[1, 0.9, 0.1], [0.9, 1, 0.2], [0.1, 0.2, 1.0]])
    assert cluster(sim, 2) == [[0, 1], [2]]
    assert split_channel_uses(5, [[0], [1]]) == [3, 2]
    assert split_channel_uses(4, [list(range(9)), [9]]) == [3, 1]
    assert split_channel_uses(8, [list(range(9)), [9]]) == [6, 2]


def test_networked_user_honours_research_options(cache):
    from semalign.client.stream import user_factory
    from semalign.client.task import task_user_data
    from semalign.client.user import user_data_from_cache
    from semalign.common.contract import SessionOffer
    from semalign.common.errors import ProtocolError

    root, _, users = cache
    config = AlignmentConfig(**{**SMALL, "target": "logits"})
    offer = SessionOffer(session_id="s", index=0, sessions=1, config=config)
    old = user_factory("u", users[0], 0, lambda pf: user_data_from_cache(root, users[0], pf))
    with pytest.raises(ProtocolError, match="research options"):
        old(offer)

    def load(pf, config=None):
        if config is None:
            return user_data_from_cache(root, users[0], pf)
        return task_user_data(root, users[0], config)

    user = user_factory("u", users[0], 0, load)(offer)
    assert user.data.pilot_latents.shape[1] == 4  # the 4 classes' logits
