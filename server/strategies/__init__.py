"""The AP halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Every module of this package is imported here, so each AP half registers itself
(:func:`~semalign.server.strategies.registry.register_ap_strategy` in its own module); adding a
strategy: its spec in ``common/strategies.py``, one module here (a subclass of
:class:`~semalign.server.strategies.base.ApStrategy`), one in ``semalign.client.strategies``.
"""

from __future__ import annotations

import importlib
import pkgutil

from semalign.common.config import AlignmentConfig
from semalign.server.strategies.base import ApStrategy
from semalign.server.strategies.registry import (
    AP_STRATEGIES,
    SECURE_AP_STRATEGIES,
    ap_strategies,
    register_ap_strategy,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def make_ap_strategy(config: AlignmentConfig, cdim: int) -> ApStrategy:
    """The AP half of ``config.strategy`` under ``config.aggregation`` (plain, or its
    secure-aggregation variant) for an AP latent of ``cdim`` complex features."""
    return ap_strategies(config.aggregation).get(config.strategy)(config, cdim)


__all__ = [
    "AP_STRATEGIES",
    "SECURE_AP_STRATEGIES",
    "ApStrategy",
    "make_ap_strategy",
    "register_ap_strategy",
]
