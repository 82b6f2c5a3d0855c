"""The AP's checkpoint: what a networked run needs to finish after the AP process dies.

Written atomically (:func:`semalign.common.io.atomic_write_bytes`) after the handshake, after
every ADMM round and after every finished seed, it holds:

* the run: its key (a hash of the configuration, the seeds and the invited users), the
  configuration itself, the seeds, and each finished seed's results and users' own reports;
* the current seed: its index, session id, round, the admitted users (id, index, what their
  handshake established: encoder, latent dim, N_R, SNR, CSI, round protocol; whether and why
  they were dropped), the strategy's state (F, Z, U: shared for ``fed``, per user for
  ``multi-link``), the RoundRecords and phase traffic so far, and a digest of the AP's whitened
  pilots (the AP's data must be the same to continue).

No random state is saved because none is live between rounds: the AP draws F^(0) once from the
seed (restored as F) and a user's generators restart from (seed, ordinal) with the user's state
machine, drawing nothing before the final phase, which a resumed session runs again.

File layout: the line ``SEMALIGN-CHECKPOINT <version>``, the SHA-256 of the rest as a hex line,
then an ``.npz`` archive (no pickles) whose ``meta`` array is the JSON description and whose
other arrays are the matrices. :func:`load` refuses, with one :class:`CheckpointError` line, a
file that is truncated, of another version, fails its checksum, or belongs to another run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.errors import CheckpointError
from semalign.common.io import atomic_write_bytes
from semalign.common.records import RoundRecord, SeedResult, UserReport
from semalign.server.access_point import AccessPoint, UserState
from semalign.server.session import RestoredSession

log = logging.getLogger(__name__)

MAGIC = b"SEMALIGN-CHECKPOINT"
VERSION = 1
_USER_FIELDS = ("user_id", "index", "encoder", "latent_dim", "antennas_rx", "snr_db")
_USER_FIELDS += ("dropped", "round_protocol", "rejoins")


def run_key(config: AlignmentConfig, seeds: list[int], expected: list[str] | int) -> str:
    """What a checkpoint must match to be continued: configuration, seeds, invited users."""
    text = json.dumps(
        {"config": json.loads(config.model_dump_json()), "seeds": seeds, "users": expected},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SessionState:
    """The seed in progress, as :func:`capture` took it after a handshake or a round."""

    index: int
    seed: int
    session_id: str
    round: int
    pilots: str
    users: list[dict[str, Any]]
    records: list[dict[str, Any]]
    phases: dict[str, Any]
    user_order: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "arrays"}


@dataclass
class Checkpoint:
    """A run's progress: finished seeds and the seed in progress (``None``: between seeds).

    ``finished`` holds each finished seed's results and ``reported``, per finished seed, each
    user's own evaluation report: the same records a session that was never cut produces
    (written as their JSON, read back with ``from_dict``).
    """

    key: str
    config: dict[str, Any]
    seeds: list[int]
    finished: list[SeedResult] = field(default_factory=list)
    reported: list[dict[str, UserReport]] = field(default_factory=list)
    current: SessionState | None = None


def capture(ap: AccessPoint, driver, index: int, extra: dict[str, Any] | None = None):
    """The state of seed ``index`` after the driver's handshake or round (see module doc)."""
    arrays = {f"strategy.{k}": np.asarray(v) for k, v in ap.strategy.checkpoint_state().items()}
    users = []
    for state in ap.users.values():
        users.append({name: getattr(state, name) for name in _USER_FIELDS})
        if state.hbar is not None:
            arrays[f"hbar.{state.index}"] = state.hbar
    return SessionState(
        index=index,
        seed=ap.config.seed,
        session_id=ap.session_id,
        round=ap.round,
        pilots=ap.pilots_digest,
        users=users,
        records=[r.to_dict() for r in driver.records],
        phases=dict(driver.phases),
        user_order=list(driver.user_order),
        extra=dict(extra or {}),
        arrays=arrays,
    )


def restore(ap: AccessPoint, state: SessionState) -> RestoredSession:
    """Put a freshly built AP (same config, seed and data) back where ``state`` left it;
    returns what the driver had recorded (rounds, traffic so far, user order)."""
    if ap.pilots_digest != state.pilots:
        raise CheckpointError("the AP's pilot latents differ from the checkpoint's")
    ap.session_id = state.session_id
    for user in sorted(state.users, key=lambda u: u["index"]):
        user_state = UserState(**user, hbar=state.arrays.get(f"hbar.{user['index']}"))
        ap.strategy.add_user(user_state)
        ap.users[user_state.user_id] = user_state
    prefix = "strategy."
    ap.strategy.restore_state(
        {k[len(prefix) :]: v for k, v in state.arrays.items() if k.startswith(prefix)}
    )
    ap.round = state.round
    return RestoredSession(
        rounds=[RoundRecord.from_dict(r) for r in state.records],
        phases={name: dict(traffic) for name, traffic in state.phases.items()},
        user_order=list(state.user_order),
    )


def save(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (the old file or the complete new one, never half)."""
    current = checkpoint.current
    meta = {
        "key": checkpoint.key,
        "config": checkpoint.config,
        "seeds": checkpoint.seeds,
        "finished": [block.to_dict() for block in checkpoint.finished],
        "reported": [
            {uid: report.to_dict() for uid, report in reports.items()}
            for reports in checkpoint.reported
        ],
        "current": current.meta() if current else None,
    }
    buffer = io.BytesIO()
    arrays = current.arrays if current else {}
    text = json.dumps(meta, allow_nan=True, default=_plain).encode()  # floats exactly (repr)
    np.savez(buffer, meta=np.frombuffer(text, dtype=np.uint8), **arrays)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, MAGIC + b" %d\n" % VERSION + digest + b"\n" + payload)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def load(path: str | Path, key: str) -> Checkpoint:
    """The checkpoint at ``path`` for the run ``key``; CheckpointError if it is not one,
    is damaged, or belongs to another run."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({exc.strerror})") from None
    head, _, rest = data.partition(b"\n")
    digest, _, payload = rest.partition(b"\n")
    if not head.startswith(MAGIC + b" "):
        raise CheckpointError(f"checkpoint {path}: not a semalign checkpoint")
    if head != MAGIC + b" %d" % VERSION:
        version = head[len(MAGIC) + 1 :][:20].decode("ascii", "replace")
        raise CheckpointError(f"checkpoint {path}: format version {version}, expected {VERSION}")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"checkpoint {path}: checksum mismatch (truncated or damaged)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable ({exc})") from None
    if meta.get("key") != key:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run (configuration, seeds or users differ)"
        )
    current = meta["current"]
    return Checkpoint(
        key=key,
        config=meta["config"],
        seeds=meta["seeds"],
        finished=[SeedResult.from_dict(block) for block in meta["finished"]],
        reported=[
            {uid: UserReport.from_dict(report) for uid, report in reports.items()}
            for reports in meta["reported"]
        ],
        current=SessionState(**current, arrays=arrays) if current else None,
    )
