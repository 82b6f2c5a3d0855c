"""``semalign audit``: the attacks on what the AP receives (common/privacy_audit.py), the
recording of the AP's side of the wire (semalign/engine/audit.py) and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from semalign.client.strategies.admm import AdmmUser
from semalign.common import privacy_audit as pa
from semalign.common.config import AlignmentConfig
from semalign.server.session import SessionDriver
from synthetic import make_latents

from semalign.cli import main
from semalign.engine import ap_record, audit
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario


def whitened(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Complex Y (m, n) with zero row means and Y Y^H = n I (what a user's whitener gives)."""
    z = rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))
    z -= z.mean(axis=1, keepdims=True)
    q, _ = np.linalg.qr(z.conj().T)  # (n, m) orthonormal columns, still orthogonal to ones
    return np.sqrt(n) * q.conj().T


def paper_uploads(y: np.ndarray, rounds: int, s: int, rng: np.random.Generator) -> list:
    """``rounds`` uploads P_t = M_t^H Y (s, n), M_t (m, s) random."""
    m = y.shape[0]
    return [
        (rng.standard_normal((m, s)) + 1j * rng.standard_normal((m, s))).conj().T @ y
        for _ in range(rounds)
    ]


@pytest.mark.parametrize("rounds", [3, 5])
def test_uploads_that_span_y_give_it_back(rounds):
    """T s >= m: the uploads span Y's row space; both the bound and the attacker's own
    estimate (aligned by Procrustes) recover Y."""
    rng = np.random.default_rng(1)
    y = whitened(6, 200, rng)
    stack = np.vstack(paper_uploads(y, rounds, 2, rng))
    basis = pa.leaked_basis(stack, y.shape[0])
    assert basis.shape[0] == 6
    assert pa.subspace_r2(y, basis) > 0.999999
    aligned = pa.procrustes_align(pa.whitened_estimate(basis, 200), y)
    assert pa.r2(y, aligned) > 0.999999


def test_uploads_that_do_not_span_y_give_part_of_it():
    """T s < m: a whitened Y has the same energy in every direction, so r dimensions of m give
    R^2 = r / m, for the bound and the attack alike; prefixes grow by s a round."""
    rng = np.random.default_rng(2)
    y = whitened(10, 300, rng)
    uploads = paper_uploads(y, 2, 2, rng)  # rank 4 of 10
    basis = pa.leaked_basis(np.vstack(uploads), y.shape[0])
    assert basis.shape[0] == 4
    assert pa.subspace_r2(y, basis) == pytest.approx(0.4, abs=1e-9)
    estimate = pa.procrustes_align(pa.whitened_estimate(basis, 300), y)
    assert pa.r2(y, estimate) == pytest.approx(0.4, abs=1e-9)
    assert [rank for rank, _ in pa.r2_by_rounds(y, uploads)] == [2, 4]
    assert [r for _, r in pa.r2_by_rounds(y, uploads)] == pytest.approx([0.2, 0.4], abs=1e-9)


def test_uploads_unrelated_to_y_explain_only_chance():
    """Rows that are not combinations of Y's rows explain about rank / n of it."""
    rng = np.random.default_rng(3)
    y = whitened(5, 400, rng)
    noise = rng.standard_normal((5, 400)) + 1j * rng.standard_normal((5, 400))
    basis = pa.leaked_basis(noise, 5)
    assert pa.chance_r2(basis.shape[0], 400) == pytest.approx(5 / 400)
    assert pa.subspace_r2(y, basis) < 0.1


