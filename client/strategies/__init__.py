"""The user halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Adding a strategy: its spec in ``common/strategies.py``, its user half here (a subclass of
:class:`~semalign.client.strategies.base.UserStrategy`), its AP half in
``semalign.server.strategies``.
"""

from __future__ import annotations

from semalign.client.strategies.admm import AdmmUser
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.client.strategies.baseline import BaselineUser
from semalign.common.errors import ProtocolError
from semalign.common.strategies import get_strategy

USER_STRATEGIES: dict[str, type[UserStrategy]] = {
    "fed": AdmmUser,
    "multi-link": AdmmUser,
    "first-k": BaselineUser,
    "top-k": BaselineUser,
}


def make_user_strategy(name: str, user: UserContext) -> UserStrategy:
    """The user half of strategy ``name`` for ``user``; ProtocolError if there is none."""
    spec = get_strategy(name)
    cls = USER_STRATEGIES.get(spec.name)
    if cls is None:
        raise ProtocolError(f"strategy {spec.name!r} has no user implementation")
    return cls(user, spec.name)


__all__ = ["USER_STRATEGIES", "UserStrategy", "make_user_strategy"]
