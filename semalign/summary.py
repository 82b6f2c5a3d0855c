"""The results table a person reads at the end of ``simulate`` and ``run``."""

from __future__ import annotations

import math
from typing import Any


def print_summary(results: dict[str, Any], console) -> None:
    from rich.table import Table

    table = Table(
        title=f"strategy {results['strategy']} - mean over {len(results['seeds'])} seed(s)"
    )
    for col in ("user", "encoder", "native acc", "aligned acc", "MSE"):
        table.add_column(col, justify="left" if col in ("user", "encoder") else "right")

    def fmt(v, std=None, digits=3):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")

    for u in results["users"]:
        table.add_row(
            u["name"],
            u["encoder"],
            fmt(u["native_accuracy"]),
            fmt(u["accuracy"], u.get("accuracy_std")),
            fmt(u["mse"], digits=4),
        )
    table.add_section()
    table.add_row(
        "mean",
        "",
        fmt(results["mean_native_accuracy"]),
        fmt(results["mean_accuracy"], results["std_accuracy"]),
        fmt(results["mean_mse"], digits=4),
    )
    console.print(table)
    dropped = {k: v for b in results["seeds"] for k, v in b["dropped"].items()}
    if dropped:
        console.print(f"[yellow]dropped users: {dropped}[/yellow]")
