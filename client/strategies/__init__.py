"""The user halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Every module of this package is imported here, so each user half registers itself
(:data:`~semalign.client.strategies.registry.register_user_strategy` in its own module); adding
a strategy: its spec in ``common/strategies.py``, one module here (a subclass of
:class:`~semalign.client.strategies.base.UserStrategy`), one in ``semalign.server.strategies``.
"""

from __future__ import annotations

import importlib
import pkgutil

from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.client.strategies.registry import (
    SECURE_USER_STRATEGIES,
    USER_STRATEGIES,
    register_user_strategy,
    user_strategies,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def make_user_strategy(name: str, user: UserContext, aggregation: str = "plain") -> UserStrategy:
    """The user half of strategy ``name`` under ``aggregation`` (plain, or its secure-aggregation
    variant) for ``user`` (StrategyError, a ValueError, if none)."""
    return user_strategies(aggregation).get(name)(user, name)


__all__ = [
    "SECURE_USER_STRATEGIES",
    "USER_STRATEGIES",
    "UserStrategy",
    "make_user_strategy",
    "register_user_strategy",
]
