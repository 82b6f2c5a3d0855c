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


def test_the_attack_by_rounds_is_the_attack_on_each_prefix():
    """The per-round whitened-subspace attack (Gram matrix, closed-form Procrustes) equals the
    attack run on each prefix of the uploads, for uploads that are not whitened and that
    exceed m rows (the top m directions kept)."""
    rng = np.random.default_rng(9)
    n, m = 120, 5
    y = whitened(m, n, rng)
    rounds = [rng.standard_normal((3, m)) @ y + 0.3 * rng.standard_normal((3, n)) for _ in range(4)]
    fast = pa.whitened_attack_by_rounds(y, rounds, 0.5)
    slow = [pa.whitened_attack_r2(y, np.vstack(rounds[: t + 1]), 0.5) for t in range(4)]
    assert fast == pytest.approx(slow, abs=1e-9)
    assert len(set(np.round(fast, 6))) == 4  # the prefixes differ: not one figure repeated


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
        tmp_path_factory.mktemp("audit"), ap_dim=16, user_dims=(12, 40, 16), n_train=200
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
    # paper uploads are whitened: the AP's own estimate reaches the row-combination oracle
    assert wide.reconstruction_r2 == pytest.approx(wide.subspace_r2, abs=1e-3)
    assert wide.reconstruction_r2 == wide.attack_r2 == wide.r2_by_round[-1]
    assert np.all(np.diff(wide.subspace_r2_by_round) > -1e-9)  # more rows never explain less
    assert wide.subspace_r2_by_round[-1] == pytest.approx(wide.subspace_r2, abs=1e-9)


LATENTS = ["--ap-encoder", "ap_enc", "--user-encoders", "user_enc0,user_enc1,user_enc2"]
RUN = ["--iterations", "4", "--channel-uses", "1", "--antennas-tx", "2", "--antennas-rx", "2"]
RUN += ["--task-model", "logistic", "--seeds", "3", "-q"]


