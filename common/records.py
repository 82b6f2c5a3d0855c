"""Typed results of an alignment run, and their JSON form. (Over 450 lines: one record tree,
its JSON written and read back in one place.)

A run (one configuration, several seeds) gives a :class:`RunResult`: per-user and per-round
means over seeds and one :class:`SeedResult` per seed, which holds each user's
:class:`UserResult`, the per-round :class:`RoundRecord` log and the traffic per phase.
``to_dict()`` gives the results JSON (``semalign simulate --out``) key for key, in the same
order; ``from_dict()`` reads it back. NaN stays NaN here; :func:`semalign.common.io.write_json`
writes it as ``null``, which ``from_dict`` keeps as ``None``.

A networked run's own blocks (``wire``, ``network``, ``measured_by``, ``lost``) are the records
of :mod:`semalign.common.network_records`. Records are frozen: a later step (the SNRs the
command resolved, the networked AP's labels, the deployment figures, the provenance) returns a
new record, and the JSON is written once, from :meth:`RunResult.to_dict`. Only the strategy's
extra entries (``strategy_info``) and the deployment figures stay free-form dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from semalign.common.config import LEGACY_PRECISION, LEGACY_TASK_MODEL, AlignmentConfig
from semalign.common.network_records import LostUser, MeasuredBy, NetworkSummary, WireBlock

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
    """``to_dict``/``from_dict`` for flat dataclasses whose JSON keys are their fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore[arg-type]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class UserResult(_Record):
    """One user in one seed; the metrics are ``None`` if the user has no report (dropped)."""

    name: str
    encoder: str
    accuracy: float | None
    native_accuracy: float | None
    mse: float | None
    mse_whitened: float | None
    dropped: str | None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class UserReport(_Record):
    """A user's evaluation report as it sent it: accuracies in [0, 1], MSEs per complex
    feature, the number of test points it evaluated."""

    accuracy: float | None
    native_accuracy: float | None
    mse: float | None
    mse_whitened: float | None
    samples: int | None


@dataclass(frozen=True)
class FinalFigures(_Record):
    """The pilot ``mse`` and ``objective`` after the final transmission (the ``final`` phase)."""

    mse: float | None
    objective: float | None


@dataclass(frozen=True)
class PhaseTraffic:
    """Bytes of one phase's messages, down (AP -> users) and up, in total and per user.

    ``*_per_user`` is None where the phase does not count it (the handshake); ``final`` holds
    the final phase's figures (None for the other phases).
    """

    bytes_down: int
    bytes_up: int
    bytes_down_per_user: dict[str, int] | None = None
    bytes_up_per_user: dict[str, int] | None = None
    final: FinalFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes_down": self.bytes_down, "bytes_up": self.bytes_up}
        for key in ("bytes_down_per_user", "bytes_up_per_user"):
            if getattr(self, key) is not None:
                out[key] = dict(getattr(self, key))
        if self.final is not None:
            out.update(self.final.to_dict())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseTraffic:
        final = None
        if "mse" in data or "objective" in data:
            final = FinalFigures(data.get("mse"), data.get("objective"))
        return cls(
            bytes_down=data["bytes_down"],
            bytes_up=data["bytes_up"],
            bytes_down_per_user=data.get("bytes_down_per_user"),
            bytes_up_per_user=data.get("bytes_up_per_user"),
            final=final,
        )


@dataclass(frozen=True)
class SessionTraffic(_Record):
    """Bytes of one session (one seed) of serialized messages, down (AP -> users) and up: in
    total (every phase and every ADMM round) and per round (the mean over the ``rounds``
    rounds; None without rounds). The seed JSON's ``traffic``."""

    bytes_down: int
    bytes_up: int
    rounds: int
    bytes_down_per_round: float | None
    bytes_up_per_round: float | None

    @classmethod
    def of(cls, rounds: list[RoundRecord], phases: dict[str, PhaseTraffic]) -> SessionTraffic:
        """The totals of a session's ``rounds`` and ``phases``."""
        down = [r.bytes_down for r in rounds]
        up = [r.bytes_up for r in rounds]
        return cls(
            bytes_down=sum(down) + sum(p.bytes_down for p in phases.values()),
            bytes_up=sum(up) + sum(p.bytes_up for p in phases.values()),
            rounds=len(rounds),
            bytes_down_per_round=sum(down) / len(down) if down else None,
            bytes_up_per_round=sum(up) / len(up) if up else None,
        )

    @classmethod
    def total(cls, parts: list[SessionTraffic]) -> SessionTraffic:
        """Several sessions' traffic as one (grouped users: one session per group, side by
        side): totals and per-round means added, rounds the most of any part."""
        per_round = {
            key: [getattr(p, key) for p in parts if getattr(p, key) is not None]
            for key in ("bytes_down_per_round", "bytes_up_per_round")
        }
        return cls(
            bytes_down=sum(p.bytes_down for p in parts),
            bytes_up=sum(p.bytes_up for p in parts),
            rounds=max((p.rounds for p in parts), default=0),
            **{key: sum(values) if values else None for key, values in per_round.items()},
        )


