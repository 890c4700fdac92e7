"""Ctrl-C and SIGTERM during a run: an exception at a safe point, never mid-row."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import ExitCode, Interrupted


class CriticalSection:
    """While entered, a signal is remembered and raised when the section ends."""

    def __init__(self) -> None:
        self.active = threading.Event()
        self.pending: list[int] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.active.set()
        try:
            yield
        finally:
            self.active.clear()
            if self.pending:
                raise Interrupted(self.pending[0])


@contextmanager
def interruptible() -> Iterator[CriticalSection]:
    """Turn SIGINT/SIGTERM into Interrupted, except inside the yielded critical section
    (``with section(): write the row``), so a row is never half written."""
    section = CriticalSection()

    def handler(signum: int, _frame: Any) -> None:
        code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
        if section.active.is_set():
            section.pending.append(code)
        else:
            raise Interrupted(code)

    if threading.current_thread() is not threading.main_thread():
        yield section
        return
    # A signal ignored by our parent (a background job of a script) stays ignored.
    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in handled}
    try:
        yield section
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
