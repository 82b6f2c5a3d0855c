"""``fed``: one pre-equalizer F shared by all users, the average of their local F_l (eq. 8)."""

from __future__ import annotations

from semalign.common.threads import single_thread
from semalign.server.strategies.admm import AdmmStrategy, AdmmVariables
from semalign.server.strategies.base import UserState
from semalign.server.strategies.registry import register_ap_strategy


@register_ap_strategy("fed")
class SharedAdmm(AdmmStrategy):
    """Federated ADMM: F = (1/L) sum_l F_l, then one Z and U for everyone."""

    def variables(self, state: UserState | None) -> AdmmVariables:
        return self.shared

    def step(self, users: list[UserState]) -> tuple[float, float]:
        f = self.local_mean(users)
        with single_thread():
            return self.shared.consensus(f, self.power_budget, self.config.rho)
