"""The user halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Each user half registers itself in its own module, under every name it serves::

    @register_user_strategy("first-k", "top-k")
    class BaselineUser(UserStrategy): ...

and :mod:`semalign.client.strategies` imports every module of the package, so a new module is
found without another edit. A strategy's secure-aggregation variant (``aggregation="secure"``,
for specs with the ``secure_aggregation`` capability) registers the same way, keyed by the
aggregation: ``@register_user_strategy("fed", aggregation="secure")``.
"""

from __future__ import annotations

from collections.abc import Callable

from semalign.client.strategies.base import UserStrategy
from semalign.common.strategies import Implementations

#: every registered user half, by strategy name (plain aggregation)
USER_STRATEGIES: Implementations[UserStrategy] = Implementations("user", UserStrategy)
#: the user halves of the secure-aggregation variants, by strategy name
SECURE_USER_STRATEGIES: Implementations[UserStrategy] = Implementations(
    "secure-aggregation user", UserStrategy, requires="secure_aggregation"
)
_BY_AGGREGATION = {"plain": USER_STRATEGIES, "secure": SECURE_USER_STRATEGIES}

U = type[UserStrategy]


def user_strategies(aggregation: str) -> Implementations[UserStrategy]:
    """The user halves registered for ``aggregation`` (``plain`` or ``secure``)."""
    return _BY_AGGREGATION[aggregation]


def register_user_strategy(*names: str, aggregation: str = "plain") -> Callable[[U], U]:
    """Class decorator: ``cls`` is the user half of every strategy in ``names`` under
    ``aggregation``: ``@register_user_strategy("fed", "multi-link")``; errors as
    :meth:`Implementations.register`."""
    return user_strategies(aggregation).register(*names)
