"""The one progress display of encoding: rich bars on stderr (``semalign encode`` and
``ensure_latents(progress=True)``), or plain lines where stderr is not a terminal (a log file,
CI, ``nohup``), where rich would draw nothing until the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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

#: Plain-line mode: one line per 1/LINE_STEPS of a phase (and at its start and end).
LINE_STEPS = 10


@dataclass
class _Phase:
    """A phase being reported in plain-line mode."""

    label: str  # "<encoder> <phase>"
    unit: str
    total: int
    started: float = field(default_factory=time.perf_counter)
    step: int = 0  # last tenth printed


class RichReporter(Reporter):
    """One progress bar per phase (train / encode) of each encoder, on stderr; on a console that
    is not a terminal, one line at the start of each phase, every 10 % of it and at its end
    (``mobilenetv3_small_075 train: 1250/3750 steps (33 %), 41 s``)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.lines = not self.console.is_terminal
        self._phases: dict[str, _Phase] = {}  # plain-line mode, per encoder
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
            self._phases[encoder] = _Phase(f"{encoder} {phase}", unit, total)
            self._line(self._phases[encoder], 0)
            return
        self._tasks[encoder] = self.progress.add_task(f"{encoder} {phase} ({unit})", total=total)

    def update(self, encoder: str, done: int, total: int) -> None:
        if self.lines:
            state = self._phases.get(encoder)
            if state is not None and 0 < done < total:
                step = LINE_STEPS * done // total
                if step > state.step:
                    state.step = step
                    self._line(state, done)
            return
        task = self._tasks.get(encoder)
        if task is not None:
            self.progress.update(task, completed=done, total=total)

    def end(self, encoder: str) -> None:
        if self.lines:
            state = self._phases.pop(encoder, None)
            if state is not None:
                self._line(state, state.total)
            return
        task = self._tasks.pop(encoder, None)
        if task is not None:
            self.progress.update(task, completed=self._total(task))

    def _total(self, task: Any) -> float:
        for item in self.progress.tasks:
            if item.id == task:
                return item.total or 0
        return 0

    def _line(self, state: _Phase, done: int) -> None:
        percent = 100 * done / state.total if state.total else 100
        elapsed = time.perf_counter() - state.started
        self.console.print(
            f"{state.label}: {done}/{state.total} {state.unit} ({percent:.0f} %), {elapsed:.0f} s",
            highlight=False,
            markup=False,
        )
