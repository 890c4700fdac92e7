"""One run: a Plan -> an engine -> rows and image files, with progress.

``score``, ``segment`` and ``fewshot`` (and calibrate and eval) are configurations of the
same run: the Plan says what to score and how to decide; the engine yields results in
input order; RowSink writes each row as soon as its images are on disk.
"""

from __future__ import annotations

import errno
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .data import InputImage, open_image
from .decision import ANOMALOUS, label_of
from .engines import ImageResult
from .engines.local import LocalEngine, Scorer
from .errors import ExitCode, ImageReadError, Interrupted, OutputError, UsageError
from .interrupts import CriticalSection, interruptible
from .model import WinClip
from .options import RunOptions, default_workers
from .outputs import OverlayStyle, write_image_outputs
from .planning import Plan, plan, tile_grid
from .progress import Reporter
from .rows import Row, RowWriter, discard_stdout, stdout_rows
from .tiling import TileGrid, TileGridError, grid_meta

if TYPE_CHECKING:
    import torch

# Rows waiting for their overlay; beyond this the run waits, so memory stays flat.
MAX_PENDING_IMAGES = 16
# Errors writing an overlay that no later image would escape: they stop the run.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass
class Tally:
    """Counts of the rows of a run (resumed ones included), and the exit code they mean."""

    ok: int = 0
    errors: int = 0
    anomalous: int = 0

    def add(self, status: str, label: str) -> None:
        if status == "ok":
            self.ok += 1
        else:
            self.errors += 1
        if label == ANOMALOUS:
            self.anomalous += 1

    def exit_code(self, fail_on_anomaly: bool) -> ExitCode:
        # An anomaly is what a gating job asks about, so it outranks unreadable files.
        if fail_on_anomaly and self.anomalous:
            return ExitCode.ANOMALY
        return ExitCode.UNREADABLE if self.errors else ExitCode.OK


def run(opts: RunOptions, reporter: Reporter, model: WinClip | None = None) -> ExitCode:
    """Score every input and write a row for each; returns the process exit code.

    ``model``: an already loaded WinClip to use instead of loading ``opts.model`` (for
    benchmarks and long-lived callers). Raises a WinclipError: UsageError (exit 2),
    WeightsUnavailableError (exit 4), OutputError (exit 2).
    """
    with plan(opts) as checked:
        return execute(checked, reporter, model)


def execute(p: Plan, reporter: Reporter, model: WinClip | None = None) -> ExitCode:
    """Run a checked Plan: load what it needs, score ``p.todo``, write the rows."""
    opts = p.opts
    tally = Tally()
    for row in p.done.values():
        tally.add(row.get("status", ""), row.get("label", ""))
    if p.done:
        reporter.info(f"resuming: {len(p.done)} row(s) already written, {len(p.todo)} to go")
        if not p.todo and opts.save_bank is None:  # nothing left: don't pay for the model
            return tally.exit_code(opts.fail_on_anomaly)
    with interruptible() as section:
        try:
            scorer = load_scorer(p, reporter, model)
            workers = default_workers() if opts.workers is None else opts.workers
            grid = tile_grid(opts.tiles, opts.tile_overlap)
            engine = LocalEngine(scorer, opts.batch_size, workers, grid, reporter.warn)
            with RowSink(p, tally, section) as sink:
                _score(p, engine.predict(p.todo), sink, reporter)
        except Interrupted as stop:
            reporter.stop()
            done = tally.ok + tally.errors
            reporter.error(f"interrupted: {done} row(s) written are complete{opts.resume_hint}")
            return ExitCode(stop.code)
    return tally.exit_code(opts.fail_on_anomaly)


def load_scorer(p: Plan, reporter: Reporter, model: WinClip | None = None) -> Scorer:
    """The model (loaded unless given), the class's text embeddings and the bank."""

    from .cache import save_bank
    from .errors import BankMismatchError

    opts, m = p.opts, p.opts.model
    wc = model or WinClip.load(
        model=m.model,
        pretrained=m.pretrained,
        weights=m.weights,
        device=m.device,
        precision=m.precision,
        cache_dir=m.cache_dir,
        prompts=p.prompts,
        temperature=m.temperature,
    )
    text = wc.text_embeddings(opts.class_name)
    refs, bank = p.references, None
    if refs.bank is not None:
        try:
            bank = wc.check_bank(refs.bank)
        except BankMismatchError as exc:
            raise UsageError(f"--ref {refs.source}: {exc}") from exc
    elif refs.images:
        for message in refs.skipped:
            reporter.warn(message)
        grid = tile_grid(opts.tiles, opts.tile_overlap)
        try:
            pixels = reference_pixels(wc, [image.path for image in refs.images], grid)
        except ImageReadError as exc:  # readable a moment ago: changed under our feet
            raise UsageError(f"--ref {refs.source}: a reference became unreadable: {exc}") from exc
        except TileGridError as exc:
            raise UsageError(f"--ref {refs.source}: a reference cannot be tiled: {exc}") from exc
        bank = wc.reference_bank(pixels, batch_size=opts.batch_size)
        if not grid.is_single:
            bank.meta.update(grid_meta(grid), references=len(refs.images))
        if refs.save_to is not None:
            save_bank(bank, refs.save_to)
            reporter.info(f"reference bank saved to {refs.save_to}")
    return Scorer(wc, text, bank, maps=opts.maps)


