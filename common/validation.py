"""Bounds and checks of the protocol messages, shared by the AP, the users and the service.

Every check raises :class:`~semalign.common.errors.ProtocolError` with one line naming what is
wrong; the session drops the sender of such a message (the AP) or answers with an error (a user).
What each side checks, and where:

* the AP's gRPC service, before a stream joins a session: the HandshakeRequest alone against
  the session's configuration (:func:`check_handshake`), and its user id against the
  authenticated one;
* the AP state machine (``server/access_point.py`` and its strategies): the same handshake
  checks plus those that need the session (pilots held, duplicates), the kind of every reply
  against the phase, round and session ids, matrix shapes, dtypes, finite values
  (:func:`check_terms`, :func:`check_bounded`), evaluation reports (:func:`check_report`);
* the user (``client/user.py``): the HandshakeAccept (:func:`check_accept`), then the kind,
  session id, round, shapes, dtypes and finite values of every AP message.

The bounds come from :class:`~semalign.common.config.AlignmentConfig` where it has them
(N_R, N_T, K, SNR), otherwise from the constants below.
"""

from __future__ import annotations

import math

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.credentials import USER_ID_PATTERN
from semalign.common.errors import ProtocolError
from semalign.common.packing import complex_dim
from semalign.common.wire import PROTOCOL_VERSION, check_matrix
from semalign.proto import semalign_pb2 as pb


def _bounds(name: str) -> tuple[float, float]:
    """(ge, le) of an AlignmentConfig field: one source for the bounds of config and wire."""
    meta = AlignmentConfig.model_fields[name].metadata
    low = next(m.ge for m in meta if getattr(m, "ge", None) is not None)
    high = next(m.le for m in meta if getattr(m, "le", None) is not None)
    return low, high


#: N_R (and N_T): at most what AlignmentConfig allows.
MAX_ANTENNAS = int(_bounds("antennas_rx")[1])
#: K: at most what AlignmentConfig allows.
MAX_CHANNEL_USES = int(_bounds("channel_uses")[1])
#: SNR in dB a user may declare.
SNR_DB_RANGE = _bounds("snr_db")
#: T: ADMM rounds.
MAX_ITERATIONS = int(_bounds("iterations")[1])
#: Largest real latent dimension (a user's m_l, the AP's d).
MAX_LATENT_DIM = 65_536
#: Most pilot ids a handshake may list, and the largest id (data point index).
MAX_PILOT_IDS = 1 << 24
MAX_DATA_ID = 1 << 40
#: Longest encoder name (informational) and session id.
MAX_NAME_CHARS = 128
#: Largest magnitude of an uploaded statistic or loss term. Honest values are many orders of
#: magnitude smaller; the bound keeps every product of the F-step far from overflow, so one
#: user's finite upload cannot make the shared F infinite.
MAX_ABS = 1e15
#: Ack/upload loss terms and report MSEs: finite, >= 0, at most this.
MAX_TERM = 1e30


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one printable line of at most ``limit`` characters (for logs and statuses:
    a peer's strings never inject lines or control characters)."""
    flat = " ".join(str(text).split())
    clean = "".join(c if c.isprintable() else "?" for c in flat)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def check_name(value: str, what: str, limit: int = MAX_NAME_CHARS) -> str:
    if len(value) > limit or not value.isprintable():
        raise ProtocolError(f"{what} is not a printable name of at most {limit} characters")
    return value


def check_number(value: float, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite float within [low, high]."""
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolError(f"{what} = {value!r} is not a finite number in [{low:g}, {high:g}]")
    return float(value)


def check_terms(squared_error: float, noise_term: float, what: str) -> tuple[float, float]:
    """Loss terms of an upload or Ack: finite, >= 0."""
    return (
        check_number(squared_error, f"{what}: squared_error", 0.0, MAX_TERM),
        check_number(noise_term, f"{what}: noise_term", 0.0, MAX_TERM),
    )


def check_bounded(array: np.ndarray, what: str, limit: float = MAX_ABS) -> np.ndarray:
    """``array`` (already known finite) with every |entry| <= ``limit``."""
    if array.size and float(np.max(np.abs(array))) > limit:
        raise ProtocolError(f"{what} has entries larger than {limit:g} in magnitude")
    return array


def check_ids(ids, what: str, *, unique: bool = True, limit: int = MAX_DATA_ID) -> np.ndarray:
    """Data point ids: int64 array, each in [0, limit), optionally unique."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= limit):
        raise ProtocolError(f"{what} out of range [0, {limit})")
    if unique and len(np.unique(arr)) != len(arr):
        raise ProtocolError(f"{what} contain duplicates")
    return arr


def check_indices(message: pb.Matrix, shape: tuple[int, int], ap_latent_dim: int) -> np.ndarray:
    """Baseline feature positions (int64) in the AP's native latent: integers of ``shape``, each
    in [0, d)."""
    indices = check_matrix(
        message, "feature indices", shape, (pb.UINT16, pb.INT32, pb.INT64), finite=False
    ).astype(np.int64)
    limit = ap_latent_dim
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= limit):
        raise ProtocolError(f"feature indices out of range [0, {limit})")
    return indices


def check_handshake(req: pb.HandshakeRequest, config: AlignmentConfig) -> np.ndarray | None:
    """What a HandshakeRequest must satisfy for any session of ``config``; returns the user's
    Hbar (N_R, N_T) as complex128 if the AP is channel-aware, else ``None``.

    Session-specific checks (the AP's pilots held, a duplicate id) are the AP's.
    """
    if req.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"user speaks protocol {req.protocol_version}, AP speaks {PROTOCOL_VERSION}"
        )
    if not USER_ID_PATTERN.match(req.user_id):
        raise ProtocolError(f"malformed user id {one_line(req.user_id, 80)!r}")
    check_name(req.encoder, "encoder")
    if not 1 <= req.latent_dim <= MAX_LATENT_DIM:
        raise ProtocolError(f"latent_dim {req.latent_dim} not in [1, {MAX_LATENT_DIM}]")
    if not 1 <= req.antennas_rx <= MAX_ANTENNAS:
        raise ProtocolError(f"antennas_rx {req.antennas_rx} not in [1, {MAX_ANTENNAS}]")
    check_number(req.snr_db, "snr_db", *SNR_DB_RANGE)
    if len(req.pilot_ids) > MAX_PILOT_IDS:
        raise ProtocolError(f"{len(req.pilot_ids)} pilot ids (at most {MAX_PILOT_IDS})")
    check_ids(req.pilot_ids, "pilot ids")
    if not config.csi:
        if req.HasField("csi"):
            raise ProtocolError("CSI sent to an AP that is not channel-aware")
        return None
    if not req.HasField("csi"):
        raise ProtocolError(f"channel-aware AP needs CSI from user {req.user_id!r}")
    hbar = check_matrix(req.csi, "CSI", (req.antennas_rx, config.antennas_tx))
    return check_bounded(hbar, "CSI").astype(np.complex128)


