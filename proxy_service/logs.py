"""Logging: one line per event worth logging, as key=value pairs, never a secret.

Lines look like

    ts=2026-11-28T03:04:05.123Z level=INFO logger=keyrack event=key_status key_id=k_3f2a9c01b2d4 from=active to=invalid

`event(log, "name", field=value, ...)` writes such a line; ordinary `log.info("text %s", x)` calls still work and
come out as `msg="text ..."`. Values with spaces, quotes or newlines are JSON-quoted, so a line is always one line
(tracebacks too: `exc="Traceback...\\n..."`).

Secrets: messages carry key ids, never keys. As a second line of defence every formatted line goes through
`keys.redact` (Gemini-shaped keys and every secret a registered source returns: the gateway registers its pool keys,
client tokens and admin token), so a careless message cannot leak one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from proxy_service.errors import StreamAborted
from proxy_service.keys import add_secret_source, redact, remove_secret_source

__all__ = ["add_secret_source", "event", "remove_secret_source", "setup_logging"]

_BARE_RE = re.compile(r"^[A-Za-z0-9_.:/@+\-,%]*$")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        v = round(v, 3)
    if isinstance(v, (list, tuple, set, frozenset)):
        v = ",".join(str(x) for x in v)
    s = "null" if v is None else str(v)
    return s if s and _BARE_RE.match(s) else json.dumps(s, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{record.msecs:03.0f}Z"
        parts = [f"ts={ts}", f"level={record.levelname}", f"logger={record.name}"]
        name = getattr(record, "event", None)
        if name:
            parts.append(f"event={_value(name)}")
        else:
            parts.append(f"msg={_value(record.getMessage())}")
        for k, v in (getattr(record, "fields", None) or {}).items():
            parts.append(f"{k}={_value(v)}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return redact(" ".join(parts))


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event: `event=<name>` followed by `key=value` for each field."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event": name, "fields": fields}, stacklevel=2)


def _not_an_aborted_stream(record: logging.LogRecord) -> bool:
    """uvicorn logs an exception from a body iterator as a crash; an aborted stream is the relay's choice (and is
    recorded as `stream_error` in the events)."""
    return not (record.exc_info and isinstance(record.exc_info[1], StreamAborted))


def setup_logging(level: str = "INFO") -> None:
    """Send Keyrack's (and uvicorn's) log lines to stderr as key=value lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("keyrack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler] if name == "uvicorn" else []
        lg.setLevel(logging.WARNING)
        lg.propagate = name != "uvicorn"
        if _not_an_aborted_stream not in lg.filters:
            lg.addFilter(_not_an_aborted_stream)
    logging.getLogger("uvicorn.access").disabled = True
