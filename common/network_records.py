"""Typed results that only a networked run has, and their JSON form.

A networked seed adds a :class:`WireBlock` (``seeds[].wire``: what crossed the gRPC boundary);
a networked run adds a :class:`NetworkSummary` (``network``), which figures the users reported
about themselves (:class:`MeasuredBy`, ``measured_by``) and the users it lost
(:class:`LostUser`, ``lost``). Each record's ``to_dict()`` is its JSON block key for key, in
the same order, and ``from_dict()`` reads it back (``to_dict(from_dict(d)) == d`` for every
file since these blocks were introduced; keys an older file lacks stay out when written).

Times are seconds, byte counts are bytes of serialized messages, user ids are the session's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class _Flat:
    """``to_dict``/``from_dict`` of a record whose JSON keys are its fields, in order."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def _count_map(data: dict[str, Any]) -> dict[str, int]:
    return {str(k): v for k, v in data.items()}


@dataclass(frozen=True)
class WireRound:
    """One ADMM round at the gRPC boundary: its latency (s) and the bytes of each user's
    stream, down (AP -> user) and up."""

    round: int
    latency_s: float
    bytes_down: dict[str, int]
    bytes_up: dict[str, int]

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the totals are derived)."""
        return {
            "round": self.round,
            "latency_s": self.latency_s,
            "bytes_down": dict(self.bytes_down),
            "bytes_up": dict(self.bytes_up),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record(),
            "bytes_down_total": sum(self.bytes_down.values()),
            "bytes_up_total": sum(self.bytes_up.values()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WireRound:
        """From :meth:`to_dict` or :meth:`record` (the totals are recomputed)."""
        return cls(
            data["round"],
            data["latency_s"],
            _count_map(data["bytes_down"]),
            _count_map(data["bytes_up"]),
        )


@dataclass(frozen=True)
class WireUser(_Flat):
    """One user's stream over the whole session: its peer address, bytes and messages."""

    peer: str | None
    bytes_down: int
    bytes_up: int
    messages_down: int
    messages_up: int


@dataclass(frozen=True)
class Rejoin(_Flat):
    """A user that came back on a new stream, at which round and in which phase."""

    user: str
    round: int
    phase: str


@dataclass(frozen=True)
class Straggler(_Flat):
    """A reply that missed the round deadline (``deadline_s``)."""

    user: str
    round: int
    phase: str
    deadline_s: float | None


@dataclass(frozen=True)
class WireBlock:
    """One networked session as the AP measured it at the gRPC boundary (``seeds[].wire``).

    Attributes:
        join_s: from opening the lobby until the session started; ``session_s``: the session.
        handshake_s: the handshake phase (None: a file from before it was recorded).
        not_joined: invited users that never joined; ``not_joined_reasons`` why, where known.
        dropped_at_s: user id -> seconds into the session when it was dropped.
        latency_p50_s, latency_p95_s: over this session's rounds (None: no rounds).
        rounds: one :class:`WireRound` per ADMM round; ``users``: each user's stream.
        rejoins, stragglers, refused (user id -> why its handshake was refused): None only in a
            file from before they were recorded.
    """

    transport: str
    join_s: float
    session_s: float
    not_joined: list[str]
    not_joined_reasons: dict[str, str]
    dropped_at_s: dict[str, float]
    latency_p50_s: float | None
    latency_p95_s: float | None
    rounds: list[WireRound]
    users: dict[str, WireUser]
    handshake_s: float | None = None
    rejoins: list[Rejoin] | None = None
    stragglers: list[Straggler] | None = None
    refused: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transport": self.transport,
            "join_s": self.join_s,
            "session_s": self.session_s,
        }
        if self.handshake_s is not None:
            out["handshake_s"] = self.handshake_s
        out.update(
            not_joined=list(self.not_joined),
            not_joined_reasons=dict(self.not_joined_reasons),
            dropped_at_s=dict(self.dropped_at_s),
            latency_p50_s=self.latency_p50_s,
            latency_p95_s=self.latency_p95_s,
            rounds=[r.to_dict() for r in self.rounds],
            users={uid: u.to_dict() for uid, u in self.users.items()},
        )
        if self.rejoins is not None:
            out["rejoins"] = [r.to_dict() for r in self.rejoins]
        if self.stragglers is not None:
            out["stragglers"] = [s.to_dict() for s in self.stragglers]
        if self.refused is not None:
            out["refused"] = dict(self.refused)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WireBlock:
        rejoins, stragglers = data.get("rejoins"), data.get("stragglers")
        return cls(
            transport=data["transport"],
            join_s=data["join_s"],
            session_s=data["session_s"],
            not_joined=list(data.get("not_joined", [])),
            not_joined_reasons=dict(data.get("not_joined_reasons", {})),
            dropped_at_s=dict(data.get("dropped_at_s", {})),
            latency_p50_s=data.get("latency_p50_s"),
            latency_p95_s=data.get("latency_p95_s"),
            rounds=[WireRound.from_dict(r) for r in data.get("rounds", [])],
            users={uid: WireUser.from_dict(u) for uid, u in data.get("users", {}).items()},
            handshake_s=data.get("handshake_s"),
            rejoins=None if rejoins is None else [Rejoin.from_dict(r) for r in rejoins],
            stragglers=None if stragglers is None else [Straggler.from_dict(s) for s in stragglers],
            refused=data.get("refused"),
        )


@dataclass(frozen=True)
class DropTime(_Flat):
    """Why a user was dropped and when (seconds into its session; None: not measured)."""

    reason: str
    at_s: float | None


@dataclass(frozen=True)
class NetworkSummary:
    """A networked run's ``network`` block: latency p50/p95/mean over all rounds of all seeds,
    mean bytes per round (None: no rounds), drops and users that never joined per seed (keys:
    the seed as a string, as in the JSON), and the ``deployment`` figures the command adds
    (mode, user processes, start-up and total seconds, Flower's reports; None: not added)."""

    transport: str
    rounds: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_mean_s: float | None
    bytes_down_per_round: float | None
    bytes_up_per_round: float | None
    dropped: dict[str, dict[str, DropTime]]
    not_joined: dict[str, list[str]]
    deployment: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "deployment"}
        out["dropped"] = {
            seed: {uid: drop.to_dict() for uid, drop in users.items()}
            for seed, users in self.dropped.items()
        }
        out["not_joined"] = {seed: list(ids) for seed, ids in self.not_joined.items()}
        if self.deployment is not None:
            out["deployment"] = self.deployment
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSummary:
        plain = {k: data.get(k) for k in cls.__dataclass_fields__}
        plain["dropped"] = {
            seed: {uid: DropTime.from_dict(d) for uid, d in users.items()}
            for seed, users in data.get("dropped", {}).items()
        }
        plain["not_joined"] = {seed: list(ids) for seed, ids in data.get("not_joined", {}).items()}
        return cls(**plain)


@dataclass(frozen=True)
class LostUser(_Flat):
    """An invited user that did not finish a seed, and why (``lost[]``)."""

    seed: int
    user: str
    reason: str


@dataclass(frozen=True)
class MeasuredBy:
    """Which results figures the users reported about themselves and which the AP measured
    (``measured_by``: a description per figure, for a reader of the file)."""

    self_reported: list[str] = field(default_factory=list)
    ap_measured: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"self_reported": list(self.self_reported), "ap_measured": list(self.ap_measured)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasuredBy:
        return cls(list(data.get("self_reported", [])), list(data.get("ap_measured", [])))
