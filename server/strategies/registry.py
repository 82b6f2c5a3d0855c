"""The AP halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Each AP half registers itself in its own module::

    @register_ap_strategy("fed")
    class SharedAdmm(AdmmStrategy): ...

and :mod:`semalign.server.strategies` imports every module of the package, so a new module is
found without another edit.
"""

from __future__ import annotations

from collections.abc import Callable

from semalign.common.strategies import Implementations
from semalign.server.strategies.base import ApStrategy

#: every registered AP half, by strategy name
AP_STRATEGIES: Implementations[ApStrategy] = Implementations("access-point", ApStrategy)

A = type[ApStrategy]


def register_ap_strategy(name: str) -> Callable[[A], A]:
    """Class decorator: ``cls`` is the AP half of strategy ``name`` (its ``name`` attribute is
    set to it); errors as :meth:`Implementations.register`."""
    register = AP_STRATEGIES.register(name)

    def add(cls: A) -> A:
        cls = register(cls)
        cls.name = name
        return cls

    return add
