"""``multi-link``: one F_l, Z_l, U_l per user (no averaging), each starting from the same F^(0)."""

from __future__ import annotations

import numpy as np
from semalign.common.errors import UsageError
from semalign.common.threads import single_thread
from semalign.server.strategies.admm import AdmmStrategy, AdmmVariables
from semalign.server.strategies.base import ApContext, UserState
from semalign.server.strategies.registry import register_ap_strategy


@register_ap_strategy("multi-link")
class PerUserAdmm(AdmmStrategy):
    """Independent ADMM per link; residuals are the root sum of squares over users."""

    per_user_encoding = True

    def start(self, ap: ApContext) -> None:
        super().start(ap)
        self.links: dict[str, AdmmVariables] = {}

    def add_user(self, state: UserState) -> None:
        self.links[state.user_id] = AdmmVariables.initial(self.shared.f.copy())

    def variables(self, state: UserState | None) -> AdmmVariables:
        if state is None:
            raise UsageError("multi-link encodes per user: name the receiving user")
        return self.links[state.user_id]

    def step(self, users: list[UserState]) -> tuple[float, float]:
        primal_sq = dual_sq = 0.0
        local = self.local_steps(users)
        with single_thread():
            for state, f in zip(users, local, strict=True):
                variables = self.links[state.user_id]
                p, d = variables.consensus(f, self.power_budget, self.config.rho)
                primal_sq, dual_sq = primal_sq + p**2, dual_sq + d**2
        return float(np.sqrt(primal_sq)), float(np.sqrt(dual_sq))

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Besides the shared F^(0): each user's F_l, Z_l, U_l."""
        out = super().checkpoint_state()
        for user_id, v in self.links.items():
            out.update(
                {f"link.{user_id}.f": v.f, f"link.{user_id}.z": v.z, f"link.{user_id}.u": v.u}
            )
        return out

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().restore_state(arrays)
        for user_id in self.links:
            keys = (f"link.{user_id}.{name}" for name in "fzu")
            self.links[user_id] = AdmmVariables(*(arrays[key] for key in keys))
