"""The one registry of alignment strategies, as data.

Every strategy has one :class:`StrategySpec`: its name (the ``--strategy`` value), its family
(``"admm"``: iterative rounds of section III-B; ``"baseline"``: one pilot transmission, section
IV), its capabilities (one F shared by all users, secure aggregation, index side information),
its code on the wire (the proto ``Strategy`` enum, if it has one), and how plots and help texts
show it. The config's choices and checks, the handshake's strategy code, the sweep grid, user
grouping, the live display and the plot styles all read the spec, never a strategy's name.

The AP's and the user's halves of a strategy register themselves under the same name, each in
its own module, with the decorator of their side's :class:`Implementations`
(``semalign.server.strategies.registry.register_ap_strategy``,
``semalign.client.strategies.registry.register_user_strategy``).

Adding a strategy: one :func:`register_strategy` call below, one AP module, one user module.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

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
        shared_pre_equalizer: one F for all users (eq. 8), so users can be grouped
            (``user_groups`` > 1: one shared F per group); ADMM family only.
        secure_aggregation: has a secure-aggregation variant (``aggregation="secure"``: the AP
            learns only the sum of the users' local F_l); needs ``shared_pre_equalizer``.
        index_bits: sends the selected features' indices as side information, whose bits
            ``topk_index_cost`` charges in channel uses or leaves free; baseline family only.
        color: matplotlib colour of its plot lines.
        marker: matplotlib marker of its plot lines.
        linestyle: matplotlib line style of its first line in a panel (further lines of the
            same strategy, e.g. other baseline fits, take the other styles in turn).
    """

    name: str
    family: Family
    label: str
    description: str
    proto_code: int | None = None
    shared_pre_equalizer: bool = False
    secure_aggregation: bool = False
    index_bits: bool = False
    color: str | None = None
    marker: str | None = None
    linestyle: str = "-"

    def __post_init__(self) -> None:
        if not self.name or self.family not in ("admm", "baseline"):
            raise StrategyError(f"strategy {self.name!r}: a name and a family admm or baseline")
        if self.shared_pre_equalizer and self.family != "admm":
            raise StrategyError(f"strategy {self.name!r}: a shared F needs ADMM rounds")
        if self.secure_aggregation and not self.shared_pre_equalizer:
            raise StrategyError(f"strategy {self.name!r}: secure aggregation needs a shared F")
        if self.index_bits and self.family != "baseline":
            raise StrategyError(f"strategy {self.name!r}: index side information is a baseline's")

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


class Implementations(Generic[T]):
    """One side's halves of the strategies (the AP's or the users' classes), by spec name.

    Each class registers itself with the :meth:`register` decorator in its own module; a name
    must have a spec (:func:`register_strategy`) first, and one class may serve several names.
    ``requires``: a capability of :class:`StrategySpec` every name registered here must have
    (the secure-aggregation variants: ``"secure_aggregation"``).
    """

    def __init__(self, side: str, base: type[T], requires: str | None = None) -> None:
        self.side, self.base, self.requires = side, base, requires
        self._classes: dict[str, type[T]] = {}

    def register(self, *names: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``cls`` is this side's half of every strategy in ``names``.

        Raises UnknownStrategy for a name without a spec, StrategyError for a name this side
        already has, a spec without the :attr:`requires` capability or a class that does not
        derive from the side's base class.
        """

        def add(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise StrategyError(f"{cls!r} is not a {self.base.__name__}")
            for name in names:
                spec = get_strategy(name)
                if self.requires and not getattr(spec, self.requires):
                    raise StrategyError(f"strategy {name!r} has no {self.requires} capability")
                if spec.name in self._classes:
                    raise StrategyError(f"strategy {name!r} has a {self.side} half already")
                self._classes[spec.name] = cls
            return cls

        if not names:
            raise StrategyError(f"register a {self.side} half under at least one name")
        return add

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``: UnknownStrategy for an unregistered name,
        StrategyError if this side lacks it."""
        spec = get_strategy(name)
        if spec.name not in self._classes:
            raise StrategyError(f"strategy {spec.name!r} has no {self.side} implementation")
        return self._classes[spec.name]

    def unregister(self, name: str) -> None:
        """Forget ``name``'s class (tests that register a strategy from outside clean up)."""
        self._classes.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The strategy names this side implements, in registration order."""
        return tuple(self._classes)


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
    return strategies_with("has_rounds")


def strategies_with(capability: str) -> tuple[str, ...]:
    """The registered names whose spec has ``capability`` (a boolean attribute of
    :class:`StrategySpec`: ``has_rounds``, ``shared_pre_equalizer``, ``secure_aggregation``,
    ``index_bits``), in registration order."""
    return tuple(name for name, spec in _REGISTRY.items() if getattr(spec, capability))


def unregister_strategy(name: str) -> None:
    """Remove ``name``'s spec (tests that register a strategy from outside clean up)."""
    _REGISTRY.pop(name, None)


register_strategy(
    StrategySpec(
        "fed",
        "admm",
        label="Federated (shared F)",
        description="shared F by federated ADMM",
        proto_code=pb.FED,
        shared_pre_equalizer=True,
        secure_aggregation=True,
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
        index_bits=True,
        color="tab:red",
        marker="v",
    )
)