def phases_from_dict(data: dict[str, dict[str, Any]]) -> dict[str, PhaseTraffic]:
    """A seed's ``phases`` (phase name -> its traffic), in the JSON's order."""
    return {name: PhaseTraffic.from_dict(block) for name, block in data.items()}


@dataclass(frozen=True)
class Provenance(_Record):
    """Where and with what a run was made (the JSON's ``provenance``; built by
    :func:`semalign.experiments.provenance.provenance_block`). ``git_commit``/``git_dirty``
    are None outside a git checkout; ``libraries``: name -> version (None: not installed)."""

    semalign_version: str
    git_commit: str | None
    git_dirty: bool | None
    started_at: str
    host: str
    command_line: list[str]
    latents_id: str | None
    python: str
    libraries: dict[str, str | None]


@dataclass(frozen=True)
class SeedResult(_Record):
    """One session (one seed).

    Attributes:
        mean_accuracy, mean_native_accuracy, mean_mse: means over the users with a report.
        phases: traffic per phase (``handshake``, ``setup`` with secure aggregation, ``final``
            with the pilot ``mse`` and ``objective``, ``evaluation``).
        dropped: user id -> why and when it was dropped.
        seconds: wall time of the session (``None``: not measured).
        ap_whitening_condition: condition number of the AP's pilot covariance.
        strategy_info: the strategy's extra entries (e.g. ``baseline`` for First-K/Top-K).
        wire: the gRPC-boundary measurements of a networked session.
        traffic: the session's bytes in total and per round (None, and not in the JSON, for
            a file written before it was recorded).
        self_reported: user id -> its evaluation report as it sent it (None: it sent none);
            set by the networked AP's labels (``users[].self_reported`` in the JSON), None
            (and not in the JSON) otherwise.
    """

    seed: int
    users: list[UserResult]
    mean_accuracy: float
    mean_native_accuracy: float
    mean_mse: float
    rounds: list[RoundRecord]
    phases: dict[str, PhaseTraffic]
    dropped: dict[str, str]
    seconds: float | None = None
    ap_whitening_condition: float | None = None
    strategy_info: dict[str, Any] = field(default_factory=dict)
    wire: WireBlock | None = None
    self_reported: dict[str, UserReport | None] | None = None
    traffic: SessionTraffic | None = None

    _OPTIONAL = ("seconds", "ap_whitening_condition")

    def _user_dicts(self) -> list[dict[str, Any]]:
        users = [u.to_dict() for u in self.users]
        if self.self_reported is not None:
            for user in users:
                report = self.self_reported.get(user["name"])
                user["self_reported"] = report.to_dict() if report is not None else None
        return users

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seed": self.seed,
            "users": self._user_dicts(),
            "mean_accuracy": self.mean_accuracy,
            "mean_native_accuracy": self.mean_native_accuracy,
            "mean_mse": self.mean_mse,
            "rounds": [r.to_dict() for r in self.rounds],
            "phases": {name: p.to_dict() for name, p in self.phases.items()},
        }
        if self.traffic is not None:
            out["traffic"] = self.traffic.to_dict()
        out["dropped"] = dict(self.dropped)
        out.update({k: getattr(self, k) for k in self._OPTIONAL if getattr(self, k) is not None})
        out.update(self.strategy_info)
        if self.wire is not None:
            out["wire"] = self.wire.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedResult:
        known = {f.name for f in fields(cls)} - {"strategy_info", "self_reported"}
        wire, traffic = data.get("wire"), data.get("traffic")
        return cls(
            seed=data["seed"],
            users=[UserResult.from_dict(u) for u in data["users"]],
            mean_accuracy=data["mean_accuracy"],
            mean_native_accuracy=data["mean_native_accuracy"],
            mean_mse=data["mean_mse"],
            rounds=[RoundRecord.from_dict(r) for r in data["rounds"]],
            phases=phases_from_dict(data["phases"]),
            dropped=dict(data["dropped"]),
            seconds=data.get("seconds"),
            ap_whitening_condition=data.get("ap_whitening_condition"),
            strategy_info={k: v for k, v in data.items() if k not in known},
            wire=WireBlock.from_dict(wire) if wire is not None else None,
            self_reported=_self_reported_of(data["users"]),
            traffic=SessionTraffic.from_dict(traffic) if traffic is not None else None,
        )