def test_compact_uploads_show_only_the_part_of_y_linear_in_x():
    """Feature-domain uploads M^H Y X^H, mapped with the AP's X, explain exactly what a
    regression of Y on X explains (here X has fewer rows than Y: strictly less than 1)."""
    rng = np.random.default_rng(4)
    n = 300
    x = whitened(4, n, rng)
    y = whitened(6, n, rng) * 0.5 + (rng.standard_normal((6, 4)) @ x) * 0.5
    y = np.sqrt(n) * np.linalg.qr((y - y.mean(1, keepdims=True)).conj().T)[0].conj().T
    gram = x @ x.conj().T
    terms = [upload @ x.conj().T for upload in paper_uploads(y, 4, 2, rng)]
    mapped = np.vstack([pa.pilot_domain(t, x, gram) for t in terms])
    basis = pa.leaked_basis(mapped, 6)
    regression = np.linalg.lstsq(x.T, y.T, rcond=None)[0].T @ x  # Y Pi_X
    expected = pa.r2(y, regression)
    assert basis.shape[0] == 4
    assert pa.subspace_r2(y, basis) == pytest.approx(expected, abs=1e-9)
    assert expected < 0.9


def test_a_channel_aware_ap_solves_compact_uploads_for_r_h_r():
    """Compact uploads P_t X^H produced by the user's own G-step (common/admm.py) are
    J_t^H R^H R with J_t computable from F_t, the CSI and the SNR: the AP recovers W = R^H R
    and, up to a semi-unitary, Y Pi_X: the known-map estimate explains exactly what X's row
    space explains of Y, more than the whitened-subspace attack on the same uploads."""
    from semalign.common import admm

    rng = np.random.default_rng(8)
    n, c, m, s, n_r = 300, 6, 4, 2, 3
    x = whitened(c, n, rng)
    y = whitened(m, n, rng) * 0.6 + (rng.standard_normal((m, c)) @ x) * 0.4
    y = np.sqrt(n) * np.linalg.qr((y - y.mean(1, keepdims=True)).conj().T)[0].conj().T
    gram, r = x @ x.conj().T, y @ x.conj().T
    hbar = rng.standard_normal((n_r, s)) + 1j * rng.standard_normal((n_r, s))
    sigma2, maps, terms = 0.01, [], []
    for _ in range(4):  # 4 rounds x s = 8 >= c rows: the maps span
        f = rng.standard_normal((s, c)) + 1j * rng.standard_normal((s, c))
        hf = admm.apply_block_channel(hbar, f)
        products = admm.compact_products(r, hf, gram, float(np.vdot(y, y).real), n)
        g = admm.g_step(y, None, sigma2, products)
        terms.append(admm.uplink_statistics(g, hbar, r)[1])  # P_t X^H (s, c)
        maps.append(pa.equalizer_map(hf, hbar, gram, n, sigma2))
    w = pa.cross_gram_estimate(maps, terms)
    np.testing.assert_allclose(w, r.conj().T @ r, atol=1e-8 * np.abs(w).max())
    estimate = pa.regression_estimate(w, x, gram, m)
    own = pa.subspace_r2(y, pa.leaked_basis(x, c))
    assert pa.r2(y, pa.procrustes_align(estimate, y)) == pytest.approx(own, abs=1e-8)
    mapped = np.vstack([pa.pilot_domain(t, x, gram) for t in terms])
    subspace = pa.whitened_estimate(pa.leaked_basis(mapped, m), n)
    assert pa.r2(y, pa.procrustes_align(subspace, y)) < own - 0.05


def test_no_uploads_leak_nothing():
    """Baselines send no uploads: an empty stack, rank 0, R^2 0, the probe at its majority."""
    rng = np.random.default_rng(5)
    y = whitened(3, 50, rng)
    basis = pa.leaked_basis(np.zeros((0, 50)), 3)
    assert basis.shape == (0, 50)
    assert pa.subspace_r2(y, basis) == pytest.approx(0.0, abs=1e-12)
    labels = np.array([0, 1] * 25)
    features = pa.real_samples(basis)
    assert pa.probe_accuracy(features, labels) == pytest.approx(
        np.mean(labels[35:] == 0), abs=1e-12
    )


def test_cka_is_invariant_to_rotation_and_sees_unrelated_data():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((200, 5))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert pa.linear_cka(a, 3 * a @ q) == pytest.approx(1.0)
    assert pa.linear_cka(a, rng.standard_normal((200, 5))) < 0.2


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root, ap, users = make_latents(
        tmp_path_factory.mktemp("audit"), ap_dim=16, user_dims=(12, 40), n_train=200
    )
    return load_scenario(root, ap, users)


