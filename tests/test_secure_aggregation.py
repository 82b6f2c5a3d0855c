"""Secure aggregation (``--aggregation secure``): the AP learns only the sum of the users' F_l.

* in-process: every round's F, Z, U and every G_l equal plain aggregation (compact protocol)
  to 1e-6 relative, and ``semalign simulate`` gives the same test MSE and accuracy;
* a masked upload alone looks nothing like its F_l (correlation ~ 0) while the sum decodes
  once every upload's self mask is removed (double masking), and not before;
* a user dropped mid-round: the others finish, its masks are removed (the iterates equal a
  plain session that lost the same user at the same moment), and the AP refuses to decode
  with fewer uploads than the threshold;
* one masking key per round: the key rebuilt after a drop at round r removes round r's masks
  and does not open the dropped user's earlier uploads, even with their self-mask keys;
* double masking: an AP that claims a live user dropped after its upload arrived rebuilds
  that user's masking key but cannot open the upload (its self mask stays on), and the users
  refuse to reveal the self-mask key too; a user asked for both kinds of share of one user
  in one round refuses, is dropped, and the session goes on for the others;
* a bad revealed share: the key is rebuilt from good ones and the sender alone is dropped;
* fixed point: values beyond the documented limit are refused, not wrapped;
* differential privacy: the noise in the decoded sum has the claimed spread, and epsilon is
  the Gaussian mechanism's RDP curve computed independently;
* networked: real ``semalign ap`` and ``semalign user`` processes, one user killed mid-round;
* configurations secure aggregation cannot run are refused with exit code 2.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from semalign.client.user import User, build_user
from semalign.common import differential_privacy as dp
from semalign.common import secure_aggregation as sa
from semalign.common.config import AlignmentConfig
from semalign.common.credentials import user_token
from semalign.common.errors import ProtocolError
from semalign.common.wire import parse_ap_message, parse_user_message, view_matrix
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver
from synthetic import make_latents
from test_core_protocol import _users_data

from semalign.cli import main
from semalign.engine.loopback import DroppingLink, LoopbackLink
from semalign.engine.scenario import build_session, load_scenario

BASE = {"antennas_tx": 2, "antennas_rx": 2, "channel_uses": 2, "iterations": 5}
PLAIN = AlignmentConfig(**BASE, protocol="compact")
SECURE = PLAIN.model_copy(update={"aggregation": "secure"})


class TapLink(LoopbackLink):
    """A loopback link that keeps every message its user sends."""

    def __init__(self, user: User) -> None:
        super().__init__(user)
        self.sent: list[bytes] = []

    def receive(self, timeout: float | None) -> bytes:
        data = super().receive(timeout)
        self.sent.append(data)
        return data


def _session(config: AlignmentConfig, *, dims=(10, 14, 12), d=16, n=300, seed=0):
    rng = np.random.default_rng(seed)
    ap_lat = rng.standard_normal((n + 50, d))
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:n], pilot_ids=np.arange(n))
    users = [
        build_user(f"user{i + 1}", f"enc{i}", data, config, i)
        for i, data in enumerate(_users_data(rng, ap_lat, dims, n, 50))
    ]
    return ap, users, ap_lat[n:]


def _run(config: AlignmentConfig, *, dies: dict[int, int] | None = None, after_setup=None, **kw):
    """Round by round: the AP's F, Z, U and each live user's G_l; then the evaluation.
    ``after_setup(users, ap)`` runs between the key setup and the first round."""
    ap, users, test = _session(config, **kw)
    dies = dies or {}
    links = [TapLink(u) for u in users]
    wrapped = [DroppingLink(lk, dies[i]) if i in dies else lk for i, lk in enumerate(links)]
    driver = SessionDriver(ap, wrapped)
    driver.handshake()
    if after_setup is not None:
        after_setup(users, ap)
    iterates = []
    for _ in range(config.iterations):
        record = driver.admm_round()
        v = ap.strategy.shared
        live = [u for u, w in zip(users, wrapped, strict=True) if not getattr(w, "dead", False)]
        gs = {u.user_id: u.strategy.g.copy() for u in live}
        iterates.append((record, v.f.copy(), v.z.copy(), v.u.copy(), gs))
    driver.align()
    requests = ap.evaluation_requests(test, np.arange(len(test)))
    replies = driver._exchange("evaluation", requests)
    reports = driver._deliver("evaluation", ap.receive_report, replies)
    return iterates, reports, ap, links


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _assert_same(got, want, tol=1e-6, *, users: bool = True) -> None:
    assert len(got) == len(want)
    for (rec, f, z, u, gs), (wrec, wf, wz, wu, wgs) in zip(got, want, strict=True):
        assert _rel(f, wf) < tol and _rel(z, wz) < tol
        assert np.linalg.norm(u - wu) / max(np.linalg.norm(wu), np.linalg.norm(wf)) < tol
        assert gs.keys() == wgs.keys()
        for uid, g in wgs.items():
            assert _rel(gs[uid], g) < tol
        assert rec.mse == pytest.approx(wrec.mse, rel=tol)
        assert rec.objective == pytest.approx(wrec.objective, rel=tol)
        assert rec.users == wrec.users or not users


@pytest.mark.parametrize(
    "case", [{}, {"csi": False}, {"equalizer": "widely-linear"}, {"snr_db": 5.0}]
)
def test_secure_iterates_equal_plain(case):
    plain, plain_reports, _, _ = _run(PLAIN.model_copy(update=case))
    secure, secure_reports, ap, _ = _run(SECURE.model_copy(update=case))
    _assert_same(secure, plain)
    for uid, report in plain_reports.items():
        assert secure_reports[uid].mse == pytest.approx(report.mse, rel=1e-6)
    info = ap.result_info()["aggregation"]
    assert info == {"mode": "secure", "threshold": 2, "participants": 3, "recoveries": []}


def test_masked_uploads_look_random_but_sum_to_the_average():
    iterates, _, ap, links = _run(SECURE)
    size = ap.strategy.size
    uploads = []  # round 0's masked vectors
    for link in links:
        for data in link.sent:
            msg = parse_user_message(data)
            if msg.WhichOneof("body") == "secure_upload" and msg.secure_upload.round == 0:
                uploads.append(np.array(view_matrix(msg.secure_upload.masked)))
    assert len(uploads) == 3 and all(u.shape == (size,) for u in uploads)
    selfs = {i: ap.strategy.rebuilt_self[(i, 0)] for i in range(3)}
    total = sa.ring_sum(uploads)
    average = sa.decode_sum(sa.remove_self_masks(total, selfs, ap.session_id, 0)) / 3
    assert np.median(np.abs(sa.decode_sum(total))) > 1e6 * np.max(np.abs(average))  # self masks
    f0 = iterates[0][1]
    f_part, _ = sa.unpack_contribution(average, f0.shape, 2, real=False)
    assert _rel(f_part, f0) < 1e-9  # the sum decodes to the F the AP stepped with
    for upload in uploads:  # alone, an upload is uniform noise on Z / 2^64
        alone = sa.decode_sum(upload)
        corr = np.corrcoef(alone, average)[0, 1]
        assert abs(corr) < 0.3, corr
        assert np.median(np.abs(alone)) > 1e6 * np.max(np.abs(average))


def test_a_user_dropped_mid_round_is_survived_and_its_masks_removed():
    four = {"dims": (10, 14, 12, 11)}
    plain, plain_reports, _, _ = _run(PLAIN, dies={1: 2}, **four)
    secure, secure_reports, ap, _ = _run(SECURE, dies={1: 2}, **four)
    _assert_same(secure, plain)  # the masks of user2 are gone from round 2's sum
    assert [r.users for r, *_ in secure] == [4, 4, 3, 3, 3]
    assert sorted(secure_reports) == ["user1", "user3", "user4"]
    info = ap.result_info()["aggregation"]
    assert info["threshold"] == 3 and info["recoveries"] == [{"round": 2, "users": [1]}]
    assert "user2" in [u.user_id for u in ap.users.values() if u.dropped]
    for uid, report in plain_reports.items():
        assert secure_reports[uid].mse == pytest.approx(report.mse, rel=1e-6)
    # every round, the self mask of every upload that arrived came off (and no other)
    arrived = [(i, r) for r in range(5) for i in range(4) if i != 1 or r < 2]
    assert sorted(ap.strategy.rebuilt_self, key=lambda k: (k[1], k[0])) == arrived


def _uploads(link: TapLink, round_: int) -> list[np.ndarray]:
    """The masked vectors a user sent for ``round_`` (as the AP received them)."""
    out = []
    for data in link.sent:
        msg = parse_user_message(data)
        if msg.WhichOneof("body") == "secure_upload" and msg.secure_upload.round == round_:
            out.append(np.array(view_matrix(msg.secure_upload.masked)))
    return out


def _strip(upload: np.ndarray, key, owner: int, peers: dict, session: str, round_: int, own=None):
    """``upload`` of user ``owner`` minus the pair masks ``key`` makes with ``peers`` (index ->
    masking public key of ``round_``) and minus the self mask of the self-mask key ``own``
    (if given): the attack on a user's upload, decoded."""
    secrets = {i: sa.pair_secret(key, pub) for i, pub in peers.items()}
    upload = upload - sa.mask_sum(owner, secrets, session, round_, len(upload))
    if own is not None:
        upload = sa.remove_self_masks(upload, {owner: own}, session, round_)
    return sa.decode_sum(upload)


