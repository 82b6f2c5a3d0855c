"""First-K / Top-K in the paper's order: selection in the AP's native latent, whitening of the
selected symbols, a receiver that undoes it (section IV; the authors' ``__compression`` runs
before ``prewhiten``).

Each test builds a case a receiver in the paper's order decodes exactly at high SNR, and that a
deviation (selecting among whitened symbols, not undoing the whitening, dropping the intercept)
does not.
"""

from __future__ import annotations

import numpy as np
import pytest
from semalign.client.user import User, UserData
from semalign.common.classifier import train_classifier
from semalign.common.config import AlignmentConfig, GeometryError
from semalign.common.wire import from_matrix, parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import LoopbackLink

D, N, N_TEST = 12, 300, 80


def _session(strategy: str, ap_lat: np.ndarray, user_map, **cfg):
    """AP on native latents ``ap_lat`` (N + N_TEST, D); one user whose latents are
    ``user_map(ap_lat)``; SNR 100 dB, 2x2, K = 1 (4 real features sent), a power budget
    that does not bind (the precoder inverts the equalized channel)."""
    config = AlignmentConfig(
        strategy=strategy,
        antennas_tx=2,
        antennas_rx=2,
        channel_uses=1,
        snr_db=100.0,
        **{"power": 10.0, **cfg},
    )
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:N], pilot_ids=np.arange(N))
    lat = user_map(ap_lat)
    labels = (lat[:, 0] > np.median(lat[:, 0])).astype(int)
    data = UserData(
        pilot_ids=np.arange(N),
        pilot_latents=lat[:N],
        test_latents=lat[N:],
        test_labels=labels[N:],
        classifier=train_classifier(lat[:N], labels[:N]),
    )
    user = User(
        user_id="user1",
        encoder="enc",
        data=data,
        antennas_rx=2,
        antennas_tx=2,
        snr_db=config.snr_db,
        channel_seed=(config.seed, 0),
        share_csi=config.csi,
    )
    return ap, user, ap_lat[N:]


def _test_mse(strategy: str, ap_lat, user_map, **cfg) -> float:
    """Test MSE relative to the variance of the user's test latents (complex64 on the wire:
    about 1e-7 is exact)."""
    ap, user, test = _session(strategy, ap_lat, user_map, **cfg)
    res = SessionDriver(ap, [LoopbackLink(user)]).run(test, np.arange(N_TEST))
    return res.reports["user1"].mse / float(np.var(user_map(test)))


def _scaled_latents(rng) -> np.ndarray:
    """Native AP latents with very different feature scales and non-zero means."""
    scales = np.geomspace(10.0, 0.1, D)
    return rng.standard_normal((N + N_TEST, D)) * scales + np.linspace(-3, 3, D)


@pytest.mark.parametrize("fit", ["received", "full"])
def test_first_k_decodes_a_user_that_sees_the_first_features(fit):
    """User latents = an affine map of the AP's first 2 K N_T native features: exact at high
    SNR. With the full fit (Q from the AP's native pilots) a receiver that did not undo the
    whitening would be off by the factor and the mean."""
    rng = np.random.default_rng(1)
    ap_lat = _scaled_latents(rng)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal(5)
    mse = _test_mse("first-k", ap_lat, lambda x: x[:, :4] @ a + b, baseline_fit=fit)
    assert mse < 1e-6


@pytest.mark.parametrize(
    "cfg",
    [{}, {"power": 1.0}, {"power": 1.0, "csi": False}],
    ids=["loose-power", "binding-power", "no-csi"],
)
def test_top_k_decodes_sparse_latents_exactly(cfg):
    """Each AP latent has exactly 2 K N_T = 4 non-zero native features at random positions:
    Top-K in the native space sends all of them, the user scatters them back and Q is exact.
    Selecting among *whitened* symbols (which mixes every feature) cannot do this, nor can a
    receiver that leaves the end-to-end map M H F in place when the power budget binds (a
    shrink) or the AP is channel-unaware (a rotation V^H): the scatter puts values at
    per-sample positions, which no alignment Q can undo afterwards."""
    rng = np.random.default_rng(2)
    ap_lat = np.zeros((N + N_TEST, D))
    for row in ap_lat:
        row[rng.choice(D, 4, replace=False)] = rng.uniform(1, 3, 4) * rng.choice([-1, 1], 4)
    a, b = rng.standard_normal((D, 6)), rng.standard_normal(6)
    assert _test_mse("top-k", ap_lat, lambda x: x @ a + b, **cfg) < 1e-6


