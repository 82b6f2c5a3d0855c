"""The one registry of alignment strategies, as data.

Every strategy has one :class:`StrategySpec`: its name (the ``--strategy`` value), its family
(``"admm"``: iterative rounds of section III-B; ``"baseline"``: one pilot transmission, section
IV), its code on the wire (the proto ``Strategy`` enum, if it has one), and how plots and help
texts show it. The config's choices, the handshake's strategy code and the plot styles are all
read from here; the AP's and the user's halves of a strategy (``semalign.server.strategies`` and
``semalign.client.strategies``) are registered under the same names.

Adding a strategy: one :func:`register_strategy` call below, one AP module, one user module.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from semalign.common.errors import ProtocolError, UsageError
from semalign.proto import semalign_pb2 as pb

Family = Literal["admm", "baseline"]
T = TypeVar("T")


class StrategyError(UsageError, ValueError):
    """A strategy name registered twice, or a proto code taken twice."""


class UnknownStrategy(StrategyError):
    """A strategy name that is not registered (the message suggests close names)."""


@dataclass(frozen=True)
class StrategySpec:
    """One strategy, as the rest of the code sees it.

    Attributes:
        name: the ``--strategy`` value and the key of every registry.
        family: ``"admm"`` (federated ADMM rounds) or ``"baseline"`` (one pilot transmission).
        label: human-readable name (plot legends).
        description: one line for help texts; strategies that share it are listed together
            (``first-k/top-k: the baselines of section IV``).
        proto_code: the ``semalign.v1.Strategy`` enum value in the HandshakeAccept, or ``None``
            (the AP then announces STRATEGY_UNSPECIFIED and users take the name from the
            session's configuration).
        color: matplotlib colour of its plot lines.
        marker: matplotlib marker of its plot lines.
    """

    name: str
    family: Family
    label: str
    description: str
    proto_code: int | None = None
    color: str | None = None
    marker: str | None = None

    @property
    def has_rounds(self) -> bool:
        """Whether the strategy runs T ADMM rounds before its final broadcast."""
        return self.family == "admm"


_REGISTRY: dict[str, StrategySpec] = {}


def register_strategy(spec: StrategySpec) -> StrategySpec:
    """Add ``spec`` to the registry (a name or proto code may be registered once)."""
    if spec.name in _REGISTRY:
        raise StrategyError(f"strategy {spec.name!r} is already registered")
    if spec.proto_code is not None and any(
        s.proto_code == spec.proto_code for s in _REGISTRY.values()
    ):
        raise StrategyError(f"proto code {spec.proto_code} is already taken")
    _REGISTRY[spec.name] = spec
    return spec


def get_strategy(name: str) -> StrategySpec:
    """The spec registered as ``name``; :class:`UnknownStrategy` (with suggestions) if none."""
    spec = _REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownStrategy(
            f"unknown strategy {name!r}{hint} (known: {', '.join(strategy_names())})"
        )
    return spec


def implementation(registry: Mapping[str, T], name: str, side: str) -> T:
    """``registry[name]`` for a registered ``name``: the AP's or the user's half of a strategy.

    Raises UnknownStrategy for an unregistered name, StrategyError if ``side`` lacks it.
    """
    spec = get_strategy(name)
    if spec.name not in registry:
        raise StrategyError(f"strategy {spec.name!r} has no {side} implementation")
    return registry[spec.name]


def strategy_for_code(code: int) -> StrategySpec:
    """The spec announced by proto code ``code``; ProtocolError for an unknown code."""
    for spec in _REGISTRY.values():
        if spec.proto_code is not None and spec.proto_code == code:
            return spec
    raise ProtocolError(f"unknown strategy code {code}")


def strategy_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_REGISTRY)


def strategy_help() -> str:
    """One line naming every strategy: ``fed: ...; multi-link: ...; first-k/top-k: ...``."""
    groups: dict[str, list[str]] = {}
    for spec in _REGISTRY.values():
        groups.setdefault(spec.description, []).append(spec.name)
    return "; ".join(f"{'/'.join(names)}: {text}" for text, names in groups.items())


def strategy_family(name: str) -> str | None:
    """The family (``admm``, ``baseline``) of a registered strategy, None for an unknown name
    (e.g. a table row of a strategy this version does not have)."""
    spec = _REGISTRY.get(name)
    return None if spec is None else spec.family


def admm_strategy_names() -> tuple[str, ...]:
    """The names of the ADMM family (strategies with rounds)."""
    return tuple(name for name, spec in _REGISTRY.items() if spec.family == "admm")


register_strategy(
    StrategySpec(
        "fed",
        "admm",
        label="Federated (shared F)",
        description="shared F by federated ADMM",
        proto_code=pb.FED,
        color="tab:blue",
        marker="o",
    )
)
register_strategy(
    StrategySpec(
        "multi-link",
        "admm",
        label="Multi-link (F per user)",
        description="one F per user",
        proto_code=pb.MULTI_LINK,
        color="tab:orange",
        marker="s",
    )
)
register_strategy(
    StrategySpec(
        "first-k",
        "baseline",
        label="First-K",
        description="the baselines of section IV",
        proto_code=pb.FIRST_K,
        color="tab:green",
        marker="^",
    )
)
register_strategy(
    StrategySpec(
        "top-k",
        "baseline",
        label="Top-K",
        description="the baselines of section IV",
        proto_code=pb.TOP_K,
        color="tab:red",
        marker="v",
    )
)
