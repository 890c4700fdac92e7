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
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
