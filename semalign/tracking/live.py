"""Session runs tracked as they happen: each seed one tracked run, each round logged when it
ends (``simulate``, and the AP of ``run`` and ``ap``).

A tracking failure never stops the session: the first one is kept in :attr:`SeedRuns.error`
(and logged), and nothing more is sent to the backend.
"""

from __future__ import annotations

import logging
from typing import Any

from semalign.common.records import RoundRecord, SeedResult
from semalign.tracking.runs import TrackedRun, Tracker, from_seed_block, round_metric_values

log = logging.getLogger(__name__)


class SeedRuns:
    """One tracked run per seed of a session run, logged round by round.

    Args:
        tracker: an open backend (:func:`semalign.tracking.open_tracker`).
        name: the runs' name; `` seed <seed>`` is appended.
        params: the run's parameters (the config, the encoders); ``seed`` is added per seed.
        tags: the provenance (strings).
        user_encoders: user id -> encoder, logged as the parameters ``<user>/encoder``.
    """

    def __init__(
        self,
        tracker: Tracker,
        name: str,
        params: dict[str, Any],
        tags: dict[str, Any] | None = None,
        user_encoders: dict[str, str] | None = None,
    ) -> None:
        self.tracker, self.name = tracker, name
        self.params = {**params, **{f"{u}/encoder": e for u, e in (user_encoders or {}).items()}}
        self.tags = {k: "" if v is None else str(v) for k, v in (tags or {}).items()}
        self.live: dict[int, Any] = {}
        self.finished = 0
        self.error: str | None = None

    def _run(self, seed: int) -> Any:
        if seed not in self.live:
            params = {**self.params, "seed": seed}
            run = TrackedRun(f"{self.name} seed {seed}", params, self.tags, group=self.name)
            self.live[seed] = self.tracker.start(run)
        return self.live[seed]

    def _guard(self, action, *args: Any) -> None:  # noqa: ANN001
        if self.error is not None:
            return
        try:
            action(*args)
        except Exception as exc:  # a backend's failure must not stop the session
            self.error = str(exc) or type(exc).__name__
            log.warning("tracking stopped after a failure: %s", self.error)

    def on_round(self, seed: int, record: RoundRecord) -> None:
        """Log one round."""
        self._guard(lambda: self._run(seed).round(record.round, round_metric_values(record)))

    def on_seed(self, block: SeedResult) -> None:
        """Finish the seed's run with its final metrics."""

        def finish() -> None:
            final = from_seed_block(self.name, {}, block).final
            self._run(block.seed).finish(final)
            self.finished += 1

        self._guard(finish)