def test_a_dropped_users_earlier_uploads_stay_masked():
    """user2 dies at round 2: its round-2 key is rebuilt, and with it the AP removes round 2's
    masks; but its round-0 upload, which the AP holds, does not open with any key the AP has,
    its round-0 self-mask key (rebuilt when that upload arrived) included."""
    _, _, ap, links = _run(SECURE, dies={1: 2}, dims=(10, 14, 12, 11))
    strategy, session = ap.strategy, ap.session_id
    assert sorted(strategy.rebuilt) == [(1, 2)]
    (upload,) = _uploads(links[1], 0)
    peers0 = {i: sa.load_public(strategy.round_keys[i][0], "key") for i in (0, 2, 3)}
    # the truth, opened with user2's own round-0 private keys (which never left it)
    own = links[1].user.strategy
    truth = _strip(upload, own.masking[0], 1, peers0, session, 0, own.self_masks[0])
    assert np.median(np.abs(truth)) < 1e3  # F_l and loss scalars: O(1)
    for key in strategy.rebuilt.values():  # everything the AP can build
        attack = _strip(upload, key, 1, peers0, session, 0, strategy.rebuilt_self[(1, 0)])
        assert _rel(attack, truth) > 0.5
        assert np.median(np.abs(attack)) > 1e6 * np.max(np.abs(truth))  # uniform on the ring
    # round 2: the survivors' sum without user2's masks decodes to the F the AP stepped with
    survivors = [_uploads(links[i], 2)[0] for i in (0, 2, 3)]
    peers2 = {i: sa.load_public(strategy.round_keys[i][2], "key") for i in (0, 2, 3)}
    selfs = {i: strategy.rebuilt_self[(i, 2)] for i in (0, 2, 3)}
    total = sa.unmask_dropped(
        sa.remove_self_masks(sa.ring_sum(survivors), selfs, session, 2),
        strategy.rebuilt[(1, 2)],
        1,
        peers2,
        session,
        2,
    )
    f2, _ = sa.unpack_contribution(sa.decode_sum(total) / 3, strategy.shared.f.shape, 2, real=False)
    f_round2 = _run(PLAIN, dies={1: 2}, dims=(10, 14, 12, 11))[0][2][1]
    assert _rel(f2, f_round2) < 1e-6


