"""The results table a person reads at the end of ``simulate`` and ``run``."""

from __future__ import annotations

import math

from semalign.common.records import Provenance, RunResult


def _fmt(v: float | None, std: float | None = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def print_summary(run: RunResult, console) -> None:
    """Per-user (with its SNR where recorded) and mean accuracy/MSE over seeds, any dropped
    users, then where the run was made (its provenance, where recorded; a file of any version
    read with :meth:`RunResult.from_dict`: an older one has no SNRs and no provenance).
    """
    from rich.table import Table

    snr = any(u.snr_db is not None for u in run.users)
    table = Table(title=f"strategy {run.strategy} - mean over {len(run.seeds)} seed(s)")
    columns = ("user", "encoder", *(("SNR dB",) if snr else ()), "native acc", "aligned acc")
    for col in (*columns, "MSE"):
        table.add_column(col, justify="left" if col in ("user", "encoder") else "right")
    for u in run.users:
        table.add_row(
            u.name,
            u.encoder,
            *((_fmt(u.snr_db, digits=1),) if snr else ()),
            _fmt(u.native_accuracy),
            _fmt(u.accuracy, u.accuracy_std),
            _fmt(u.mse, digits=4),
        )
    table.add_section()
    table.add_row(
        "mean",
        "",
        *(("",) if snr else ()),
        _fmt(run.mean_native_accuracy),
        _fmt(run.mean_accuracy, run.std_accuracy),
        _fmt(run.mean_mse, digits=4),
    )
    console.print(table)
    dropped = {k: v for s in run.seeds for k, v in s.dropped.items()}
    if dropped:
        console.print(f"[yellow]dropped users: {dropped}[/yellow]")
    if run.provenance:
        console.print(provenance_line(run.provenance), highlight=False, markup=False)


def provenance_line(block: Provenance) -> str:
    """One line of a provenance block: version, commit (``+dirty``), host, start, latents."""
    commit = block.git_commit
    where = f"commit {commit[:12]}{'+dirty' if block.git_dirty else ''}" if commit else ""
    parts = [
        f"semalign {block.semalign_version}",
        where or "not a git checkout",
        f"on {block.host}",
        f"started {block.started_at}",
    ]
    if block.latents_id:
        parts.append(f"latents {block.latents_id}")
    return ", ".join(parts)