def reference_pixels(wc: WinClip, paths: list[Path], grid: TileGrid) -> torch.Tensor:
    """The model inputs of the reference images: one per image untiled; tiled, every tile
    of each reference (tiled on its own size), K*R*C in all. Raises ImageReadError or
    TileGridError (a reference the grid does not fit, naming it)."""
    import torch

    from .data import decode_tiles

    if grid.is_single:
        return torch.stack([wc.preprocess(open_image(path)) for path in paths])
    parts = []
    for path in paths:
        try:
            parts.append(decode_tiles(path, grid, wc.preprocessor)[0])
        except TileGridError as exc:
            raise TileGridError(f"{path}: {exc}") from exc
    return torch.cat(parts)


def _score(p: Plan, results: Iterator[ImageResult], sink: RowSink, reporter: Reporter) -> None:
    started = time.perf_counter()
    # Rows printed on the terminal and a live bar on the same screen would garble each other.
    rows_on_screen = p.rows_file is None and sys.stdout.isatty()
    reporter.start(len(p.todo), "scoring", live=not rows_on_screen)
    try:
        for done, (image, result) in enumerate(zip(p.todo, results, strict=True), 1):
            sink.add(image, result)
            reporter.advance(1, done, time.perf_counter() - started)
        sink.flush(block=True)
    finally:
        reporter.stop()
    elapsed = time.perf_counter() - started
    count, tally = len(p.todo), sink.tally
    summary = f"{count} image(s) in {elapsed:.1f} s ({count / elapsed:.2f} img/s)"
    summary += f"; with the {len(p.done)} resumed row(s): " if p.done else ": "
    summary += f"{tally.ok} ok"
    summary += f", {tally.errors} error(s)" if tally.errors else ""
    if p.rule is not None:
        summary += f", {tally.anomalous} {p.rule.describe()}"
    reporter.info(summary)


class RowSink:
    """Rows in input order, each written (and flushed) once its overlay is on disk.

    Overlays are rendered by two threads while the model works on the next batch; at
    most MAX_PENDING_IMAGES rows wait for theirs, so memory stays flat."""

    def __init__(self, p: Plan, tally: Tally, section: CriticalSection) -> None:
        self.plan, self.tally, self.section = p, tally, section
        self.opts = p.opts
        appending = self.opts.resume and bool(p.done)
        with self._writing_rows():
            stream: IO[str] = p.rows_file.stream(appending) if p.rows_file else stdout_rows()
            self.stream = stream
            self.writer = RowWriter(stream, self.opts.fmt, p.cols, header=not appending)
        self.pending: deque[tuple[Row, Future[tuple[str, str]] | None]] = deque()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="winclip-images")
        opts = self.opts
        self.style = OverlayStyle(opts.overlay_format, opts.overlay_max_side, opts.map_dtype)
        if opts.maps:
            opts.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.stream is not sys.stdout:
            with self._writing_rows():
                self.stream.close()

    @contextmanager
    def _writing_rows(self) -> Iterator[None]:
        """A row that can't be written (disk full, I/O error) stops the run: one line."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            if self.opts.to_stdout:  # what is still buffered would fail again, at exit
                discard_stdout()
            where = "stdout" if self.opts.to_stdout else self.opts.output
            raise OutputError(f"cannot write rows to {where}: {exc.strerror or exc}") from exc

    def add(self, image: InputImage, result: ImageResult) -> None:
        """Queue the row of one result (its overlay starts rendering); write what is ready."""
        if result.error is not None:
            row = Row(image.display, status="error", error=result.error)
            self.pending.append((row, None))
        else:
            row = Row(image.display, score=result.score, map_max=result.map_max)
            job = None
            if result.has_map:
                opts = self.opts
                job = self.pool.submit(
                    write_image_outputs,
                    image,
                    result.grid_map,
                    opts.out_dir,
                    opts.save_maps,
                    result.tiles,
                    self.style,
                )
            self.pending.append((row, job))
        self.flush(block=len(self.pending) > MAX_PENDING_IMAGES)

    def flush(self, block: bool) -> None:
        """Write rows in input order as soon as their images are on disk."""
        while self.pending:
            row, job = self.pending[0]
            if job is not None and not (block or job.done()):
                return
            if job is not None:
                self._collect(row, job)
            row.label = label_of(self.plan.rule, row.score)
            with self.section(), self._writing_rows():
                self.writer.write(row)
                self.pending.popleft()
                self.tally.add(row.status, row.label)

    def _collect(self, row: Row, job: Future[tuple[str, str]]) -> None:
        try:
            row.overlay, row.map = job.result()
        except (ImageReadError, OSError) as exc:
            if getattr(exc, "errno", None) in DISK_FULL:  # every next image would fail
                hint = self.opts.resume_hint
                raise OutputError(
                    f"cannot write to --out {self.opts.out_dir}: {getattr(exc, 'strerror', exc)}"
                    + (f"; make room{hint}" if hint else "")
                ) from exc
            # An error row has no score: this one could not be delivered whole.
            row.status, row.error = "error", f"overlay not written: {exc}"
            row.score = row.map_max = None