def test_a_bad_share_is_refused_and_its_sender_alone_dropped():
    """Five users (t = 3); user2 dies at round 2 and user5 reveals a wrong share of user2's
    round-2 key. The AP rebuilds the key from the three good shares, drops user5 alone after
    round 2 (its upload of round 2 counts), and the iterates equal a plain session in which
    user2 dies at round 2 and user5 at round 3."""
    five = {"dims": (10, 14, 12, 11, 13)}

    def corrupt(users, ap):  # one byte of user5's share of user2's round-2 key, past its index
        held = users[4].strategy.held
        bundle = bytearray(held[1])
        bundle[2 * sa.SHARE_BYTES + 9] ^= 0x40
        held[1] = bytes(bundle)

    plain, plain_reports, _, _ = _run(PLAIN, dies={1: 2, 4: 3}, **five)
    secure, secure_reports, ap, _ = _run(SECURE, dies={1: 2}, after_setup=corrupt, **five)
    # user5 lives on, dropped by the AP: its G_l is compared while plain's user5 is alive
    secure = [
        (*it[:4], {k: g for k, g in it[4].items() if k in p[4]})
        for it, p in zip(secure, plain, strict=True)
    ]
    _assert_same(secure, plain)
    assert [r.users for r, *_ in secure] == [5, 5, 4, 3, 3]
    dropped = {u.user_id: u.dropped for u in ap.users.values() if u.dropped}
    assert sorted(dropped) == ["user2", "user5"]
    assert "round 2" in dropped["user5"] and "not a share of that key" in dropped["user5"]
    assert sorted(secure_reports) == sorted(plain_reports) == ["user1", "user3", "user4"]


