"""What a benchmark prints beside its figures: the machine's load average (the machines are
shared, so a timing means little without it). Imported by the scripts beside it
(``python benchmarks/<script>.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import os


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def load_average_line(digits: int = 1) -> str:
    """``load average 0.52`` (with ``digits`` decimals), to put in a line of figures."""
    return f"load average {load_average():.{digits}f}"


def print_load(when: str, digits: int = 1) -> float:
    """Print ``# load average 0.5 <when>`` (a comment line of the output, flushed) and return
    the load average read (not rounded)."""
    load = load_average()
    print(f"# load average {load:.{digits}f} {when}", flush=True)
    return load