CONFIG = {
    "iterations": 6,
    "channel_uses": 1,
    "antennas_tx": 2,
    "antennas_rx": 2,
    "task_model": "logistic",
}


def test_the_audit_reads_the_wire_not_the_users_memory(scenario, monkeypatch):
    """The recorded uploads are the bytes the AP decoded (equal to the AP's own copy), they
    stay the same when a user changes its memory afterwards, and a user that uploads zeros
    while computing real statistics leaks nothing."""
    config = AlignmentConfig(**CONFIG)
    ap, users = build_session(scenario, config)
    seen: dict[str, list[np.ndarray]] = {u.user_id: [] for u in users}
    receive = ap.strategy.receive_upload

    def keep(state, upload):
        receive(state, upload)
        seen[state.user_id].append(np.array(state.upload[1], dtype=np.complex128))

    ap.strategy.receive_upload = keep
    real_upload = AdmmUser._upload

    def lie(self, kind, round_, a, term, sq, noise):  # user2 uploads zeros
        zeros = 0 * term if self.user.user_id == users[1].user_id else term
        return real_upload(self, kind, round_, a, zeros, sq, noise)

    monkeypatch.setattr(AdmmUser, "_upload", lie)
    recorder = ap_record.ApRecorder()
    SessionDriver(ap, [LoopbackLink(u, tap=recorder) for u in users]).run(
        scenario.ap_test, np.arange(len(scenario.ap_test))
    )
    honest = users[0].user_id
    decoded = ap_record.decode_uploads(recorder.messages[honest], ap)
    assert decoded.fields == ["upload.p"]
    assert len(decoded.rounds) == len(seen[honest]) == 6
    for mine, aps in zip(decoded.rounds, seen[honest], strict=True):
        np.testing.assert_array_equal(mine, aps)
    users[0].strategy.g[:] = 0  # the user's memory changes after the session
    again = ap_record.decode_uploads(recorder.messages[honest], ap)
    np.testing.assert_array_equal(np.vstack(again.rounds), np.vstack(decoded.rounds))
    figures = {
        u.user_id: audit.attack_user(
            audit.user_truth(u, ap),
            ap_record.decode_uploads(recorder.messages[u.user_id], ap),
            ap,
            None,
        )
        for u in users
    }
    assert figures[honest]["reconstruction_r2"] > 0.99  # m = 6 <= c = 8, 6 rounds of 2 rows
    assert figures[users[1].user_id]["rank"] == 0
    assert figures[users[1].user_id]["reconstruction_r2"] == pytest.approx(0.0, abs=1e-9)


def test_paper_leakage_is_capped_by_the_ap_features(scenario):
    """A user with more features than the AP (m = 20 > c = 8) leaks at most c / m."""
    records = audit.audit_seed(scenario, AlignmentConfig(**CONFIG))
    wide = next(r for r in records if r.m == 20)
    assert wide.c == 8 and wide.rank <= 8
    assert wide.reconstruction_r2 <= 8 / 20 + 1e-6
    assert wide.reconstruction_r2 == pytest.approx(wide.procrustes_r2, abs=1e-3)
    assert np.all(np.diff(wide.r2_by_round) > -1e-9)  # more rounds never leak less
    assert wide.r2_by_round[-1] == pytest.approx(wide.linear_r2, abs=1e-9)


LATENTS = ["--ap-encoder", "ap_enc", "--user-encoders", "user_enc0,user_enc1"]
RUN = ["--iterations", "4", "--channel-uses", "1", "--antennas-tx", "2", "--antennas-rx", "2"]
RUN += ["--task-model", "logistic", "--seeds", "3", "-q"]


