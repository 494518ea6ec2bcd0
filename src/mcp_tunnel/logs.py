"""Structured log lines: one event per line, logfmt-style ``key=value`` text or JSON.

Kept deliberately small because the proxy writes two lines per request on its hot path: a
level check, one string build and one write. Callers never pass bodies, query strings,
``Authorization`` or cookies; nothing here inspects values for them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and all(c.isalnum() or c in "-._:/@[]%+," for c in text):
        return text
    return json.dumps(text)


class Logger:
    """A leveled logger writing one line per event to a stream."""

    def __init__(self, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.configure(level, fmt)

    def configure(self, level: str, fmt: str) -> None:
        self.threshold = LEVELS[level]
        self.json = fmt == "json"
        self.debug_enabled = self.threshold <= LEVELS["debug"]
        self.info_enabled = self.threshold <= LEVELS["info"]

    def log(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.json:
            record: dict[str, Any] = {"time": stamp, "level": level, "msg": msg}
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            parts = [f"time={stamp}", f"level={level}", f"msg={_logfmt_value(msg)}"]
            parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items()]
            line = " ".join(parts)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must never take the proxy down

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            self.log("debug", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        if self.info_enabled:
            self.log("info", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warn", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, fields)