def test_rebuild_key_finds_the_good_shares_and_names_the_bad_sender():
    (key,) = sa.round_keys(1)
    public = sa.public_bytes(key.public_key())
    shares = dict(enumerate(sa.split_key(key, 3, 5)))
    rebuilt, bad = sa.rebuild_key(shares, 3, public)
    assert sa.private_bytes(rebuilt) == sa.private_bytes(key) and bad == []
    wrong = bytearray(shares[1])
    wrong[20] ^= 1
    shares[1] = bytes(wrong)
    # the public-key check refuses what a bad share combines to
    try:
        combined = sa.public_bytes(sa.combine_key([shares[0], shares[1], shares[2]]).public_key())
    except ProtocolError:
        combined = None
    assert combined != public
    rebuilt, bad = sa.rebuild_key(shares, 3, public)
    assert sa.private_bytes(rebuilt) == sa.private_bytes(key) and bad == [1]
    shares[3] = shares[1][:4] + shares[3][4:]  # a second bad share: 3 good ones left
    assert sa.rebuild_key(shares, 3, public)[1] == [1, 3]
    shares[4] = bytes(reversed(shares[4]))  # 2 good ones left: unrecoverable
    with pytest.raises(ProtocolError, match="no 3 of the 5"):
        sa.rebuild_key(shares, 3, public)


def test_fewer_uploads_than_the_threshold_are_not_decoded():
    with pytest.raises(ProtocolError, match="threshold"):
        _run(SECURE, dies={0: 1, 1: 1})  # 1 of 3 left; t = 2


def test_a_user_refuses_to_mask_with_a_peer_whose_key_was_revealed():
    config = SECURE.model_copy(update={"iterations": 3})
    _, _, ap, links = _run(config, dies={2: 1}, dims=(10, 14, 12, 11))
    user = links[0].user
    assert user.strategy.revealed == {2}  # it gave its share of user3's key in round 1
    stale = [*ap.strategy.participants, 2]
    broadcast = pb.CompactBroadcast(session_id=ap.session_id, round=3, participants=stale)
    with pytest.raises(ProtocolError, match="revealed"):
        user.strategy.on_compact_broadcast(broadcast)


FOUR = {"dims": (10, 14, 12, 11)}  # four users: t = 3


