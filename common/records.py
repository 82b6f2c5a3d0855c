"""Typed results of an alignment run, and their JSON form.

A run (one configuration, several seeds) gives a :class:`RunResult`: per-user and per-round
means over seeds and one :class:`SeedResult` per seed, which holds each user's
:class:`UserResult`, the per-round :class:`RoundRecord` log and the traffic per phase.
``to_dict()`` gives the results JSON (``semalign simulate --out``) key for key, in the same
order; ``from_dict()`` reads it back. NaN stays NaN here; :func:`semalign.common.io.write_json`
writes it as ``null``, which ``from_dict`` keeps as ``None``.

Measurements that are transport specific (the ``wire`` block of a networked seed, the
``network`` summary of a networked run) and the traffic ``phases`` stay plain dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from semalign.common.config import LEGACY_TASK_MODEL, AlignmentConfig

#: Per-user metrics reported at evaluation.
USER_METRICS = ("accuracy", "native_accuracy", "mse", "mse_whitened")
#: Per-round fields averaged over seeds in the run's ``rounds``.
ROUND_FIELDS = (
    "mse",
    "objective",
    "primal_residual",
    "dual_residual",
    "bytes_down",
    "bytes_up",
    "seconds",
)


class _Record:
    """``to_dict``/``from_dict`` for flat dataclasses whose JSON keys are their fields.

    Also a transitional read-only dict view (``record["key"]``, ``record.get("key")``) of
    ``to_dict()`` for callers written against the old results dicts.
    """

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass
class RoundRecord(_Record):
    """One ADMM round of one seed: AP-side figures, traffic and wall time.

    ``mse`` is the users' mean pilot MSE per complex feature, ``objective`` eq. (3); the
    residuals are ||F - Z||_F and rho ||Z - Z_prev||_F (root sum of squares over users for
    multi-link).
    """

    round: int
    mse: float
    objective: float
    primal_residual: float
    dual_residual: float
    bytes_down: int
    bytes_up: int
    seconds: float
    users: int
    bytes_down_per_user: dict[str, int] = field(default_factory=dict)
    bytes_up_per_user: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "bytes_down_per_user": dict(self.bytes_down_per_user),
            "bytes_up_per_user": dict(self.bytes_up_per_user),
        }


@dataclass
class RoundSummary(_Record):
    """One round averaged over seeds (:data:`ROUND_FIELDS`)."""

    round: int
    mse: float
    objective: float
    primal_residual: float
    dual_residual: float
    bytes_down: float
    bytes_up: float
    seconds: float


@dataclass
class UserResult(_Record):
    """One user in one seed; the metrics are ``None`` if the user has no report (dropped)."""

    name: str
    encoder: str
    accuracy: float | None
    native_accuracy: float | None
    mse: float | None
    mse_whitened: float | None
    dropped: str | None


@dataclass
class UserSummary(_Record):
    """One user's metrics over seeds: NaN-aware mean and population std of each."""

    name: str
    encoder: str
    accuracy: float
    accuracy_std: float
    native_accuracy: float
    native_accuracy_std: float
    mse: float
    mse_std: float
    mse_whitened: float
    mse_whitened_std: float
    #: the user's resolved SNR (dB: ``snr_db``, ``--user-snr-db`` or path loss from
    #: ``--distances``), recorded by the commands; None (and not in the JSON) when not known
    snr_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.snr_db is None:
            del out["snr_db"]
        return out


@dataclass
class SeedResult(_Record):
    """One session (one seed).

    Attributes:
        mean_accuracy, mean_native_accuracy, mean_mse: means over the users with a report.
        phases: traffic per phase (``handshake``, ``final`` with the pilot ``mse`` and
            ``objective``, ``evaluation``), bytes down/up in total and per user.
        dropped: user id -> why and when it was dropped.
        seconds: wall time of the session (``None``: not measured).
        ap_whitening_condition: condition number of the AP's pilot covariance.
        strategy_info: the strategy's extra entries (e.g. ``baseline`` for First-K/Top-K).
        wire: the gRPC-boundary measurements of a networked session.
    """

    seed: int
    users: list[UserResult]
    mean_accuracy: float
    mean_native_accuracy: float
    mean_mse: float
    rounds: list[RoundRecord]
    phases: dict[str, dict[str, Any]]
    dropped: dict[str, str]
    seconds: float | None = None
    ap_whitening_condition: float | None = None
    strategy_info: dict[str, Any] = field(default_factory=dict)
    wire: dict[str, Any] | None = None

    _OPTIONAL = ("seconds", "ap_whitening_condition")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seed": self.seed,
            "users": [u.to_dict() for u in self.users],
            "mean_accuracy": self.mean_accuracy,
            "mean_native_accuracy": self.mean_native_accuracy,
            "mean_mse": self.mean_mse,
            "rounds": [r.to_dict() for r in self.rounds],
            "phases": self.phases,
            "dropped": self.dropped,
        }
        out.update({k: getattr(self, k) for k in self._OPTIONAL if getattr(self, k) is not None})
        out.update(self.strategy_info)
        if self.wire is not None:
            out["wire"] = self.wire
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedResult:
        known = {f.name for f in fields(cls)} - {"strategy_info"}
        return cls(
            seed=data["seed"],
            users=[UserResult.from_dict(u) for u in data["users"]],
            mean_accuracy=data["mean_accuracy"],
            mean_native_accuracy=data["mean_native_accuracy"],
            mean_mse=data["mean_mse"],
            rounds=[RoundRecord.from_dict(r) for r in data["rounds"]],
            phases=data["phases"],
            dropped=data["dropped"],
            seconds=data.get("seconds"),
            ap_whitening_condition=data.get("ap_whitening_condition"),
            strategy_info={k: v for k, v in data.items() if k not in known},
            wire=data.get("wire"),
        )


