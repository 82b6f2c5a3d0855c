"""``semalign audit --figure``: the best attack's R^2 (``r2_by_round``, a lower bound on
leakage) vs rounds, one panel per target, one line per round protocol, aggregation and drop
(mean over users and seeds, band: the users' range), with the chance level."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from semalign.common.io import atomic_write_bytes
from semalign.engine.audit import UserLeakage

#: line colors per session kind (others cycle through matplotlib's defaults)
COLORS = {"paper": "tab:red", "compact": "tab:blue", "compact, secure": "tab:green"}
#: line styles per session kind (a drop case is dashed)
STYLES = {True: "--", False: "-"}


def session_label(record: UserLeakage) -> str:
    """``paper``, ``compact``, ``compact, secure`` (the aggregation when not plain), and
    ``, drop at r`` for a session with a drop."""
    plain = record.aggregation == "plain"
    label = record.protocol if plain else f"{record.protocol}, {record.aggregation}"
    return label if record.drop_round is None else f"{label}, drop at {record.drop_round}"


def curves(
    records: list[UserLeakage], field: str = "r2_by_round"
) -> dict[str, dict[str, np.ndarray]]:
    """target -> session label -> (users x seeds, rounds) R^2 after each round (NaN-padded;
    a session without uploads has no rounds: R^2 0 after each)."""
    grouped: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        grouped[r.target][session_label(r)].append(getattr(r, field))
    out: dict[str, dict[str, np.ndarray]] = {}
    for target, by_protocol in grouped.items():
        out[target] = {}
        for protocol, rows in by_protocol.items():
            width = max((len(row) for row in rows), default=0)
            table = np.full((len(rows), width), np.nan)
            for i, row in enumerate(rows):
                table[i, : len(row)] = row
            out[target][protocol] = table
    return out


def draw_leakage(records: list[UserLeakage], path: str | Path) -> Path:
    """Draw the figure to ``path`` (format from its suffix), written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(records)
    fig, axes = plt.subplots(1, max(len(data), 1), figsize=(5 * max(len(data), 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (target, by_protocol) in zip(axes, data.items(), strict=False):
        for protocol, table in by_protocol.items():
            if table.shape[1] == 0:
                continue
            rounds = np.arange(1, table.shape[1] + 1)
            color = COLORS.get(protocol.split(", drop")[0])
            style = STYLES["drop" in protocol]
            mean = np.nanmean(table, axis=0)
            ax.plot(rounds, mean, color=color, ls=style, lw=1.8, label=protocol)
            ax.fill_between(
                rounds, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=color, alpha=0.15
            )
        chance = [r.chance_r2 for r in records if r.target == target]
        if chance:
            ax.axhline(max(chance), color="grey", ls=":", lw=1, label="chance (largest)")
        ax.set_title(f"target: {target}")
        ax.set_xlabel("rounds T the AP has seen")
        ax.set_ylabel("R$^2$ of Y, best attack (lower bound)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    suffix = Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buffer, format=suffix, dpi=150)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
