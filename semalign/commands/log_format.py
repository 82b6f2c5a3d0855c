"""How the CLI writes log records on stderr: ``--log-format text`` (default, for people) or
``json`` (for log shippers).

``json`` writes one JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds),
``level``, ``logger``, ``message`` (the formatted message, on one line), the event's
``session_id``, ``user_id`` and ``round`` when the record carries them (the library passes
them with ``extra=``: the AP's user joined, user lost, rejoin and round finished events), and
``exception`` (the traceback) when there is one.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

#: ``--log-format`` choices.
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Structured fields copied from a record when it has them.
EVENT_FIELDS = ("session_id", "user_id", "round")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int, log_format: str = "text") -> None:
    """The root logger at ``level``, on stderr, in ``log_format`` (:data:`LOG_FORMATS`)."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=TEXT_FORMAT)
