"""``semalign audit``'s engine: a session whose AP side of the wire is recorded, then attacked.

An honest-but-curious AP runs the protocol as it should and keeps everything it receives.
:func:`audit_seed` runs one in-process session (the same state machines and serialized
messages as ``simulate``) with a tap on every link (:class:`ApRecorder`), then decodes the
recorded bytes as the AP decodes them and mounts the attacks of
:mod:`semalign.common.privacy_audit` on each user's uploads. The users' memory is read only for
the truth an attack is scored against (Y_l, native pilots, the user's own classifier).

Generic over what the AP receives (:mod:`semalign.engine.ap_record` decodes it). Secure
aggregation sends masked contributions (a uint64 vector per round, uniform in Z / 2^64
whatever the user's data) under double masking: pair masks and a self mask PRG(b_u^r)
(:mod:`semalign.common.secure_aggregation`). After each round the AP gets shares of the
self-mask keys of the users whose upload arrived and of the masking keys of those that did
not, never both kinds for one user and round. The audit decodes the recorded masking-key
shares into the keys they rebuild (:func:`~semalign.engine.ap_record.rebuilt_keys`, checked
against the registered public keys), tries every rebuilt key of a user on every recorded
upload of that user, pair masks removed (:func:`opened_contributions`), and attacks what
opens (the user's F_l, a feature-domain term). It does not remove self masks: an upload that
arrived keeps its self mask, so for an honest AP nothing opens (a key rebuilt after a drop at
round r belongs to round r, whose upload never came); the self-mask shares only take the self
masks off the round's sum. ``drop_round`` makes a user drop at that round's broadcast
(:class:`~semalign.engine.loopback.DroppingLink`), so that the AP has shares to rebuild from.

What the sum over users shows is not reported per user: the decoded sum of the F_l is
(K N_T, c), and any (., c) matrix maps into X's row space (F B^-1 X), so its R^2 of Y is at
most ``own_r2`` whatever the users' data: it would measure the AP's pilots, not the users.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from semalign.common import privacy_audit as pa
from semalign.common.config import AlignmentConfig
from semalign.common.errors import UsageError
from semalign.common.stats import nan_mean
from semalign.common.threads import single_thread
from semalign.engine import ap_record
from semalign.engine.ap_record import ApRecorder, Uploads, decode_uploads, sent_pre_equalizers
from semalign.engine.loopback import DroppingLink, LoopbackLink
from semalign.engine.scenario import Scenario, build_session
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

log = logging.getLogger(__name__)


@dataclass
class UserLeakage:
    """What the AP's uploads of one user give an attacker (one protocol, target, seed).

    R^2 figures are of the user's whitened pilots Y (``m`` rows, ``n`` pilots), each after the
    ambiguity no attacker can resolve is removed on the truth. Attacks (what the AP computes
    itself): ``procrustes_r2`` the whitened-subspace estimate, ``known_map_r2`` the
    channel-aware estimate from compact uploads (``None`` elsewhere); ``attack_r2`` the best
    of them, a lower bound on leakage, and ``reconstruction_r2`` the same figure (the name
    the results keep). ``subspace_r2``: the best row combination of the uploads, fitted on the
    truth (an oracle); ``own_r2``: what X's row space explains, the ceiling of feature-domain
    uploads. ``*_by_round[t]`` use rounds 0..t (``r2_by_round``: ``attack_r2``). ``rank``: the
    dimension of the uploads' numerical row space.
    Secure aggregation: ``rebuilt_rounds`` the rounds whose masking key of this user the AP
    rebuilt, ``opened_rounds`` the rounds whose recorded upload a rebuilt key opened (their
    F_l join the attacked uploads); ``drop_round`` the session's drop (``None``: none) and
    ``dropped`` whether this user is the one dropped.
    Probes predict the user's own classifier's labels on its pilots (test rows: the last 30%)
    from: the attacker's reconstruction (``probe_accuracy``), the true Y
    (``probe_truth_accuracy``), the AP's own pilots X (``probe_ap_accuracy``); the majority
    label's share is ``probe_majority``. CKA is with the user's native pilot latents (its
    target-space pilots for ``target`` logits). ``masked_fields``: uploads that were masked.
    """

    user: str
    encoder: str
    protocol: str
    aggregation: str
    target: str
    seed: int
    m: int
    n: int
    c: int
    upload_rows: int
    fields: list[str]
    masked_fields: list[str]
    rank: int
    reconstruction_r2: float
    attack_r2: float
    subspace_r2: float
    procrustes_r2: float
    known_map_r2: float | None
    probe_estimate: str
    chance_r2: float
    own_r2: float
    r2_by_round: list[float]
    subspace_r2_by_round: list[float]
    known_map_r2_by_round: list[float]
    rank_by_round: list[int]
    probe_accuracy: float
    probe_truth_accuracy: float
    probe_ap_accuracy: float
    probe_majority: float
    cka: float
    cka_truth: float
    cka_ap: float
    aligned_accuracy: float | None
    rebuilt_rounds: list[int]
    opened_rounds: list[int]
    drop_round: int | None
    dropped: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UserTruth:
    """What an attack is scored against: Y (m, n), the native pilots (n, d) in the AP's pilot
    order, and the user's own classifier's labels (n,) on them."""

    y: np.ndarray
    native: np.ndarray
    labels: np.ndarray


def user_truth(user: Any, ap: AccessPoint) -> UserTruth:
    """The truth of a finished session's ``user`` (its memory: scoring only)."""
    position = {int(i): k for k, i in enumerate(user.data.pilot_ids)}
    rows = [position[int(i)] for i in ap.pilot_ids]
    native = np.asarray(user.data.pilot_latents, dtype=np.float64)[rows]
    return UserTruth(y=user.y, native=native, labels=user.data.classifier.predict(native))


