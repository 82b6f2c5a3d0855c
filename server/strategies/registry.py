"""The AP halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Each AP half registers itself in its own module::

    @register_ap_strategy("fed")
    class SharedAdmm(AdmmStrategy): ...

and :mod:`semalign.server.strategies` imports every module of the package, so a new module is
found without another edit. A strategy's secure-aggregation variant (``aggregation="secure"``,
for specs with the ``secure_aggregation`` capability) registers the same way, keyed by the
aggregation::

    @register_ap_strategy("fed", aggregation="secure")
    class SecureSharedAdmm(SharedAdmm): ...
"""

from __future__ import annotations

from collections.abc import Callable

from semalign.common.strategies import Implementations
from semalign.server.strategies.base import ApStrategy

#: every registered AP half, by strategy name (plain aggregation)
AP_STRATEGIES: Implementations[ApStrategy] = Implementations("access-point", ApStrategy)
#: the AP halves of the secure-aggregation variants, by strategy name
SECURE_AP_STRATEGIES: Implementations[ApStrategy] = Implementations(
    "secure-aggregation access-point", ApStrategy, requires="secure_aggregation"
)
_BY_AGGREGATION = {"plain": AP_STRATEGIES, "secure": SECURE_AP_STRATEGIES}

A = type[ApStrategy]


def ap_strategies(aggregation: str) -> Implementations[ApStrategy]:
    """The AP halves registered for ``aggregation`` (``plain`` or ``secure``)."""
    return _BY_AGGREGATION[aggregation]


def register_ap_strategy(name: str, *, aggregation: str = "plain") -> Callable[[A], A]:
    """Class decorator: ``cls`` is the AP half of strategy ``name`` under ``aggregation`` (its
    ``name`` attribute is set to it); errors as :meth:`Implementations.register` (a secure
    variant of a strategy without the ``secure_aggregation`` capability: StrategyError)."""
    register = ap_strategies(aggregation).register(name)

    def add(cls: A) -> A:
        cls = register(cls)
        cls.name = name
        return cls

    return add
