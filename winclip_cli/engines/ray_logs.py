"""Ray's own lines out of a run's log (unless --verbose).

Ray writes to the driver's stderr from C++ (its core worker: "[2026-... E 123 123]
core_worker.cc: ..."), from Python logging ("2026-... WARNING file.py:85 -- ...") and
from the processes a local Ray starts, which inherit the descriptor. Logging levels
reach only the Python part, so for the session the stderr descriptor is a pipe: a
thread passes every line on to the real stderr, except Ray's.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# Ray's C++ log lines and its Python logging format.
RAY_LINE = re.compile(
    rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] "
    rb"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+:\d+ -- "
    rb"|^\((raylet|pid=\d+|\w+ pid=\d+)[^)]*\) "
)
DRAIN_S = 2.0  # at the end, how long the last lines may take to come through


def is_ray_line(line: bytes) -> bool:
    """Whether a line of stderr was written by Ray, not by winclip."""
    return RAY_LINE.match(line) is not None


def _forward(source: int, target: int) -> None:
    """Copy lines from ``source`` to ``target`` until EOF, dropping Ray's."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(source, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_ray_line(line))
            if kept:
                os.write(target, kept)
        if pending and not is_ray_line(pending):
            os.write(target, pending)
    os.close(source)


@contextlib.contextmanager
def ray_lines_dropped(keep: bool = False) -> Iterator[None]:
    """For the block, stderr's descriptor (2) without Ray's lines; ``keep``: as it is."""
    try:
        original = os.dup(2)
    except OSError:  # no stderr at all
        original = -1
    if keep or original < 0:
        if original >= 0:
            os.close(original)
        yield
        return
    _flush_stderr()
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(
        target=_forward, args=(read_end, original), name="winclip-stderr", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(original, 2)  # closes our write end: the thread sees EOF once Ray's do too
        thread.join(DRAIN_S)
        if not thread.is_alive():
            os.close(original)


def _flush_stderr() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
