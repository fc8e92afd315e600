"""Logging set-up, called only from the CLI's main().

Daemons log one JSON object per line unless stderr is a terminal (or the
config asks for text).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields such as trace_id are kept."""

    _skip = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._skip:
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(level: str = "info", fmt: str = "auto", *, component: str = "") -> None:
    """Configure the root logger for a daemon or the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname).1s {component + ' ' if component else ''}%(name)s: %(message)s",
            "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    base, *parts = level.split(",")
    root.setLevel(base.upper())
    for part in parts:  # per-component levels: spear.mesh=debug
        name, _, lvl = part.partition("=")
        if name and lvl:
            logging.getLogger(name.strip()).setLevel(lvl.strip().upper())
    logging.Formatter.converter = time.gmtime
