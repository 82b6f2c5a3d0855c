"""The AP's live display (rich, on stderr): progress per round, then the result tables."""

from __future__ import annotations

import time
from typing import Any

from semalign.common.records import RunResult, SeedResult
from semalign.common.strategies import get_strategy


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


class Display:
    """Live progress and the final tables, on stderr; ``quiet`` turns the progress off."""

    def __init__(self, config, seeds: list[int], users: int, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.config, self.quiet, self.users = config, quiet, users
        self.steps = config.iterations if get_strategy(config.strategy).has_rounds else 1
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=quiet,
        )
        total = self.steps * len(seeds)
        self.task = self.progress.add_task(config.strategy, total=total, info="")
        self.first_joined_at: float | None = None

    def print(self, text: str) -> None:
        """A line on the console unless quiet."""
        if not self.quiet:
            self.console.print(text)

    def status(self, text: str) -> None:
        self.progress.update(self.task, info=text)

    def joined(self, ids: list[str]) -> None:
        self.status(f"waiting for users: {len(ids)}/{self.users} joined")

    def on_joined(self, seed: int, ids: list[str]) -> None:
        if self.first_joined_at is None:
            self.first_joined_at = time.perf_counter()
        self.status(f"seed {seed}: {len(ids)}/{self.users} users joined, handshake")

    def on_round(self, seed: int, record, wire) -> None:
        down, up = sum(wire.bytes_down.values()), sum(wire.bytes_up.values())
        self.progress.update(
            self.task,
            advance=1,
            info=(
                f"seed {seed} round {record.round + 1}/{self.config.iterations} "
                f"pilot MSE (whitened) {record.mse:.4f} "
                f"primal/dual residual {record.primal_residual:.2e}/{record.dual_residual:.2e} "
                f"down {fmt_bytes(down)} up {fmt_bytes(up)} latency {_ms(wire.latency_s)}"
            ),
        )

    def on_seed(self, block: SeedResult) -> None:
        if self.steps == 1:
            self.progress.update(self.task, advance=1)
        self.status(f"seed {block.seed}: mean accuracy {block.mean_accuracy:.3f}")

    def summary(self, results: RunResult) -> None:
        """The simulator's tables, the wire table and the deployment line."""
        from rich.table import Table

        from semalign.summary import print_summary

        print_summary(results, self.console)
        net = results.network
        if net is None:  # not a networked run: the simulator's tables only
            return
        table = Table(title="wire (gRPC boundary)")
        for col in ("rounds", "latency p50", "latency p95", "down/round", "up/round"):
            table.add_column(col, justify="right")
        table.add_row(
            str(net.rounds),
            _ms(net.latency_p50_s),
            _ms(net.latency_p95_s),
            fmt_bytes(net.bytes_down_per_round or 0),
            fmt_bytes(net.bytes_up_per_round or 0),
        )
        self.console.print(table)
        dep = net.deployment
        if dep:
            self.console.print(deployment_line(dep))


def deployment_line(dep: dict[str, Any]) -> str:
    prepare = dep.get("prepare_s")
    return (
        f"deployment: {dep.get('mode')}, {dep.get('users')} user processes, "
        + (f"latents ready after {prepare:.1f} s, " if prepare is not None else "")
        + f"users joined {dep.get('startup_s', 0):.1f} s later, "
        f"total {dep.get('total_s', 0):.1f} s"
    )
