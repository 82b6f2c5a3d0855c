"""Per-cell means of a sweep table, as a small CSV for docs/data/ (what the docs cite).

One row per cell: its parameters, the number of seeds, the mean over seeds of the network
accuracy (mean over users of each run) with its standard deviation over seeds (ddof=0), the
native accuracy and the network MSE (:func:`semalign.experiments.figures.summary_rows`).

    python docs/figures/cell_means.py TABLE.csv OUT.csv
"""

from __future__ import annotations

import csv
import sys

from semalign.experiments.cells import load_rows, summary_rows

DROP = ("cell_key",)


def main(table: str, out: str) -> None:
    rows = summary_rows(load_rows([table]))
    columns = [c for c in rows[0] if c not in DROP]
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [f"{v:.6g}" if isinstance(v, float) else v for v in (row[c] for c in columns)]
            )
    print(f"{len(rows)} cells -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