def test_an_ap_claiming_a_live_user_dropped_cannot_open_its_upload():
    """The attack double masking stops. Round 1: user2's upload reaches the AP, which keeps it
    and claims user2 dropped; the others reveal their shares of user2's round-1 masking key
    (as for any drop), the AP rebuilds it and strips user2's pair masks from the kept upload:
    what is left is uniform on the ring, nothing like user2's contribution (opened here with
    user2's own keys), because its self mask is still on. Asked next for user2's round-1
    self-mask key, every user refuses, naming why."""
    ap, users, _ = _session(SECURE, **FOUR)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    driver.admm_round()
    strategy, session, honest, kept = ap.strategy, ap.session_id, ap.strategy.receive_upload, []

    def keep(state, upload):  # the AP takes user2's round-1 upload and says it never came
        if state.index == 1 and ap.round == 1:
            kept.append(np.array(view_matrix(upload.masked)))
            return
        honest(state, upload)

    strategy.receive_upload = keep
    driver.admm_round()
    (upload,) = kept
    assert sorted(strategy.rebuilt) == [(1, 1)] and (1, 1) not in strategy.rebuilt_self
    peers = {i: sa.load_public(strategy.round_keys[i][1], "key") for i in (0, 2, 3)}
    own = users[1].strategy
    truth = _strip(upload, own.masking[1], 1, peers, session, 1, own.self_masks[1])
    assert np.median(np.abs(truth)) < 1e3  # user2's F_l and loss scalars: O(1)
    attack = _strip(upload, strategy.rebuilt[(1, 1)], 1, peers, session, 1)
    assert _rel(attack, truth) > 0.5
    assert np.median(np.abs(attack)) > 1e6 * np.max(np.abs(truth))  # uniform on the ring:
    assert np.mean(np.abs(attack) < sa.value_limit(4)) < 0.3  # 1/8 below the limit expected
    request = pb.UnmaskRequest(session_id=session, round=1, arrived=[0, 1, 2, 3])
    data = pb.ApMessage(unmask_request=request).SerializeToString()
    for user in (users[0], users[2], users[3]):
        reply = parse_user_message(user.handle(data))
        assert reply.WhichOneof("body") == "error"
        why = "refused: a share of user 1's self-mask key of round 1 after its masking key's"
        assert why in reply.error.message


def test_a_user_asked_for_both_shares_of_one_user_refuses_and_the_session_goes_on():
    """Round 1: after the honest unmasking request (every upload arrived), the AP asks user1
    again, now claiming user2 dropped. user1 refuses the whole request, naming why; the AP
    drops it, as any user that answers with an error, after its round-1 upload counted, and
    the session goes on for the others: the iterates equal a plain session in which user1
    dies at round 2."""
    lies: list[pb.UnmaskRequest] = []

    def lie(users, ap):
        honest = ap.strategy.extra_messages

        def extra():
            messages = honest()
            if messages or lies or ap.round != 1 or ap.expecting != "upload":
                return messages
            lies.append(pb.UnmaskRequest(session_id=ap.session_id, round=1, dropped=[1]))
            lies[0].arrived.extend([0, 2, 3])
            return {"user1": pb.ApMessage(unmask_request=lies[0]).SerializeToString()}

        ap.strategy.extra_messages = extra

    plain, plain_reports, _, _ = _run(PLAIN, dies={0: 2}, **FOUR)
    secure, secure_reports, ap, _ = _run(SECURE, after_setup=lie, **FOUR)
    assert len(lies) == 1
    secure = [  # user1's stale G_l aside (its state machine lives on, dropped by the AP)
        (*it[:4], {k: g for k, g in it[4].items() if k in p[4]})
        for it, p in zip(secure, plain, strict=True)
    ]
    _assert_same(secure, plain, users=False)
    assert [r.users for r, *_ in secure] == [4, 3, 3, 3, 3]  # user1 dropped before the step
    why = ap.users["user1"].dropped
    assert "round 1" in why and "refused: a share of user 1's masking key of round 1" in why
    assert sorted(secure_reports) == sorted(plain_reports) == ["user2", "user3", "user4"]


@pytest.mark.parametrize(
    ("dropped", "arrived", "round_", "text"),
    [
        ([0], [1, 2], 2, "listing this user's upload as missing"),
        ([1], [0, 1, 2], 2, "once each"),  # user2 as dropped and as arrived
        ([], [0, 1], 2, "once each"),  # user3 in neither list
        ([1, 2], [0], 2, "fewer arrived uploads than the threshold 2"),
        ([], [0, 1, 2], 1, "this user's last upload was round 2"),
    ],
)
def test_a_user_refuses_an_unmask_request_that_does_not_add_up(dropped, arrived, round_, text):
    config = SECURE.model_copy(update={"iterations": 3})
    _, _, ap, links = _run(config)
    request = pb.UnmaskRequest(session_id=ap.session_id, round=round_, dropped=dropped)
    request.arrived.extend(arrived)
    with pytest.raises(ProtocolError, match=text):
        links[0].user.strategy.on_unmask(request)


def test_a_user_refuses_a_setup_without_double_masking():
    ap, users, _ = _session(SECURE)
    for user in users:
        assert user.handle(ap.handshake(user.handshake_request())[1]) is None
    setup = parse_ap_message(ap.extra_messages()["user1"])
    setup.secure_setup.double_masking = False
    reply = parse_user_message(users[0].handle(setup.SerializeToString()))
    assert "the AP does not remove self masks" in reply.error.message


