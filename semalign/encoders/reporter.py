"""The progress protocol of encoding: who gets told how far each encoder is.

Both the build (which reports) and the displays (``progress.RichReporter``, the worker-to-parent
relay in ``pool``) import this module, and it imports neither, so they form no circle.
"""

from __future__ import annotations


class Reporter:
    """Receives progress events, keyed by encoder (several may run at once); the default does
    nothing. The command line passes a rich one (``progress.RichReporter``)."""

    def begin(self, encoder: str, phase: str, total: int) -> None:
        """``encoder`` starts ``phase`` (``train`` in steps, ``encode`` in images)."""

    def update(self, encoder: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current phase of ``encoder`` are finished."""

    def end(self, encoder: str) -> None:
        """The current phase of ``encoder`` is over."""
