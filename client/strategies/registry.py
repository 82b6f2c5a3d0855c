"""The user halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Each user half registers itself in its own module, under every name it serves::

    @register_user_strategy("first-k", "top-k")
    class BaselineUser(UserStrategy): ...

and :mod:`semalign.client.strategies` imports every module of the package, so a new module is
found without another edit.
"""

from __future__ import annotations

from semalign.client.strategies.base import UserStrategy
from semalign.common.strategies import Implementations

#: every registered user half, by strategy name
USER_STRATEGIES: Implementations[UserStrategy] = Implementations("user", UserStrategy)

#: class decorator: ``@register_user_strategy("fed", "multi-link")``
register_user_strategy = USER_STRATEGIES.register
