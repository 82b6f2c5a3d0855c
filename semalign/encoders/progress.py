"""Rich progress bars for encoding (console output belongs to the CLI and to ``progress=True``)."""

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

from semalign.encoders.cache import Reporter


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
        self._task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()
        self.progress.stop()

    def begin(self, encoder: str, phase: str, total: int) -> None:
        self.end()
        unit = "steps" if phase == "train" else "images"
        self._task = self.progress.add_task(f"{encoder} {phase} ({unit})", total=total)

    def update(self, done: int, total: int) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=done, total=total)

    def end(self) -> None:
        if self._task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self._task, completed=task.total)
            self._task = None