def test_cli_writes_reconstruction_r2_per_user_for_every_protocol(scenario, tmp_path):
    """Paper, compact and compact with secure aggregation (the default --aggregations runs it
    where the session allows: fed and compact), and secure again with user3 dropped at the
    middle round (--drop-round auto, 3 users): per-user R^2 for each. Under secure
    aggregation the AP rebuilds the dropped user's key of the drop round from the shares the
    others reveal (the audit does too), and that key opens none of user3's earlier uploads."""
    out, figure = tmp_path / "audit.json", tmp_path / "leak.png"
    argv = ["audit", "--latents", str(scenario.latents_dir), *LATENTS, *RUN]
    argv += ["--targets", "latents", "--json", str(out), "--figure", str(figure)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    sessions: dict[tuple, dict] = {}
    for row in data["users"]:
        key = (row["protocol"], row["aggregation"], row["drop_round"])
        sessions.setdefault(key, {})[row["user"]] = row
    plain, compact = ("paper", "plain", None), ("compact", "plain", None)
    secure, drop = ("compact", "secure", None), ("compact", "secure", 2)
    assert set(sessions) == {plain, compact, secure, drop}
    for rows in sessions.values():
        assert set(rows) == {"user1", "user2", "user3"}
        for row in rows.values():
            assert row["reconstruction_r2"] == row["attack_r2"] == row["r2_by_round"][-1]
            assert len(row["r2_by_round"]) == (2 if row["dropped"] else 4)
    paper = sessions[plain]
    assert paper["user1"]["reconstruction_r2"] > 0.99  # 4 x 2 rows >= m = 6
    assert paper["user2"]["reconstruction_r2"] < 0.5  # m = 20 > c = 8: at most 8 / 20
    for row in sessions[compact].values():  # feature-domain: at most Y Pi_X
        assert row["reconstruction_r2"] <= row["own_r2"] + 1e-6
        assert row["subspace_r2"] <= row["own_r2"] + 1e-6
        assert row["known_map_r2"] is not None and row["probe_estimate"] == "known-map"
    for rows in (sessions[secure], sessions[drop]):  # the "done when"
        worst = max(r["reconstruction_r2"] for r in rows.values())
        assert worst < max(r["reconstruction_r2"] for r in paper.values()) - 0.5
    dropped = sessions[drop]["user3"]
    assert dropped["dropped"] and dropped["rebuilt_rounds"] == [2]  # the AP's recovery, redone
    assert dropped["opened_rounds"] == []  # a round-2 key opens neither round 0 nor 1
    assert dropped["r2_by_round"] == pytest.approx([0, 0], abs=1e-9)
    for user in ("user1", "user2"):
        assert sessions[drop][user]["rebuilt_rounds"] == sessions[secure][user]["rebuilt_rounds"]
        assert sessions[drop][user]["rebuilt_rounds"] == []
    assert len(data["summary"]) == 4
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
        (["--drop-round", "4"], "--drop-round 4: rounds are 0..3"),
        (["--drop-round", "x"], "--drop-round: 'x' is not a round"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(scenario, tmp_path, capsys, extra, text):
    argv = ["audit", "--latents", str(scenario.latents_dir), *LATENTS, *RUN]
    argv += [e.replace("{d}", str(tmp_path)) for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text.replace("{d}", str(tmp_path)) in err[0]


def test_a_rebuilt_key_opens_the_drop_rounds_masks_and_no_earlier_upload(scenario):
    """Secure session, user3 dropped at round 2. From the recorded shares the audit rebuilds
    user3's round-2 masking key (the AP's functions); with it (and the survivors' round-2
    self-mask keys the AP rebuilt) the survivors' round-2 sum decodes below the fixed-point
    limit (the masks came off), while user3's round-0 and round-1 uploads do not open. The
    opener is not blind: user3's own round-0 keys (its memory, never sent) open its round-0
    upload to an F_l of the broadcast's shape."""
    from semalign.common import secure_aggregation as sa

    config = AlignmentConfig(**CONFIG, protocol="compact", aggregation="secure")
    ap, users, recorder, _ = audit.record_session(scenario, config, drop_round=2)
    record = ap_record.secure_record(recorder, ap)
    keys = ap_record.rebuilt_keys(record)
    owner = ap.users["user3"].index
    assert sorted(keys) == [(owner, 2)]
    mine = ap_record.decode_uploads(recorder.messages["user3"], ap)
    assert mine.masked_rounds == [0, 1]
    for vector, round_ in zip(mine.masked, mine.masked_rounds, strict=True):
        assert ap_record.open_upload(vector, owner, round_, keys[owner, 2], record) is None
    keys0 = users[2].strategy
    unself = sa.remove_self_masks(mine.masked[0], {owner: keys0.self_masks[0]}, ap.session_id, 0)
    own = ap_record.open_upload(unself, owner, 0, keys0.masking[0], record)
    assert own is not None
    shape, real = (ap.symbols, ap.cdim), ap.representation.widely_linear
    f0, _ = sa.unpack_contribution(own, shape, 2, real=real)
    assert np.all(np.isfinite(f0)) and np.abs(f0).max() > 0
    rebuilt, opened = audit.opened_contributions(mine, owner, record, keys, ap)
    assert rebuilt == [2] and opened == {}
    survivors = {}
    for user_id in ("user1", "user2"):
        decoded = ap_record.decode_uploads(recorder.messages[user_id], ap)
        survivors[ap.users[user_id].index] = decoded.masked[decoded.masked_rounds.index(2)]
    peers = {i: sa.load_public(record.round_keys[i][2], "key") for i in survivors}
    selfs = {i: ap.strategy.rebuilt_self[i, 2] for i in survivors}
    summed = sa.remove_self_masks(sa.ring_sum(list(survivors.values())), selfs, ap.session_id, 2)
    total = sa.unmask_dropped(summed, keys[owner, 2], owner, peers, record.session_id, 2)
    assert np.abs(sa.decode_sum(total)).max() < sa.value_limit(3)  # every mask came off
