"""The results table a person reads at the end of ``simulate`` and ``run``."""

from __future__ import annotations

import math
from typing import Any

from semalign.common.records import RunResult


def _fmt(v: float | None, std: float | None = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def print_summary(results: RunResult | dict[str, Any], console) -> None:
    """Per-user and mean accuracy/MSE over seeds, then any dropped users.

    ``results``: a :class:`RunResult` or its results-JSON dict (the networked AP's).
    """
    from rich.table import Table

    run = results if isinstance(results, RunResult) else RunResult.from_dict(results)
    table = Table(title=f"strategy {run.strategy} - mean over {len(run.seeds)} seed(s)")
    for col in ("user", "encoder", "native acc", "aligned acc", "MSE"):
        table.add_column(col, justify="left" if col in ("user", "encoder") else "right")
    for u in run.users:
        table.add_row(
            u.name,
            u.encoder,
            _fmt(u.native_accuracy),
            _fmt(u.accuracy, u.accuracy_std),
            _fmt(u.mse, digits=4),
        )
    table.add_section()
    table.add_row(
        "mean",
        "",
        _fmt(run.mean_native_accuracy),
        _fmt(run.mean_accuracy, run.std_accuracy),
        _fmt(run.mean_mse, digits=4),
    )
    console.print(table)
    dropped = {k: v for s in run.seeds for k, v in s.dropped.items()}
    if dropped:
        console.print(f"[yellow]dropped users: {dropped}[/yellow]")