def _self_reported_of(users: list[dict[str, Any]]) -> dict[str, UserReport | None] | None:
    """The users' own reports of a seed's JSON users (None: the seed is not labelled)."""
    if not any("self_reported" in u for u in users):
        return None
    return {
        u["name"]: UserReport.from_dict(u["self_reported"]) if u.get("self_reported") else None
        for u in users
    }


@dataclass(frozen=True)
class RunResult(_Record):
    """A configuration run over several seeds: the results JSON.

    Attributes:
        config: the configuration (its ``seed`` is not used: see ``seeds``).
        users, rounds: means (and stds) over seeds, users in the order of the first seed.
        mean_*/std_*: mean and std over seeds of the seeds' means over users.
        seeds: one result per seed.
        extra_config: entries added to the JSON's ``config`` (latents folder, encoders).
        network: the networked run's summary (latency, bytes per round, drops, deployment).
        measured_by: which figures the users reported (a networked run; else None).
        lost: the invited users that did not finish a seed (a networked run; else None).
        provenance: where and with what the run was made; None (and not in the JSON) when
            not recorded. An older networked file's ``provenance`` (which figures the users
            reported, now ``measured_by``) is read as ``measured_by``.
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
    network: NetworkSummary | None = None
    measured_by: MeasuredBy | None = None
    lost: list[LostUser] | None = None
    provenance: Provenance | None = None

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
            out["network"] = self.network.to_dict()
        if self.measured_by is not None:
            out["measured_by"] = self.measured_by.to_dict()
        if self.lost is not None:
            out["lost"] = [lost.to_dict() for lost in self.lost]
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Read a results JSON of any version (the boundary: readers of files call this once)."""
        cfg = dict(data["config"])
        cfg.pop("seeds", None)
        cfg.setdefault("task_model", LEGACY_TASK_MODEL)  # a file older than the field
        cfg.setdefault("precision", LEGACY_PRECISION)  # likewise
        fields_ = AlignmentConfig.model_fields
        config = AlignmentConfig(**{k: v for k, v in cfg.items() if k in fields_})
        network, labels, block = data.get("network"), measured_by_of(data), provenance_of(data)
        lost = data.get("lost")
        return cls(
            config=config,
            users=[UserSummary.from_dict(u) for u in data["users"]],
            rounds=[RoundSummary.from_dict(r) for r in data["rounds"]],
            **{k: data[k] for k in cls._MEANS},
            seeds=[SeedResult.from_dict(s) for s in data["seeds"]],
            extra_config={k: v for k, v in cfg.items() if k not in fields_},
            network=NetworkSummary.from_dict(network) if network is not None else None,
            measured_by=MeasuredBy.from_dict(labels) if labels is not None else None,
            lost=[LostUser.from_dict(x) for x in lost] if lost is not None else None,
            provenance=Provenance.from_dict(block) if block is not None else None,
        )

    # ------------------------------------------------- later steps, each a new record
    def with_user_snrs(self, snrs: dict[str, float]) -> RunResult:
        """Each user that ``snrs`` names with its resolved SNR (dB)."""
        users = [replace(u, snr_db=snrs[u.name]) if u.name in snrs else u for u in self.users]
        return replace(self, users=users)

    def with_provenance(self, block: Provenance) -> RunResult:
        return replace(self, provenance=block)

    def with_deployment(self, deployment: dict[str, Any]) -> RunResult:
        """The networked run's ``network`` with the command's deployment figures."""
        if self.network is None:
            raise ValueError("only a networked run has deployment figures")
        return replace(self, network=replace(self.network, deployment=dict(deployment)))


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
