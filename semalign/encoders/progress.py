"""The one progress display of encoding: rich bars on stderr (``semalign encode`` and
``ensure_latents(progress=True)``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from semalign.encoders.reporter import Reporter


class RichReporter(Reporter):
    """One progress bar per phase (train / encode) of each encoder, on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, encoder: str, phase: str, total: int) -> None:
        self.end(encoder)
        unit = "steps" if phase == "train" else "images"
        self._tasks[encoder] = self.progress.add_task(f"{encoder} {phase} ({unit})", total=total)

    def update(self, encoder: str, done: int, total: int) -> None:
        task = self._tasks.get(encoder)
        if task is not None:
            self.progress.update(task, completed=done, total=total)

    def end(self, encoder: str) -> None:
        task = self._tasks.pop(encoder, None)
        if task is not None:
            self.progress.update(task, completed=self._total(task))

    def _total(self, task: Any) -> float:
        for item in self.progress.tasks:
            if item.id == task:
                return item.total or 0
        return 0
