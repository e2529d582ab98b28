"""Process logging: one line per event, JSON (the default for `serve`) or text, secrets scrubbed.

A JSON line carries `ts` (UTC, ISO 8601 with milliseconds), `level`,
`logger`, `event` (what happened: `start`, `reload`, `degraded`, `error`,
`stop`, `decision_log`, ...; from `extra={"event": ...}`, else derived from
the logger), `msg`, any other `extra` fields, and `exc` with the stack trace
for errors. Whatever the format, credentials in URLs (`redis://user:PASSWORD@`)
are replaced by `***` before a line is written, so a password in `REDIS_URL`
never reaches the log even when a library's message repeats the URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("json", "text")

#: userinfo of a URL: scheme://[user]:password@host -> scheme://[user]:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?P<tail>@)")
#: `password=...` in query strings or key=value text
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token)=)(?P<secret>[^&\s,;]+)", re.I)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_EVENT_BY_LOGGER = {
    "risk_engine.reload": "reload",
    "risk_engine.decision_log": "decision_log",
}


def redact(text: str) -> str:
    """`text` with URL passwords and password=... values replaced by ***."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or _EVENT_BY_LOGGER.get(record.name, "log"),
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "event" and not key.startswith("_"):
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the root logger's records to `stream` (stderr) in `fmt` ('json' or 'text'), replacing handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