def check_report(
    report: pb.EvaluationReport, session_id: str, samples: int, user_id: str
) -> pb.EvaluationReport:
    """An EvaluationReport for this session's ``samples`` test points, values in range."""
    what = f"report from {user_id}"
    if report.session_id != session_id:
        raise ProtocolError(f"{what} is for session {one_line(report.session_id, 40)!r}")
    if report.samples != samples:
        raise ProtocolError(f"{what} covers {report.samples} samples, {samples} were sent")
    check_number(report.accuracy, f"{what}: accuracy", 0.0, 1.0)
    check_number(report.native_accuracy, f"{what}: native_accuracy", 0.0, 1.0)
    check_number(report.mse, f"{what}: mse", 0.0, MAX_TERM)
    check_number(report.mse_whitened, f"{what}: mse_whitened", 0.0, MAX_TERM)
    return report


def check_accept(acc: pb.HandshakeAccept, antennas_tx: int) -> None:
    """A HandshakeAccept a user can work with (its pilots are the user's own check)."""
    if acc.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(f"AP speaks protocol {acc.protocol_version}")
    if not acc.session_id:
        raise ProtocolError("the accept has no session id")
    check_name(acc.session_id, "session id", 64)
    if acc.antennas_tx != antennas_tx:
        raise ProtocolError(f"AP has N_T={acc.antennas_tx}, channel drawn for {antennas_tx}")
    if not 1 <= acc.channel_uses <= MAX_CHANNEL_USES:
        raise ProtocolError(f"channel_uses {acc.channel_uses} not in [1, {MAX_CHANNEL_USES}]")
    if not 1 <= acc.ap_latent_dim <= MAX_LATENT_DIM:
        raise ProtocolError(f"ap_latent_dim {acc.ap_latent_dim} not in [1, {MAX_LATENT_DIM}]")
    if acc.channel_uses * acc.antennas_tx > complex_dim(acc.ap_latent_dim):
        raise ProtocolError("K N_T exceeds the AP's complex latent dimension")
    if acc.iterations > MAX_ITERATIONS:
        raise ProtocolError(f"iterations {acc.iterations} > {MAX_ITERATIONS}")
    check_number(acc.rho, "rho", 0.0, 1e6)
    check_number(acc.power, "power", 0.0, 1e6)
    check_number(acc.noise_var, "noise_var", 0.0, MAX_TERM)
    if acc.noise_var <= 0 or acc.rho <= 0 or acc.power <= 0:
        raise ProtocolError("rho, power and noise_var must be > 0")
    if len(acc.pilot_ids) < 2:
        raise ProtocolError(f"{len(acc.pilot_ids)} pilots: at least 2 are needed")
    check_ids(acc.pilot_ids, "pilot ids")
    if acc.baseline_fit not in (pb.BASELINE_FIT_UNSPECIFIED, pb.RECEIVED, pb.FULL):
        raise ProtocolError(f"unknown baseline fit {acc.baseline_fit}")
