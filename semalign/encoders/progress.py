"""The one progress display of encoding: rich bars on stderr (``semalign encode`` and
``ensure_latents(progress=True)``), or plain lines where stderr is not a terminal (a log file,
CI, ``nohup``), where rich would draw nothing until the end."""

from __future__ import annotations

import time
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

#: Plain-line mode: one line per this fraction of a phase (and at its start and end).
LINE_STEP = 0.1


class RichReporter(Reporter):
    """One progress bar per phase (train / encode) of each encoder, on stderr; on a console that
    is not a terminal, one line at the start of each phase, every 10 % of it and at its end
    (``mobilenetv3_small_075 train: 1250/3750 steps (33 %), 41 s``)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.lines = not self.console.is_terminal
        # plain-line mode, per encoder: (phase, unit, total, started, last fraction printed)
        self._phases: dict[str, tuple[str, str, int, float, float]] = {}
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
        if not self.lines:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.lines:
            self.progress.stop()

    def begin(self, encoder: str, phase: str, total: int) -> None:
        self.end(encoder)
        unit = "steps" if phase == "train" else "images"
        if self.lines:
            self._phases[encoder] = (phase, unit, total, time.perf_counter(), 0.0)
            self._line(encoder, 0)
            return
        self._tasks[encoder] = self.progress.add_task(f"{encoder} {phase} ({unit})", total=total)

    def update(self, encoder: str, done: int, total: int) -> None:
        if self.lines:
            state = self._phases.get(encoder)
            if state is not None:
                phase, unit, _, started, last = state
                fraction = done / total if total else 1.0
                if fraction - last >= LINE_STEP - 1e-9 and fraction < 1.0:
                    self._phases[encoder] = (phase, unit, total, started, fraction)
                    self._line(encoder, done)
            return
        task = self._tasks.get(encoder)
        if task is not None:
            self.progress.update(task, completed=done, total=total)

    def end(self, encoder: str) -> None:
        if self.lines:
            if encoder in self._phases:
                self._line(encoder, self._phases[encoder][2])
                del self._phases[encoder]
            return
        task = self._tasks.pop(encoder, None)
        if task is not None:
            self.progress.update(task, completed=self._total(task))

    def _total(self, task: Any) -> float:
        for item in self.progress.tasks:
            if item.id == task:
                return item.total or 0
        return 0

    def _line(self, encoder: str, done: int) -> None:
        phase, unit, total, started, _ = self._phases[encoder]
        percent = 100 * done / total if total else 100
        elapsed = time.perf_counter() - started
        self.console.print(
            f"{encoder} {phase}: {done}/{total} {unit} ({percent:.0f} %), {elapsed:.0f} s",
            highlight=False,
            markup=False,
        )