def control_figures(truth: UserTruth, ap: AccessPoint) -> dict[str, float]:
    """What needs no upload: ``own_r2``, the bound from the AP's own pilots (Y Pi_X: X's row
    space with a map fitted on the truth, the most any feature-domain upload can show), probes
    and CKA on the true Y and on X, and the majority label's share of the probes' test rows."""
    n = truth.y.shape[1]
    own = pa.real_samples(ap.x)
    return {
        "own_r2": pa.subspace_r2(truth.y, pa.leaked_basis(ap.x, ap.x.shape[0])),
        "probe_truth_accuracy": pa.probe_accuracy(pa.real_samples(truth.y), truth.labels),
        "probe_ap_accuracy": pa.probe_accuracy(own, truth.labels),
        "probe_majority": pa.majority_share(truth.labels[pa.split_rows(n)[1]]),
        "cka_truth": pa.linear_cka(pa.real_samples(truth.y), truth.native),
        "cka_ap": pa.linear_cka(own, truth.native),
    }


def _controls(truth: UserTruth, ap: AccessPoint, memo: dict[str, dict[str, float]]) -> dict:
    """:func:`control_figures`, computed once per content of Y, X, labels and native pilots
    (protocols and seeds that share them reuse the figures)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (truth.y, ap.x, truth.labels, truth.native):
        digest.update(np.ascontiguousarray(array).view(np.uint8))
    key = digest.hexdigest()
    if key not in memo:
        memo[key] = control_figures(truth, ap)
    return memo[key]


def attack_user(
    truth: UserTruth,
    uploads: Uploads,
    ap: AccessPoint,
    memo: dict[str, dict[str, float]] | None = None,
    known_estimates: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The attacks' figures for one user (the :class:`UserLeakage` fields they set).

    ``attack_r2`` (= ``reconstruction_r2``; per round ``r2_by_round``) is the best of the
    whitened-subspace attack and the known-map attack (``known_estimates``:
    :func:`known_map_estimates`, compact rounds with CSI); the probe and CKA use the known-map
    estimate where there is one. ``subspace_r2`` is the row-combination oracle. ``memo``
    keeps :func:`control_figures` between calls."""
    y, n = truth.y, truth.y.shape[1]
    variance = ap.representation.whitened_variance
    stack = np.vstack(uploads.rounds) if uploads.rounds else np.zeros((0, n), complex)
    oracle = pa.r2_by_rounds(y, uploads.rounds)
    subspace = pa.whitened_attack_by_rounds(y, uploads.rounds, variance)
    known = [pa.r2(y, pa.procrustes_align(e, y)) for e in known_estimates or []]
    best = [max([r, *known[t : t + 1]]) for t, r in enumerate(subspace)]
    estimate = pa.whitened_estimate(pa.leaked_basis(stack, y.shape[0]), n, variance)
    guess = pa.real_samples(known_estimates[-1] if known else estimate)
    basis = pa.leaked_basis(stack)
    attack = best[-1] if best else 0.0
    return {
        "m": y.shape[0],
        "n": n,
        "c": ap.cdim,
        "upload_rows": int(stack.shape[0]),
        "fields": list(uploads.fields),
        "masked_fields": list(uploads.masked_fields),
        "rank": int(basis.shape[0]),
        "reconstruction_r2": attack,
        "attack_r2": attack,
        "subspace_r2": pa.subspace_r2(y, basis),
        "procrustes_r2": subspace[-1] if subspace else 0.0,
        "known_map_r2": known[-1] if known else None,
        "probe_estimate": "known-map" if known else "whitened-subspace",
        "chance_r2": pa.chance_r2(basis.shape[0], n),
        "r2_by_round": best,
        "subspace_r2_by_round": [r for _, r in oracle],
        "known_map_r2_by_round": known,
        "rank_by_round": [k for k, _ in oracle],
        "probe_accuracy": pa.probe_accuracy(guess, truth.labels),
        "cka": pa.linear_cka(guess, truth.native),
        **_controls(truth, ap, {} if memo is None else memo),
    }


