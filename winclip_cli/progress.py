"""Everything a run tells the user on stderr: progress, warnings, errors, the summary."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, cast


def _breaks_shown(message: str) -> str:
    """A warning or error is one line, even when it quotes a file name with a newline:
    the break is shown, not collapsed, so the name stays recognisable."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class MessageStream:
    """A stream for messages that never fails: a message that can't be shown (stderr
    closed, on a full disk) must not change a run's rows or exit code."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ...
        return getattr(self._stream, name)


class Reporter:
    """stderr only; a live progress bar only on a terminal; ``quiet`` keeps just errors."""

    def __init__(self, quiet: bool = False, stream: Any = None) -> None:
        from rich.console import Console

        self.quiet = quiet
        # With stderr closed (`2>&-`) Python has none: messages go nowhere, never to stdout.
        target = stream or sys.stderr or open(os.devnull, "w")  # noqa: SIM115
        self.stream = MessageStream(target)
        # MessageStream has what Console uses of a file (write, flush, isatty, encoding).
        console_file = cast("IO[str]", self.stream)
        self.console = Console(file=console_file, highlight=False, soft_wrap=True)
        self._progress: Any = None
        self._task: Any = None
        self._log: _LogProgress | None = None

    @property
    def logging(self) -> bool:
        """Stage and progress lines instead of a bar: stderr is a log, not a terminal."""
        return not self.quiet and not self.console.is_terminal

    def stage(self, message: str) -> None:
        """One line per stage of a run (model, text, bank), for logs only: a terminal
        shows the bar, and --quiet silences them."""
        if self.logging:
            self.info(message)

    def warn(self, message: str) -> None:
        if not self.quiet:
            from rich.markup import escape

            self.console.print(f"[yellow]warning:[/] {escape(_breaks_shown(message))}", markup=True)

    def error(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[red]error:[/] {escape(_breaks_shown(message))}", markup=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            from rich.markup import escape

            self.console.print(escape(message), markup=True)

    def start(self, total: int, description: str, live: bool = True) -> None:
        """Show a progress bar with images/s and ETA (terminals only, never with --quiet;
        ``live=False``: none, e.g. when the rows themselves go to the terminal)."""
        if self.logging:
            self._log = _LogProgress(total, description)
            return
        if self.quiet or not live or not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, count: int, done: int, elapsed: float) -> None:
        if self._log is not None and (line := self._log.line(done, elapsed)):
            self.info(line)
        if self._progress is not None:
            rate = f"{done / elapsed:.2f} img/s" if elapsed > 0 else ""
            self._progress.update(self._task, advance=count, rate=rate)

    def counter(self, description: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback (as the report's thumbnails use): the bar
        starts at ``done == 0``."""
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            if done == 0:
                self.start(total, description)
            else:
                self.advance(1, done, time.perf_counter() - started)

        return progress

    def stop(self) -> None:
        self._log = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class _LogProgress:
    """When a log gets a progress line: every LOG_EVERY_S seconds or tenth of the run."""

    LOG_EVERY_S = 30.0

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description = total, description
        self.last = time.monotonic()
        self.next_tenth = 1

    def line(self, done: int, elapsed: float) -> str | None:
        now = time.monotonic()
        tenth = done * 10 >= self.next_tenth * self.total
        if not tenth and now - self.last < self.LOG_EVERY_S:
            return None
        self.last = now
        while self.next_tenth * self.total <= done * 10:
            self.next_tenth += 1
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate:.0f} s" if rate > 0 else "?"
        percent = 100 * done // max(1, self.total)
        return f"{self.description}: {done}/{self.total} ({percent}%), {rate:.2f} img/s, ETA {eta}"
