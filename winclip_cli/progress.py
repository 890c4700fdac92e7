"""Everything a run tells the user on stderr: progress, warnings, errors, the summary."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, cast

from .runinfo import RunInfo, now_iso


def _breaks_shown(message: str) -> str:
    """A warning or error is one line, even when it quotes a file name with a newline:
    the break is shown, not collapsed, so the name stays recognisable."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class MessageStream:
    """A stream for messages that never fails: a message that can't be shown (stderr
    closed, on a full disk) must not change a run's rows or exit code.

    ``stamp``: a function giving the prefix of each line (a log's timestamp and run
    id), applied to every line written, whoever writes it (a table, a traceback)."""

    def __init__(self, stream: Any, stamp: Callable[[], str] | None = None) -> None:
        self._stream = stream
        self.stamp = stamp
        self._at_line_start = True
        self._tty: bool | None = None

    def write(self, text: str) -> int:
        shown = self._stamped(text) if self.stamp is not None else text
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(shown)
        return len(text)

    def _stamped(self, text: str) -> str:
        assert self.stamp is not None
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self.stamp())
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        return "".join(out)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        """Whether the stream was a terminal when the run began: it stays a terminal
        while the Ray engine passes descriptor 2 through a filter (engines/ray_logs)."""
        if self._tty is None:
            try:
                self._tty = bool(self._stream.isatty())
            except (OSError, ValueError, AttributeError):
                self._tty = False
        return self._tty

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ...
        return getattr(self._stream, name)


class Reporter:
    """stderr only; a live progress bar only on a terminal; ``quiet`` keeps just errors."""

    def __init__(self, quiet: bool = False, stream: Any = None, run: RunInfo | None = None) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.run = run
        # With stderr closed (`2>&-`) Python has none: messages go nowhere, never to stdout.
        target = stream or sys.stderr or open(os.devnull, "w")  # noqa: SIM115
        self.stream = MessageStream(target)
        # MessageStream has what Console uses of a file (write, flush, isatty, encoding).
        console_file = cast("IO[str]", self.stream)
        self.console = Console(file=console_file, highlight=False, soft_wrap=True)
        if run is not None and not self.console.is_terminal:
            # A run's log: every line gets the time and the run's id, so two overlapping
            # cron runs in one log are told apart.
            self.stream.stamp = _stamper(run)
        self._began = time.perf_counter()
        self._begun = False  # a first line was written: finish writes the last
        self._progress: Any = None
        self._task: Any = None
        self._log: _LogProgress | None = None
        self._rate, self._total = _Rate(), 0
        self.counts: str | None = None  # the run's counts, for the last line (see finish)

    @property
    def logging(self) -> bool:
        """Stage and progress lines instead of a bar: stderr is a log, not a terminal."""
        return not self.quiet and not self.console.is_terminal

    def begin(self, version: str, command: str, settings: str) -> None:
        """A log's first line: the version, the command and its settings, the run id."""
        self._began = time.perf_counter()
        if self.logging and self.run is not None:
            self._begun = True
            run = self.run
            self.info(
                f"winclip {version} {command} {settings} (run {run.run_id}, pid {run.pid} "
                f"on {run.host})"
            )

    def finish(self, code: int) -> None:
        """A log's last line: the run's counts (``counts``), the time taken, the exit code
        (after a first line only: a log's runs are framed whole)."""
        if self._begun:
            took = time.perf_counter() - self._began
            counts = f"{self.counts}; " if self.counts else ""
            self.info(f"finished: {counts}{took:.1f} s; exit {code}")

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
        self._rate, self._total = _Rate(), total
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

    def advance(self, count: int, done: int) -> None:
        """``done`` of the total are finished (``count`` of them just now). The rate and
        ETA count from the first finished image, not from start-up (model, workers)."""
        rate = self._rate.update(done, final=done >= self._total)
        if self._log is not None and (line := self._log.line(done, rate)):
            self.info(line)
        if self._progress is not None:
            shown = f"{rate:.2f} img/s" if rate is not None else ""
            self._progress.update(self._task, advance=count, rate=shown)

    def counter(self, description: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback (as the report's thumbnails use): the bar
        starts at ``done == 0``."""

        def progress(done: int, total: int) -> None:
            if done == 0:
                self.start(total, description)
            else:
                self.advance(1, done)

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

    def line(self, done: int, rate: float | None) -> str | None:
        now = time.monotonic()
        tenth = done * 10 >= self.next_tenth * self.total
        if not tenth and now - self.last < self.LOG_EVERY_S:
            return None
        self.last = now
        while self.next_tenth * self.total <= done * 10:
            self.next_tenth += 1
        percent = 100 * done // max(1, self.total)
        line = f"{self.description}: {done}/{self.total} ({percent}%)"
        if not rate:  # the first images: no speed to tell yet
            return line
        return f"{line}, {rate:.2f} img/s, ETA {(self.total - done) / rate:.0f} s"


class _Rate:
    """Images per second since the first finished image: start-up (the model, the
    decoding workers) is not scoring time. The first batch arrives at once; images that
    finish within BURST_S of the first count as the start, not as speed, unless the
    whole run is that quick (a small folder on a fast CPU): its last line still says
    the rate over everything after the first batch."""

    BURST_S = 0.05

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None  # (time, images done then)
        self.burst_done = 0  # images done when the burst ended (or so far within it)

    def update(self, done: int, final: bool = False) -> float | None:
        """The rate with ``done`` images finished now; None until there is one.
        ``final``: the run's last images, so a run within the burst gets its rate."""
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, done)
            self.burst_done = done
            return None
        started, first_done = self.first
        if now - started < self.BURST_S:
            self.burst_done = done
            if final and done > first_done and now > started:
                return (done - first_done) / (now - started)
            return None
        return (done - self.burst_done) / (now - started)


def _stamper(run: RunInfo) -> Callable[[], str]:
    """The prefix of a log line: ISO 8601 time, then the run id in brackets."""
    return lambda: f"{now_iso()} [{run.run_id}] "


def rows_and_files(rows: int, gone: int) -> str:
    """'10 rows (9 files present, 1 no longer on disk)': a resumed run keeps the rows of
    files deleted since (a camera folder archives old photos); without such rows, '10
    rows'."""
    text = f"{rows} row{'s' if rows != 1 else ''}"
    if not gone:
        return text
    present = rows - gone
    files = "file" if present == 1 else "files"
    return f"{text} ({present} {files} present, {gone} no longer on disk)"
