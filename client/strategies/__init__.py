"""The user halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Adding a strategy: its spec in ``common/strategies.py``, its user half here (a subclass of
:class:`~semalign.client.strategies.base.UserStrategy`), its AP half in
``semalign.server.strategies``.
"""

from __future__ import annotations

from semalign.client.strategies.admm import AdmmUser
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.client.strategies.baseline import BaselineUser
from semalign.common.strategies import implementation

USER_STRATEGIES: dict[str, type[UserStrategy]] = {
    "fed": AdmmUser,
    "multi-link": AdmmUser,
    "first-k": BaselineUser,
    "top-k": BaselineUser,
}


def make_user_strategy(name: str, user: UserContext) -> UserStrategy:
    """The user half of strategy ``name`` for ``user`` (StrategyError, a ValueError, if none)."""
    return implementation(USER_STRATEGIES, name, "user")(user, name)


__all__ = ["USER_STRATEGIES", "UserStrategy", "make_user_strategy"]
