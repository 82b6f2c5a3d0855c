"""``semalign audit``'s engine: a session whose AP side of the wire is recorded, then attacked.

An honest-but-curious AP runs the protocol as it should and keeps everything it receives.
:func:`audit_seed` runs one in-process session (the same state machines and serialized
messages as ``simulate``) with a tap on every link (:class:`ApRecorder`), then decodes the
recorded bytes as the AP decodes them and mounts the attacks of
:mod:`semalign.common.privacy_audit` on each user's uploads. The users' memory is read only for
the truth an attack is scored against (Y_l, native pilots, the user's own classifier).

Generic over what the AP receives (:mod:`semalign.engine.ap_record` decodes it). A protocol
that sends masked contributions (secure aggregation: a uint64 vector per round, uniform
in Z / 2^64 whatever the user's data) leaves no per-user term; the per-round sum over users
(``aggregate_r2``: of the masked vectors, decoded as the AP decodes them, or of the plain terms)
shows what the AP learns from what the masks leave.
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
from semalign.engine.ap_record import ApRecorder, Uploads, decode_uploads, sent_pre_equalizers
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import Scenario, build_session
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

log = logging.getLogger(__name__)


@dataclass
class UserLeakage:
    """What the AP's uploads of one user give an attacker (one protocol, target, seed).

    R^2 figures are of the user's whitened pilots Y (``m`` rows, ``n`` pilots), each after the
    ambiguity no attacker can resolve is removed on the truth: ``linear_r2`` the best linear
    map of the uploads (fitted on the truth), ``procrustes_r2`` the AP's own whitened-subspace
    estimate, ``known_map_r2`` the channel-aware AP's estimate from compact uploads (``None``
    elsewhere), ``reconstruction_r2`` the best of these; ``*_by_round[t]`` use rounds 0..t.
    ``rank`` is the dimension of the leaked row space (at most m).
    Probes predict the user's own classifier's labels on its pilots (test rows: the last 30%)
    from: the attacker's reconstruction (``probe_accuracy``), the true Y
    (``probe_truth_accuracy``), the AP's own pilots X (``probe_ap_accuracy``); the majority
    label's share is ``probe_majority``. CKA is with the user's native pilot latents (its
    target-space pilots for ``target`` logits). ``aggregate_r2`` (and per round): the bound
    from the per-round sums over users (:func:`aggregate_rounds`); ``masked_fields``: uploads
    that were masked.
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
    linear_r2: float
    procrustes_r2: float
    known_map_r2: float | None
    probe_estimate: str
    chance_r2: float
    own_r2: float
    aggregate_r2: float | None
    aggregate_r2_by_round: list[float]
    r2_by_round: list[float]
    linear_r2_by_round: list[float]
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
    aggregate: list[np.ndarray] | None,
    memo: dict[str, dict[str, float]] | None = None,
    known_estimates: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The attacks' figures for one user (the :class:`UserLeakage` fields they set).

    ``reconstruction_r2`` (and ``r2_by_round``) is the best of the linear bound and the
    known-map attack (``known_estimates``: :func:`known_map_estimates`, compact rounds with
    CSI); the probe and CKA use the known-map estimate where there is one. ``memo`` keeps
    :func:`control_figures` between calls."""
    y, n = truth.y, truth.y.shape[1]
    variance = ap.representation.whitened_variance
    stack = np.vstack(uploads.rounds) if uploads.rounds else np.zeros((0, n), complex)
    basis = pa.leaked_basis(stack, y.shape[0])
    estimate = pa.whitened_estimate(basis, n, variance)
    by_round = pa.r2_by_rounds(y, uploads.rounds)
    known = [pa.r2(y, pa.procrustes_align(e, y)) for e in known_estimates or []]
    best = [max([r, *known[t : t + 1]]) for t, (_, r) in enumerate(by_round)]
    guess = pa.real_samples(known_estimates[-1] if known else estimate)
    agg = pa.r2_by_rounds(y, aggregate) if aggregate else []
    return {
        "m": y.shape[0],
        "n": n,
        "c": ap.cdim,
        "upload_rows": int(stack.shape[0]),
        "fields": list(uploads.fields),
        "masked_fields": list(uploads.masked_fields),
        "rank": int(basis.shape[0]),
        "reconstruction_r2": best[-1] if best else pa.subspace_r2(y, basis),
        "linear_r2": pa.subspace_r2(y, basis),
        "procrustes_r2": pa.r2(y, pa.procrustes_align(estimate, y)),
        "known_map_r2": known[-1] if known else None,
        "probe_estimate": "known-map" if known else "whitened-subspace",
        "chance_r2": pa.chance_r2(basis.shape[0], n),
        "aggregate_r2": agg[-1][1] if agg else None,
        "aggregate_r2_by_round": [r for _, r in agg],
        "r2_by_round": best,
        "linear_r2_by_round": [r for _, r in by_round],
        "known_map_r2_by_round": known,
        "rank_by_round": [k for k, _ in by_round],
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


def aggregate_rounds(uploads: list[Uploads], ap: AccessPoint) -> list[np.ndarray] | None:
    """What the per-round sums over users show, in the pilot domain: one (rows, n) block per
    round; ``None`` when the users' uploads differ in shape or count (no sum is formed).

    Masked vectors (secure aggregation) are summed modulo 2^64, where the masks cancel, and
    decoded as the AP decodes them: the sum of the users' F_l (K N_T, c), in the feature
    domain. Otherwise the users' pilot-domain terms are summed.
    """
    if uploads and all(u.masked for u in uploads):
        sizes = {tuple(len(v) for v in u.masked) for u in uploads}
        if len(sizes) != 1:
            return None
        from semalign.common import secure_aggregation as sa  # only for masked sessions

        real, shape = ap.representation.widely_linear, (ap.symbols, ap.cdim)
        terms = len(uploads[0].masked[0]) - sa.contribution_size(shape, 0, real=real)
        gram = ap.x @ ap.x.conj().T
        sums = []
        for vectors in zip(*(u.masked for u in uploads), strict=True):
            total = sa.decode_sum(sa.ring_sum(list(vectors)))
            f_sum, _ = sa.unpack_contribution(total, shape, terms, real=real)
            sums.append(pa.pilot_domain(f_sum, ap.x, gram))
        return sums
    shapes = {tuple(r.shape for r in u.rounds) for u in uploads}
    if len(shapes) != 1 or not uploads or not uploads[0].rounds:
        return None
    return [sum(rounds) for rounds in zip(*(u.rounds for u in uploads), strict=True)]


def audit_seed(
    scenario: Scenario, config: AlignmentConfig, memo: dict | None = None
) -> list[UserLeakage]:
    """Run one recorded in-process session for ``config`` and attack every user's uploads
    (``memo``: control figures kept between sessions, :func:`attack_user`)."""
    if config.user_groups > 1:
        raise UsageError("audit: --user-groups > 1 runs several sessions; audit one at a time")
    ap, users = build_session(scenario, config)
    recorder = ApRecorder()
    driver = SessionDriver(ap, [LoopbackLink(u, tap=recorder) for u in users])
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = driver.run(scenario.ap_test, test_ids)
    uploads = {u.user_id: decode_uploads(recorder.messages[u.user_id], ap) for u in users}
    for user_id, up in uploads.items():
        if up.ignored:
            log.warning("%s: ignored fields %s (neither (., n) nor (., c))", user_id, up.ignored)
    aggregate = aggregate_rounds(list(uploads.values()), ap)
    out = []
    for user in users:
        truth = user_truth(user, ap)
        mine, sent = uploads[user.user_id], recorder.sent[user.user_id]
        with single_thread():  # matrices of a few hundred rows (common/threads.py)
            known = known_map_estimates(mine, sent, user.user_id, ap, truth.y.shape[0])
            figures = attack_user(truth, mine, ap, aggregate, memo, known)
        report = result.reports.get(user.user_id, {})
        out.append(
            UserLeakage(
                user=user.user_id,
                encoder=user.encoder,
                protocol=config.protocol,
                aggregation=config.aggregation,
                target=config.target,
                seed=config.seed,
                aligned_accuracy=report.get("accuracy"),
                **figures,
            )
        )
    return out


#: :class:`UserLeakage` figures averaged by :func:`summarize`
MEAN_FIELDS = (
    "rank",
    "reconstruction_r2",
    "linear_r2",
    "procrustes_r2",
    "known_map_r2",
    "chance_r2",
    "own_r2",
    "aggregate_r2",
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
    """Means over seeds (``by_user``) or over seeds and users, per protocol, aggregation and
    target, in
    first-seen order: :data:`MEAN_FIELDS` (NaN-aware), ``m`` (the largest), ``r2_by_round``
    (per round, over the records that have that round) and ``users`` (records averaged)."""
    groups: dict[tuple, list[UserLeakage]] = defaultdict(list)
    for r in records:
        key = (r.protocol, r.aggregation, r.target) + ((r.user, r.encoder) if by_user else ())
        groups[key].append(r)
    out = []
    for key, group in groups.items():
        row: dict[str, Any] = {"protocol": key[0], "aggregation": key[1], "target": key[2]}
        if by_user:
            row |= {"user": key[3], "encoder": key[4]}
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
