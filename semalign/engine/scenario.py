"""A scenario: the AP's and the users' latents loaded once, and the state machines built from
them for one session, the same way in every transport."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semalign.client.task import data_key, is_default, task_user_data
from semalign.client.user import User, UserData, build_user, user_data_from_cache
from semalign.common.config import AlignmentConfig
from semalign.common.errors import LatentsError
from semalign.common.latents import check_aligned, load_encoder_splits
from semalign.common.records import RunResult, SeedResult
from semalign.server.access_point import AccessPoint, build_access_point
from semalign.server.results import run_result


@dataclass
class Scenario:
    """Latents loaded once for many sessions: the AP's and each user's (by encoder)."""

    latents_dir: Path
    ap_encoder: str
    user_encoders: list[str]
    ap_train: np.ndarray  # (n_train, d)
    ap_test: np.ndarray  # (n_test, d)
    user_data: dict[tuple[str, float], UserData]

    def data_for(
        self, encoder: str, pilot_fraction: float, config: AlignmentConfig | None = None
    ) -> UserData:
        """A user's data, loaded once per what it depends on (``config``: its research options,
        :mod:`semalign.client.task`; ``None``: the paper's user side)."""
        if config is not None and not is_default(config):
            key = (encoder, *data_key(config))
            if key not in self.user_data:
                self.user_data[key] = task_user_data(self.latents_dir, encoder, config)
            return self.user_data[key]
        key = (encoder, pilot_fraction)
        if key not in self.user_data:
            self.user_data[key] = user_data_from_cache(self.latents_dir, encoder, pilot_fraction)
        return self.user_data[key]


def user_names(encoders: list[str]) -> list[str]:
    """Stable user ids: user1..userL (order of the --users list)."""
    return [f"user{i + 1}" for i in range(len(encoders))]


def load_scenario(latents_dir: str | Path, ap_encoder: str, user_encoders: list[str]) -> Scenario:
    """Load and cross-check the AP's and the users' latents (raises LatentsError)."""
    if not user_encoders:
        raise LatentsError("at least one user encoder is needed")
    latents_dir = Path(latents_dir)
    named = {
        enc: load_encoder_splits(latents_dir, enc)
        for enc in dict.fromkeys([ap_encoder, *user_encoders])
    }
    check_aligned(named)
    ap = named[ap_encoder]
    return Scenario(
        latents_dir=latents_dir,
        ap_encoder=ap_encoder,
        user_encoders=list(user_encoders),
        ap_train=ap["train"].latents,
        ap_test=ap["test"].latents,
        user_data={},
    )


def build_session(scenario: Scenario, config: AlignmentConfig) -> tuple[AccessPoint, list[User]]:
    """The AP and user state machines for one seed (same construction in every transport)."""
    ap = build_access_point(scenario.ap_train, config, len(scenario.user_encoders))
    count = len(scenario.user_encoders)
    users = [
        build_user(
            name,
            enc,
            scenario.data_for(enc, config.pilot_fraction, config),
            config,
            ordinal,
            count,
        )
        for ordinal, (name, enc) in enumerate(
            zip(user_names(scenario.user_encoders), scenario.user_encoders, strict=True)
        )
    ]
    return ap, users


def scenario_result(
    scenario: Scenario, config: AlignmentConfig, blocks: list[SeedResult]
) -> RunResult:
    """The run's results: every seed's block plus the scenario (latents, AP, users)."""
    extra = {
        "latents": str(scenario.latents_dir),
        "ap": scenario.ap_encoder,
        "users": scenario.user_encoders,
    }
    return run_result(config, blocks, extra)