def test_fixed_point_refuses_values_beyond_its_limit():
    limit = sa.value_limit(4)
    assert limit == 2.0**26 / 4
    ok = np.array([limit * 0.99, -limit * 0.99, 1e-3])
    assert np.allclose(sa.decode_sum(sa.quantize(ok, 4)), ok, rtol=0, atol=2.0**-36)
    with pytest.raises(sa.QuantizationError, match="limit"):
        sa.quantize(np.array([0.0, limit]), 4)
    with pytest.raises(sa.QuantizationError, match="NaN"):
        sa.quantize(np.array([np.nan]), 4)
    # four values at the limit's edge sum without wrapping
    total = sa.ring_sum([sa.quantize(-ok, 4)] * 4)
    assert np.allclose(sa.decode_sum(total), -4 * ok, rtol=1e-12)


def test_shares_rebuild_a_key_only_from_the_threshold():
    (key,) = sa.round_keys(1)
    shares = sa.split_key(key, 3, 5)
    rebuilt = sa.combine_key(shares[1:4])
    assert sa.private_bytes(rebuilt) == sa.private_bytes(key)
    try:  # two shares of a threshold-3 secret give another key, or none
        wrong = sa.private_bytes(sa.combine_key(shares[:2]))
    except ProtocolError:
        wrong = None
    assert wrong != sa.private_bytes(key)


# ---------------------------------------------------------------------------- CLI and network
@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=200)


ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "4"]


def test_simulate_secure_gives_the_test_mse_of_plain(latents, tmp_path):
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    argv += [*ALIGN, "--protocol", "compact", "--seeds", "3", "-q"]
    out = {}
    for mode in ("plain", "secure"):
        path = tmp_path / f"{mode}.json"
        assert main([*argv, "--aggregation", mode, "--out", str(path)]) == 0
        out[mode] = json.loads(path.read_text())
    assert out["secure"]["mean_mse"] == pytest.approx(out["plain"]["mean_mse"], rel=1e-6)
    for got, want in zip(out["secure"]["users"], out["plain"]["users"], strict=True):
        assert got["mse"] == pytest.approx(want["mse"], rel=1e-6)
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        ["--strategy", "multi-link", "--protocol", "compact"],
        ["--protocol", "paper"],
        ["--strategy", "first-k", "--protocol", "compact"],
    ],
)
def test_configurations_secure_aggregation_cannot_run_exit_2(latents, extra, capsys):
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    assert main([*argv, *ALIGN, "--aggregation", "secure", *extra, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "secure" in err


SECRET = "secure-aggregation-test-secret"


def test_networked_user_killed_mid_round_the_others_finish(latents, tmp_path):
    """Real processes: user2 kills itself (SIGKILL) when round 1's broadcast arrives."""
    root, ap_enc, encoders = latents
    port = free_port()
    (tmp_path / "secret").write_text(SECRET + "\n")
    out = tmp_path / "ap.json"
    semalign = semalign_command()
    names = [f"user{i}" for i in range(1, len(encoders) + 1)]
    ap_argv = [*semalign, "ap", "--users", ",".join(names), "--listen", f"127.0.0.1:{port}"]
    ap_argv += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "-q", "--insecure"]
    ap_argv += ["--protocol", "compact", "--aggregation", "secure", "--seeds", "5"]
    ap_argv += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    ap_argv += ["--secret-file", str(tmp_path / "secret"), "--reply-timeout", "60"]
    with Processes(tmp_path / "logs") as procs:
        users = {}
        for name, encoder in zip(names, encoders, strict=True):
            argv = [*semalign, "user", "--ap", f"127.0.0.1:{port}", "--user-id", name]
            argv += ["--encoder", encoder, "--latents", str(root), "--insecure"]
            argv += ["--connect-timeout", "60"]
            env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, name))
            if name == "user2":
                env["SEMALIGN_FAILPOINTS"] = "user.round=1:exit"
            users[name] = procs.start(name, argv, env)
        ap = procs.start("ap", ap_argv, child_env(single_thread=True))
        try:
            code = ap.proc.wait(120)
        except subprocess.TimeoutExpired:
            code = None
        logs = "\n".join(f"--- {c.name}\n{c.log_path.read_text()[-2000:]}" for c in procs.children)
        user_codes = {name: child.proc.wait(60) for name, child in users.items()}
    assert code == 3, logs  # finished, with a user lost
    results = json.loads(out.read_text())
    block = results["seeds"][0]
    assert set(block["dropped"]) == {"user2"}, logs
    reported = {u["name"]: u for u in block["users"]}
    assert reported["user2"]["accuracy"] is None
    assert reported["user1"]["accuracy"] is not None and reported["user3"]["accuracy"] is not None
    assert block["aggregation"]["recoveries"] == [{"round": 1, "users": [1]}], block
    assert [r["users"] for r in block["rounds"]] == [3, 2, 2, 2]
    assert user_codes["user1"] == 0 and user_codes["user3"] == 0 and user_codes["user2"] != 0
    # the same session in one process, user2 gone at round 1's broadcast: the same figures
    want = _in_process(latents, SECURE.model_copy(update={"iterations": 4, "seed": 5}), 1)
    for name in ("user1", "user3"):
        for key in ("accuracy", "mse"):
            assert reported[name][key] == pytest.approx(getattr(want.reports[name], key), rel=1e-6)