def known_map_estimates(
    uploads: Uploads, sent: list[bytes], user_id: str, ap: AccessPoint, rows: int
) -> list[np.ndarray] | None:
    """The channel-aware AP's own estimates of Y Pi_X (at most ``rows`` rows, n) from compact
    uploads, after each prefix of rounds: it computes each round's J_t from the F_t it sent and
    the CSI and SNR of the handshake (:func:`~semalign.common.privacy_audit.equalizer_map`),
    solves for W = R^H R by least squares and forms R B^-1 X up to a semi-unitary. ``None``
    without CSI or without feature-domain uploads, or when uploads and broadcasts do not pair
    up."""
    from semalign.common.channels import noise_variance

    state, config, rep = ap.users[user_id], ap.config, ap.representation
    pre_equalizers = sent_pre_equalizers(sent)
    if state.hbar is None or not uploads.features or len(pre_equalizers) != len(uploads.features):
        return None
    gram = ap.x @ ap.x.conj().T
    h = rep.channel_matrix(np.kron(np.eye(ap.data_channel_uses), state.hbar))
    sigma2 = rep.noise_var(noise_variance(state.snr_db, config.power, config.channel_uses))
    maps = [
        pa.equalizer_map(rep.apply_block_channel(state.hbar, f), h, gram, ap.n, sigma2)
        for f in pre_equalizers
    ]
    return [
        pa.regression_estimate(
            pa.cross_gram_estimate(maps[:t], uploads.features[:t]), ap.x, gram, rows
        )
        for t in range(1, len(maps) + 1)
    ]


def opened_contributions(
    uploads: Uploads, index: int, record: ap_record.SecureRecord | None, keys: dict, ap
) -> tuple[list[int], dict[int, np.ndarray]]:
    """(rounds whose masking key of user ``index`` was rebuilt, round -> the F_l (K N_T, c)
    of each recorded upload of that user that one of those keys opens): every rebuilt key of
    the user is tried on every one of its uploads (:func:`~semalign.engine.ap_record.
    open_upload`). ``keys``: :func:`~semalign.engine.ap_record.rebuilt_keys`."""
    from semalign.common import secure_aggregation as sa  # only for masked sessions

    mine = {r: key for (owner, r), key in keys.items() if owner == index}
    opened: dict[int, np.ndarray] = {}
    if record is None or not mine:
        return sorted(mine), opened
    real, shape = ap.representation.widely_linear, (ap.symbols, ap.cdim)
    for vector, round_ in zip(uploads.masked, uploads.masked_rounds, strict=True):
        for key in mine.values():
            values = ap_record.open_upload(vector, index, round_, key, record)
            if values is not None:
                terms = len(values) - sa.contribution_size(shape, 0, real=real)
                opened[round_] = sa.unpack_contribution(values, shape, terms, real=real)[0]
                break
    return sorted(mine), opened


def with_opened(uploads: Uploads, opened: dict[int, np.ndarray], ap: AccessPoint) -> Uploads:
    """``uploads`` with each opened F_l (K N_T, c) in the pilot domain (F_l B^-1 X) as the
    term of the round it was sent for (a masked round has none otherwise)."""
    if not opened:
        return uploads
    gram = ap.x @ ap.x.conj().T
    rounds = list(uploads.rounds)
    for position, round_ in enumerate(uploads.masked_rounds):
        if round_ in opened and position < len(rounds):
            term = pa.pilot_domain(opened[round_].astype(np.complex128), ap.x, gram)
            rounds[position] = np.vstack([rounds[position], term])
    fields = [*uploads.fields, "secure_upload.masked (opened)"]
    return Uploads(**{**vars(uploads), "rounds": rounds, "fields": fields})


