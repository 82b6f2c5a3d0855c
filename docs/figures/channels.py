"""Accuracy vs compression factor under channel correlation and CSI error (docs/results.md).

Reads a sweep table holding the two grids of docs/results.md ("Channels") and writes
``channels-accuracy-vs-zeta.png``: left, Kronecker correlation rho (rho_tx = rho_rx); right,
CSI error variance. Each point is the mean over seeds of the network accuracy (the mean over
users of each run), with a band of +/- one standard deviation over seeds.

    python docs/figures/channels.py TABLE.csv [OUT.png]
"""

from __future__ import annotations

import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semalign.experiments.table import read_table  # noqa: E402


def curves(rows: list[dict]) -> dict[str, dict[float, list[float]]]:
    """channel -> zeta -> network accuracy per seed."""
    runs: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    for row in rows:
        runs[(row["channel"], row["zeta"], row["seed"])].append(row["accuracy"])
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (channel, zeta, _seed), accuracies in runs.items():
        out[channel][zeta].append(float(np.mean(accuracies)))
    return out


def panel(ax, data, channels: list[tuple[str, str]], title: str) -> None:
    for (channel, label), color in zip(
        channels, ("tab:blue", "tab:orange", "tab:red"), strict=True
    ):
        points = sorted(data[channel].items())
        zeta = np.array([z for z, _ in points])
        mean = np.array([np.mean(a) for _, a in points])
        std = np.array([np.std(a) for _, a in points])
        ax.plot(zeta, mean, marker="o", color=color, label=label)
        ax.fill_between(zeta, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(r"compression factor $\zeta = K/(d/2)$")
    ax.grid(alpha=0.3)
    ax.legend()


def main(table: str, out: str = "docs/figures/channels-accuracy-vs-zeta.png") -> None:
    data = curves(read_table(table).rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    correlated = [(f"kronecker(rho_tx={r:g},rho_rx={r:g})", f"rho = {r:g}") for r in (0, 0.5, 0.9)]
    panel(axes[0], data, correlated, "Kronecker correlation (rho_tx = rho_rx), perfect CSI")
    errors = [("rayleigh", "sigma_e^2 = 0")]
    errors += [(f"rayleigh csi_err={e:g}", f"sigma_e^2 = {e:g}") for e in (0.1, 0.3)]
    panel(axes[1], data, errors, "CSI error (i.i.d. Rayleigh)")
    axes[0].set_ylabel("accuracy (mean over users)")
    fig.suptitle("fed, 4x4, SNR 20 dB, paper-users (10), digits, seeds 27, 42")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