def _in_process(latents, config: AlignmentConfig, user2_dies_at: int):
    root, ap_enc, encoders = latents
    scenario = load_scenario(root, ap_enc, encoders)
    ap, machines = build_session(scenario, config)
    links = [LoopbackLink(u) for u in machines]
    links[1] = DroppingLink(links[1], user2_dies_at)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    return SessionDriver(ap, links).run(scenario.ap_test, test_ids)


# ---------------------------------------------------------------------------- differential privacy
@pytest.fixture
def accountant():
    """The Renyi-DP accountant (Opacus, the ``dp`` extra and part of ``dev``)."""
    pytest.importorskip("opacus")


def _round0_f(config: AlignmentConfig, **kw) -> tuple[np.ndarray, AccessPoint]:
    ap, users, _ = _session(config, **kw)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    driver.admm_round()
    return ap.strategy.shared.f.copy(), ap


def test_dp_noise_in_the_decoded_sum_has_the_claimed_spread(accountant):
    """The documented mechanism: the sum the AP decodes from P uploads carries Gaussian noise
    of std z (2 C) sqrt(P / t) per real coordinate (at least z 2 C: P >= t). Measured as
    users x (round 0's F with DP - without), over two sessions of 3 users (t = 2)."""
    z, clip, users, wide = 0.05, 100.0, 3, {"d": 64}
    exact, _ = _round0_f(SECURE, **wide)
    noisy = SECURE.model_copy(update={"dp_noise_multiplier": z, "dp_clip": clip})
    draws = []
    for _ in range(2):  # the users' noise comes from fresh OS entropy each session
        f, ap = _round0_f(noisy, **wide)
        draws.append(((f - exact) * users).view(np.float64).ravel())
    noise = np.concatenate(draws)
    assert ap.strategy.threshold == 2 and noise.size >= 500
    claimed = z * 2 * clip * np.sqrt(users / 2)
    # the sample spread of N normals is within 4 of its standard errors 1 / sqrt(2 N)
    assert np.std(noise) == pytest.approx(claimed, rel=4 / np.sqrt(2 * noise.size))
    assert abs(np.mean(noise)) < 4 * claimed / np.sqrt(noise.size)
    assert np.std(noise) > z * 2 * clip  # the guarantee's floor


def _rdp_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """Independent epsilon of ``rounds`` Gaussian mechanisms (sensitivity Delta, std
    sigma = z Delta, no subsampling): RDP eps(a) = T a Delta^2 / (2 sigma^2), converted with
    eps = eps(a) + log((a - 1) / a) - (log delta + log a) / (a - 1) (Balle et al. 2020), the
    minimum over a fine grid of orders a."""
    a = np.linspace(1.0005, 256.0, 400_000)
    rdp = rounds * a / (2 * z**2)
    return float(np.min(rdp + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1)))