def record_session(
    scenario: Scenario, config: AlignmentConfig, drop_round: int | None = None
) -> tuple[AccessPoint, list, ApRecorder, Any]:
    """Run one in-process session with the AP's side of every link recorded: (AP, users,
    recorder, the session's result). With ``drop_round`` the last user drops when that
    round's broadcast reaches it (:class:`~semalign.engine.loopback.DroppingLink`)."""
    if config.user_groups > 1:
        raise UsageError("audit: --user-groups > 1 runs several sessions; audit one at a time")
    ap, users = build_session(scenario, config)
    recorder = ApRecorder()
    links: list = [LoopbackLink(u, tap=recorder) for u in users]
    if drop_round is not None:
        links[-1] = DroppingLink(links[-1], drop_round)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = SessionDriver(ap, links).run(scenario.ap_test, test_ids)
    return ap, users, recorder, result


def audit_seed(
    scenario: Scenario,
    config: AlignmentConfig,
    memo: dict | None = None,
    drop_round: int | None = None,
) -> list[UserLeakage]:
    """Run one recorded in-process session for ``config`` and attack every user's uploads
    (``memo``: control figures kept between sessions, :func:`attack_user`). With
    ``drop_round`` the last user drops when that round's broadcast reaches it."""
    ap, users, recorder, result = record_session(scenario, config, drop_round)
    uploads = {u.user_id: decode_uploads(recorder.messages[u.user_id], ap) for u in users}
    for user_id, up in uploads.items():
        if up.ignored:
            log.warning("%s: ignored fields %s (neither (., n) nor (., c))", user_id, up.ignored)
    record = ap_record.secure_record(recorder, ap)
    keys = ap_record.rebuilt_keys(record) if record is not None else {}
    out = []
    for user in users:
        truth = user_truth(user, ap)
        mine, sent = uploads[user.user_id], recorder.sent[user.user_id]
        index = ap.users[user.user_id].index
        rebuilt, opened = opened_contributions(mine, index, record, keys, ap)
        mine = with_opened(mine, opened, ap)
        with single_thread():  # matrices of a few hundred rows (common/threads.py)
            known = known_map_estimates(mine, sent, user.user_id, ap, truth.y.shape[0])
            figures = attack_user(truth, mine, ap, memo, known)
        report = result.reports.get(user.user_id)
        out.append(
            UserLeakage(
                user=user.user_id,
                encoder=user.encoder,
                protocol=config.protocol,
                aggregation=config.aggregation,
                target=config.target,
                seed=config.seed,
                aligned_accuracy=report.accuracy if report is not None else None,
                rebuilt_rounds=rebuilt,
                opened_rounds=sorted(opened),
                drop_round=drop_round,
                dropped=drop_round is not None and user is users[-1],
                **figures,
            )
        )
    return out


#: :class:`UserLeakage` figures averaged by :func:`summarize`
MEAN_FIELDS = (
    "rank",
    "reconstruction_r2",
    "attack_r2",
    "subspace_r2",
    "procrustes_r2",
    "known_map_r2",
    "chance_r2",
    "own_r2",
    "probe_accuracy",
    "probe_truth_accuracy",
    "probe_ap_accuracy",
    "probe_majority",
    "cka",
    "cka_truth",
    "cka_ap",
    "aligned_accuracy",
)


def summarize(records: list[UserLeakage], *, by_user: bool) -> list[dict[str, Any]]:
    """Means over seeds (``by_user``) or over seeds and users, per protocol, aggregation,
    drop round and target, in first-seen order: :data:`MEAN_FIELDS` (NaN-aware), ``m`` (the
    largest), ``r2_by_round`` (per round, over the records that have that round) and
    ``records`` (records averaged)."""
    groups: dict[tuple, list[UserLeakage]] = defaultdict(list)
    for r in records:
        key = (r.protocol, r.aggregation, r.target, r.drop_round)
        groups[key + ((r.user, r.encoder) if by_user else ())].append(r)
    out = []
    for key, group in groups.items():
        row: dict[str, Any] = {"protocol": key[0], "aggregation": key[1], "target": key[2]}
        row["drop_round"] = key[3]
        if by_user:
            row |= {"user": key[4], "encoder": key[5]}
        row["m"] = max(r.m for r in group)
        row |= {name: nan_mean(getattr(r, name) for r in group) for name in MEAN_FIELDS}
        rounds = max((len(r.r2_by_round) for r in group), default=0)
        row["r2_by_round"] = [
            nan_mean(r.r2_by_round[t] for r in group if t < len(r.r2_by_round))
            for t in range(rounds)
        ]
        row["records"] = len(group)
        out.append(row)
    return out