@dataclass
class RunResult(_Record):
    """A configuration run over several seeds: the results JSON.

    Attributes:
        config: the configuration (its ``seed`` is not used: see ``seeds``).
        users, rounds: means (and stds) over seeds, users in the order of the first seed.
        mean_*/std_*: mean and std over seeds of the seeds' means over users.
        seeds: one result per seed.
        extra_config: entries added to the JSON's ``config`` (latents folder, encoders).
        network: the networked run's summary (latency, bytes per round, drops).
        provenance: where and with what the run was made
            (:func:`semalign.experiments.provenance.provenance_block`); None (and not in the
            JSON) when not recorded. An older networked file's ``provenance`` (which figures
            the users reported, now ``measured_by``) is not read as one.
    """

    config: AlignmentConfig
    users: list[UserSummary]
    rounds: list[RoundSummary]
    mean_accuracy: float
    std_accuracy: float
    mean_native_accuracy: float
    std_native_accuracy: float
    mean_mse: float
    std_mse: float
    seeds: list[SeedResult]
    extra_config: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    _MEANS = (
        "mean_accuracy",
        "std_accuracy",
        "mean_native_accuracy",
        "std_native_accuracy",
        "mean_mse",
        "std_mse",
    )

    @property
    def strategy(self) -> str:
        return self.config.strategy

    def config_dict(self) -> dict[str, Any]:
        """The JSON's ``config``: the configuration without its seed, the seeds, the extras."""
        cfg = self.config.params()  # ``channel`` only when not the default channel
        cfg.pop("seed")
        cfg["seeds"] = [s.seed for s in self.seeds]
        cfg.update(self.extra_config)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "config": self.config_dict(),
            "users": [u.to_dict() for u in self.users],
            "rounds": [r.to_dict() for r in self.rounds],
        }
        out.update({k: getattr(self, k) for k in self._MEANS})
        out["seeds"] = [s.to_dict() for s in self.seeds]
        if self.network is not None:
            out["network"] = self.network
        if self.provenance is not None:
            out["provenance"] = self.provenance
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        cfg = dict(data["config"])
        cfg.pop("seeds", None)
        cfg.setdefault("task_model", LEGACY_TASK_MODEL)  # a file older than the field
        fields_ = AlignmentConfig.model_fields
        config = AlignmentConfig(**{k: v for k, v in cfg.items() if k in fields_})
        return cls(
            config=config,
            users=[UserSummary.from_dict(u) for u in data["users"]],
            rounds=[RoundSummary.from_dict(r) for r in data["rounds"]],
            **{k: data[k] for k in cls._MEANS},
            seeds=[SeedResult.from_dict(s) for s in data["seeds"]],
            extra_config={k: v for k, v in cfg.items() if k not in fields_},
            network=data.get("network"),
            provenance=provenance_of(data),
        )


def provenance_of(results: dict[str, Any]) -> dict[str, Any] | None:
    """The provenance block of a results JSON, or None: files before it had none, and a
    networked file of then used the key ``provenance`` for which figures the users reported
    (``measured_by`` now), which is not a provenance block."""
    block = results.get("provenance")
    return block if isinstance(block, dict) and "semalign_version" in block else None


def measured_by_of(results: dict[str, Any]) -> dict[str, Any] | None:
    """Which figures of a networked results JSON the users reported about themselves and which
    the AP measured (``measured_by``; a file of before the rename has them as ``provenance``),
    or None (an in-process run's file)."""
    if isinstance(results.get("measured_by"), dict):
        return results["measured_by"]
    legacy = results.get("provenance")
    return legacy if isinstance(legacy, dict) and provenance_of(results) is None else None