def test_cli_writes_reconstruction_r2_per_user_for_every_protocol(scenario, tmp_path):
    """Paper, compact and compact with secure aggregation (the default --aggregations runs it
    where the session allows: fed and compact): per-user R^2 for each; secure leaves none
    per user, only what the sum shows."""
    out, figure = tmp_path / "audit.json", tmp_path / "leak.png"
    argv = ["audit", "--latents", str(scenario.latents_dir), *LATENTS, *RUN]
    argv += ["--targets", "latents", "--json", str(out), "--figure", str(figure)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    sessions: dict[tuple, dict] = {}
    for row in data["users"]:
        sessions.setdefault((row["protocol"], row["aggregation"]), {})[row["user"]] = row
    assert set(sessions) == {("paper", "plain"), ("compact", "plain"), ("compact", "secure")}
    for rows in sessions.values():
        assert set(rows) == {"user1", "user2"}
        for row in rows.values():
            assert -1e-9 <= row["reconstruction_r2"] <= 1 + 1e-9
            assert len(row["r2_by_round"]) == 4
    assert sessions["paper", "plain"]["user1"]["reconstruction_r2"] > 0.99  # 4 x 2 rows >= m = 6
    for row in sessions["compact", "plain"].values():  # feature-domain: at most Y Pi_X
        assert row["reconstruction_r2"] <= row["own_r2"] + 1e-6
        assert row["known_map_r2"] is not None and row["probe_estimate"] == "known-map"
    for row in sessions["compact", "secure"].values():
        assert row["rank"] == 0 and row["masked_fields"] == ["secure_upload.masked"]
        assert row["reconstruction_r2"] == pytest.approx(0.0, abs=1e-9)
        assert 0 < row["aggregate_r2"] <= 1
    assert len(data["summary"]) == 3
    assert figure.stat().st_size > 0


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--protocols", "paper,bogus"], "--protocols: unknown 'bogus'"),
        (["--targets", ""], "--targets is empty"),
        (["--user-groups", "2"], "--user-groups"),
        (["--json", "{d}"], "--json {d}: cannot write there"),
        (["--seeds", "x"], "--seeds"),
        (["--protocols", "paper", "--aggregations", "secure"], "no session to audit"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(scenario, tmp_path, capsys, extra, text):
    argv = ["audit", "--latents", str(scenario.latents_dir), *LATENTS, *RUN]
    argv += [e.replace("{d}", str(tmp_path)) for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text.replace("{d}", str(tmp_path)) in err[0]


def test_masked_uploads_leave_only_their_sum(scenario):
    """Secure aggregation: per user, a masked uint64 vector leaves no term to attack; the sum
    over users (masks cancel modulo 2^64) is decoded to sum_l F_l, as the AP decodes it."""
    from semalign.common import secure_aggregation as sa
    from semalign.common.wire import to_matrix
    from semalign.proto import semalign_pb2 as pb

    ap, _ = build_session(scenario, AlignmentConfig(**CONFIG))
    rng = np.random.default_rng(7)
    shape = (ap.symbols, ap.cdim)
    recorded: dict[str, list[bytes]] = {"u1": [], "u2": []}
    sums = []
    for round_ in range(3):
        fs = [rng.standard_normal(shape) + 1j * rng.standard_normal(shape) for _ in range(2)]
        mask = rng.integers(0, 2**63, size=sa.contribution_size(shape, 2, real=False))
        mask = mask.astype(np.uint64) * np.uint64(2)
        for (user, f), sign in zip(zip(recorded, fs, strict=True), (1, -1), strict=True):
            q = sa.quantize(sa.pack_contribution(f, [1.0, 2.0], real=False), 2)
            masked = q + mask if sign > 0 else q - mask
            upload = pb.SecureUpload(session_id="s", round=round_, masked=to_matrix(masked))
            recorded[user].append(pb.UserMessage(secure_upload=upload).SerializeToString())
        sums.append(fs[0] + fs[1])
    uploads = [ap_record.decode_uploads(recorded[u], ap) for u in recorded]
    for up in uploads:
        assert [r.shape[0] for r in up.rounds] == [0, 0, 0]  # three rounds, no term
        assert up.masked_fields == ["secure_upload.masked"]
    aggregate = np.vstack(audit.aggregate_rounds(uploads, ap))
    gram = ap.x @ ap.x.conj().T
    expected = np.vstack([pa.pilot_domain(f, ap.x, gram) for f in sums])
    np.testing.assert_allclose(aggregate, expected, atol=1e-6 * np.abs(expected).max())