def test_top_k_index_bits_are_counted_on_the_native_dimension():
    """ceil(log2 C(d, 2 K N_T)) bits per sample: C(12, 4) = 495 -> 9 bits."""
    rng = np.random.default_rng(3)
    ap, _, _ = _session("top-k", _scaled_latents(rng), lambda x: x[:, :3])
    info = ap.result_info()["baseline"]
    assert info["index_bits_per_sample"] == 9 and info["features_sent"] == 4
    assert info["selection"] == "native"


def test_pilot_transmission_carries_the_whitening_of_the_selected_symbols():
    rng = np.random.default_rng(4)
    ap_lat = _scaled_latents(rng)
    ap, user, _ = _session("first-k", ap_lat, lambda x: x[:, :3])
    user.handle(ap.handshake(user.handshake_request())[1])
    msg = pb.ApMessage.FromString(ap.final_messages()["user1"]).pilots
    factor, mean = from_matrix(msg.whitening_factor), from_matrix(msg.whitening_mean)[:, 0]
    packed = ap_lat[:N, :2] + 1j * ap_lat[:N, 2:4]  # first half real, second half imaginary
    np.testing.assert_allclose(mean, packed.mean(axis=0), atol=1e-10)
    centered = packed - mean
    covariance = centered.T @ centered.conj() / N
    np.testing.assert_allclose(factor @ factor.conj().T, covariance, rtol=1e-8)
    assert from_matrix(msg.indices).shape == (4, N)


def test_a_pilot_transmission_without_whitening_or_with_a_bad_factor_is_refused():
    rng = np.random.default_rng(5)
    ap, user, _ = _session("first-k", _scaled_latents(rng), lambda x: x[:, :3])
    user.handle(ap.handshake(user.handshake_request())[1])
    data = ap.final_messages()["user1"]
    msg = pb.ApMessage.FromString(data)
    msg.pilots.ClearField("whitening_factor")
    reply = parse_user_message(user.handle(msg.SerializeToString()))
    assert reply.WhichOneof("body") == "error" and "whitening" in reply.error.message
    ap, user, _ = _session("first-k", _scaled_latents(rng), lambda x: x[:, :3])
    user.handle(ap.handshake(user.handshake_request())[1])
    msg = pb.ApMessage.FromString(ap.final_messages()["user1"])
    bad = np.triu(np.ones((2, 2), dtype=np.complex128))  # upper triangular
    msg.pilots.whitening_factor.data = bad.tobytes()
    reply = parse_user_message(user.handle(msg.SerializeToString()))
    assert reply.WhichOneof("body") == "error" and "lower triangular" in reply.error.message


def test_more_features_than_the_native_latent_is_a_geometry_error():
    rng = np.random.default_rng(6)
    ap_lat = rng.standard_normal((N + N_TEST, 3))  # d = 3 < 2 K N_T = 4
    with pytest.raises(GeometryError, match="2 K N_T"):
        _session("first-k", ap_lat, lambda x: x)


def test_charged_top_k_pays_for_the_data_uses_it_sends():
    """Charged, the index bits are those of the data uses actually sent, and data + index = K:
    1x1, d = 12, SNR 100 dB (33.2 bits a use), K = 3: 2 data uses send 4 of 12 features
    (ceil(log2 495) = 9 bits, one use); 3 would leave no use for the index."""
    rng = np.random.default_rng(7)
    config = AlignmentConfig(
        strategy="top-k",
        antennas_tx=1,
        antennas_rx=1,
        channel_uses=3,
        snr_db=100.0,
        topk_index_cost="channel-uses",
    )
    pilots = _scaled_latents(rng)[:N]
    ap = AccessPoint(config=config, pilot_latents=pilots, pilot_ids=np.arange(N))
    info = ap.result_info()["baseline"]
    assert (info["data_channel_uses"], info["index_channel_uses"]) == (2, 1)
    assert info["index_bits_per_sample"] == 9 and info["features_sent"] == 4
    # at SNR 15 (4 bits a use), K = 4: 3 data uses need ceil(log2 C(12, 6)) = 10 bits (3
    # uses), 2 need 9 (3 uses): too many; 1 data use needs ceil(log2 C(12, 2)) = 7 bits (2
    # uses): 1 data use, and the index has the other 3 (sending 2 data uses with the bits of
    # 1, K minus the index's 2 uses, would undercharge the index)
    low = config.model_copy(update={"snr_db": 10 * np.log10(15.0), "channel_uses": 4})
    ap = AccessPoint(config=low, pilot_latents=pilots, pilot_ids=np.arange(N))
    info = ap.result_info()["baseline"]
    assert (info["data_channel_uses"], info["index_channel_uses"]) == (1, 3)
    assert info["index_bits_per_sample"] == 7
