"""Which run this is: a short run id, the process, the host and the start time.

Logs prefix their lines with it (two overlapping cron runs in one log are told apart by
the id), and the -o file's lock names it, so a second run can say who holds the file.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


def now_iso() -> str:
    """The current local time, ISO 8601 with its UTC offset, to the millisecond."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunInfo:
    """One run of winclip: ``run_id`` (6 hex digits), pid, host, start time (ISO 8601)."""

    run_id: str
    pid: int
    host: str
    started: str

    @classmethod
    def new(cls) -> RunInfo:
        """A fresh id for a run starting now in this process."""
        return cls(secrets.token_hex(3), os.getpid(), socket.gethostname(), now_iso())

    def describe(self) -> str:
        """'run 1a2b3c (pid 4242 on host, started 2026-...)', for messages."""
        return f"run {self.run_id} (pid {self.pid} on {self.host}, started {self.started})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: object) -> RunInfo | None:
        """The RunInfo of a record written by ``to_json``; None when it is not one."""
        if not isinstance(record, dict):
            return None
        try:
            info = cls(
                str(record["run_id"]),
                int(record["pid"]),
                str(record["host"]),
                str(record["started"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return info


_current: RunInfo | None = None


def start_run() -> RunInfo:
    """A new run begins in this process (each command of the command line calls it)."""
    global _current
    _current = RunInfo.new()
    return _current


def current_run() -> RunInfo:
    """The run under way in this process (one is started when none was)."""
    return _current if _current is not None else start_run()


def settings_line(options: list[tuple[str, object]], most: int = 3) -> str:
    """A run's settings for its log's first line: ``--name value`` for each option that
    holds a value (a flag: its name), a list shown by its first ``most`` items."""
    parts: list[str] = []
    for name, value in options:
        if value is None or value is False or value == [] or value == ():
            continue
        if value is True:
            parts.append(name)
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        text = " ".join(_quoted(str(v)) for v in items[:most])
        if len(items) > most:
            text += f" (+{len(items) - most} more)"
        parts.append(text if not name else f"{name} {text}")
    return " ".join(parts)


def _quoted(text: str) -> str:
    """A value as a shell would need it, so the line reads as a command."""
    return shlex.quote(text) if text else "''"
