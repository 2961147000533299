"""How every nasblade process writes its log: ``text`` (the default) or ``json``.

``nasblade --log-format json COMMAND`` (or ``NASBLADE_LOG_FORMAT=json``; the global option
wins) calls ``configure`` before the command runs. For ``json`` it puts one handler on the root
logger that writes one JSON object per line to stderr -- ``time`` (RFC 3339, UTC), ``level``,
``logger``, ``message``, ``role``, ``pid`` and ``exception`` when there is one -- and exports
the choice in ``NASBLADE_LOG_FORMAT`` so the processes this one starts (``nasblade up``'s
children, the boot shim's file processor) log the same way. A daemon's own
``logging.basicConfig`` is then a no-op, so in ``json`` the level is INFO, or
``NASBLADE_LOG_LEVEL``. The operator hands kopf the same choice (its JSON formatter).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any

ENV = "NASBLADE_LOG_FORMAT"
FORMATS = ("text", "json")


def default() -> str:
    """The format ``NASBLADE_LOG_FORMAT`` asks for (``text`` when unset or unknown)."""
    value = os.environ.get(ENV, "text").strip().lower()
    return value if value in FORMATS else "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "role": self.role,
            "pid": record.process,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str, *, role: str = "") -> None:
    """Install ``fmt`` for this process and its children (``text`` leaves logging alone)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    os.environ[ENV] = fmt
    if fmt == "text":
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root.addHandler(handler)
    root.setLevel(os.environ.get("NASBLADE_LOG_LEVEL", "INFO").upper())
