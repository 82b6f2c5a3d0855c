"""The AP halves of the strategies, by the names of :mod:`semalign.common.strategies`.

Adding a strategy: its spec in ``common/strategies.py``, its AP half here (a subclass of
:class:`~semalign.server.strategies.base.ApStrategy`), its user half in
``semalign.client.strategies``.
"""

from __future__ import annotations

from semalign.common.config import AlignmentConfig
from semalign.common.strategies import implementation
from semalign.server.strategies.base import ApStrategy
from semalign.server.strategies.first_k import FirstK
from semalign.server.strategies.per_user_admm import PerUserAdmm
from semalign.server.strategies.shared_admm import SharedAdmm
from semalign.server.strategies.top_k import TopK

AP_STRATEGIES: dict[str, type[ApStrategy]] = {
    "fed": SharedAdmm,
    "multi-link": PerUserAdmm,
    "first-k": FirstK,
    "top-k": TopK,
}


def make_ap_strategy(config: AlignmentConfig, cdim: int) -> ApStrategy:
    """The AP half of ``config.strategy`` for an AP latent of ``cdim`` complex features."""
    return implementation(AP_STRATEGIES, config.strategy, "access-point")(config, cdim)


__all__ = ["AP_STRATEGIES", "ApStrategy", "make_ap_strategy"]