@pytest.mark.parametrize(("z", "rounds"), [(0.5, 30), (1.0, 30), (2.0, 30), (1.0, 5), (1.0, 100)])
def test_dp_epsilon_is_the_gaussian_mechanisms_rdp_curve(accountant, z, rounds):
    """dp.epsilon against the RDP curve computed here: never below the fine-grid minimum,
    within 1% above it (the accountant's coarser grid); a doubled z, a wrong sensitivity or
    a miscounted T moves it far outside."""
    want = _rdp_gaussian_epsilon(z, rounds, 1e-5)
    got = dp.epsilon(z, rounds, 1e-5)
    assert want * (1 - 1e-9) <= got <= want * 1.01
    classic = min(rounds * a / (2 * z**2) + np.log(1e5) / (a - 1) for a in range(2, 256))
    assert got < classic  # the tighter conversion


def test_dp_epsilon_of_a_session_is_reported(accountant):
    _, ap = _round0_f(SECURE.model_copy(update={"dp_noise_multiplier": 1.0, "dp_clip": 1.0}))
    info = ap.result_info()["differential_privacy"]
    want = _rdp_gaussian_epsilon(1.0, SECURE.iterations, 1e-5)
    assert want * (1 - 1e-9) <= info["epsilon"] <= want * 1.01
    assert info["delta"] == 1e-5 and info["rounds"] == SECURE.iterations


def test_dp_clips_every_contribution(accountant):
    clip = 1e-3
    f, _ = _round0_f(SECURE.model_copy(update={"dp_noise_multiplier": 1e-9, "dp_clip": clip}))
    exact, _ = _round0_f(SECURE)
    assert np.linalg.norm(f) <= clip * (1 + 1e-6) < np.linalg.norm(exact)


def test_dp_without_secure_aggregation_exits_2(latents, capsys):
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    argv += [*ALIGN, "--protocol", "compact", "--dp-noise-multiplier", "1", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "aggregation secure" in err


def test_the_secure_variant_is_registered_by_aggregation():
    """One place per side: each half of ``fed``'s secure variant is registered under
    ``aggregation="secure"``, found from the config (AP) or the accept (user); a secure variant
    of a strategy without the capability is refused; a plain AP strategy has no extra
    exchanges."""
    from semalign.client.strategies import SECURE_USER_STRATEGIES, USER_STRATEGIES
    from semalign.client.strategies.registry import register_user_strategy
    from semalign.client.strategies.secure_admm import SecureAdmmUser
    from semalign.common.strategies import StrategyError
    from semalign.server.strategies import AP_STRATEGIES, SECURE_AP_STRATEGIES
    from semalign.server.strategies.registry import register_ap_strategy
    from semalign.server.strategies.secure_admm import SecureSharedAdmm

    assert SECURE_AP_STRATEGIES.names() == SECURE_USER_STRATEGIES.names() == ("fed",)
    assert SECURE_AP_STRATEGIES.get("fed") is SecureSharedAdmm
    assert SECURE_USER_STRATEGIES.get("fed") is SecureAdmmUser
    assert AP_STRATEGIES.get("fed") is not SecureSharedAdmm
    assert USER_STRATEGIES.get("fed") is not SecureAdmmUser
    with pytest.raises(StrategyError, match="no secure_aggregation capability"):
        register_ap_strategy("multi-link", aggregation="secure")(SecureSharedAdmm)
    with pytest.raises(StrategyError, match="no secure_aggregation capability"):
        register_user_strategy("first-k", aggregation="secure")(SecureAdmmUser)
    ap, users, _ = _session(SECURE)
    assert type(ap.strategy) is SecureSharedAdmm
    plain, plain_users, _ = _session(PLAIN)
    assert type(plain.strategy) is AP_STRATEGIES.get("fed")
    assert plain.extra_messages() == {} and plain.strategy.loss_totals() is None
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    assert all(type(u.strategy) is SecureAdmmUser for u in users)
    setup = pb.ApMessage(secure_setup=pb.SecureSetup(session_id=plain.session_id))
    SessionDriver(plain, [LoopbackLink(u) for u in plain_users]).handshake()
    reply = parse_user_message(plain_users[0].handle(setup.SerializeToString()))
    assert "unexpected message secure_setup" in reply.error.message
