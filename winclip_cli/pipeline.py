"""One run: inputs -> batches -> predictions -> rows and images, with progress.

``score``, ``segment`` and ``fewshot`` are configurations of ``run``: whether maps are
made, and whether a reference bank is required.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .data import ImageReadError, InputImage, batches, open_image
from .outputs import (
    Row,
    RowWriter,
    discard_stdout,
    is_anomalous,
    output_name,
    render_overlay,
    save_npy,
    save_png,
    stdout_rows,
)
from .planning import Plan, RunOptions, UsageError, plan, resume_key
from .prompts import PromptSet
from .progress import Reporter

# Rows waiting for their overlay; beyond this the run waits, so memory stays flat.
MAX_PENDING_IMAGES = 16
# Errors writing an overlay that no later image would escape: they stop the run.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class ExitCode(IntEnum):
    OK = 0
    ANOMALY = 1
    USAGE = 2
    UNREADABLE = 3
    MODEL = 4
    INTERNAL = 70
    INTERRUPTED = 130
    BROKEN_PIPE = 141
    TERMINATED = 143


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``code`` is the exit code (130 or 143).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    (a decoder guard, a cache read) can swallow it and carry on."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def interruptible() -> Iterator[threading.Event]:
    """Turn SIGINT/SIGTERM into Interrupted, except inside a critical section.

    Yields an Event: while it is set, a signal is remembered and raised when the
    section ends (see ``critical``), so a row is never half written.
    """
    in_critical = threading.Event()
    pending: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
        if in_critical.is_set():
            pending.append(code)
        else:
            raise Interrupted(code)

    in_critical.pending = pending  # type: ignore[attr-defined]
    if threading.current_thread() is not threading.main_thread():
        yield in_critical
        return
    # A signal ignored by our parent (a background job of a script) stays ignored.
    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in handled}
    try:
        yield in_critical
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def critical(section: threading.Event) -> Iterator[None]:
    section.set()
    try:
        yield
    finally:
        section.clear()
        pending = section.pending  # type: ignore[attr-defined]
        if pending:
            raise Interrupted(pending[0])


def default_workers() -> int:
    """Decoding processes: enough to keep up with inference, leaving cores for torch."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


# ----- the run -------------------------------------------------------------------------


def _load_model(opts: RunOptions, prompts: PromptSet) -> Any:
    from .model import WinClip

    m = opts.model
    return WinClip.load(
        model=m.model,
        pretrained=m.pretrained,
        weights=m.weights,
        device=m.device,
        precision=m.precision,
        cache_dir=m.cache_dir,
        prompts=prompts,
        temperature=m.temperature,
    )


def _build_bank(wc: Any, opts: RunOptions, plan_: Plan, reporter: Reporter) -> Any:
    """The reference bank: from --ref FILE, or from the first K readable --ref images."""
    import torch

    from .model import BankMismatchError

    if plan_.bank is not None:
        try:
            return wc.check_bank(plan_.bank)
        except BankMismatchError as exc:
            raise UsageError(f"--ref {opts.ref}: {exc}") from exc
    for message in plan_.ref_skipped:
        reporter.warn(message)
    try:
        tensors = [wc.preprocess(open_image(image.path)) for image in plan_.ref_images]
    except ImageReadError as exc:  # readable a moment ago: changed under our feet
        raise UsageError(f"--ref {opts.ref}: a reference became unreadable: {exc}") from exc
    bank = wc.reference_bank(torch.stack(tensors), batch_size=opts.batch_size)
    if opts.save_bank is not None:
        from .cache import save_bank

        save_bank(bank, opts.save_bank)
        reporter.info(f"reference bank saved to {opts.save_bank}")
    return bank


def _write_images(image: InputImage, grid_map: Any, opts: RunOptions) -> tuple[str, str]:
    """Overlay (and raw map) at the input's displayed size; returns their paths."""
    from .model import upsample

    picture = open_image(image.path)
    size = (picture.height, picture.width)
    full = upsample(grid_map[None], size)[0].numpy()
    overlay = output_name(opts.out_dir, image.relative, ".png")
    save_png(render_overlay(picture, full), overlay)
    saved = ""
    if opts.save_maps:
        map_path = output_name(opts.out_dir, image.relative, ".npy")
        save_npy(full, map_path)
        saved = str(map_path)
    return str(overlay), saved


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    anomalous: int = 0

    def add(self, status: str, score: Any, threshold: float | None) -> None:
        if status == "ok":
            self.ok += 1
        else:
            self.errors += 1
        if is_anomalous(score, threshold):
            self.anomalous += 1

    def exit_code(self, fail_on_anomaly: bool) -> ExitCode:
        # An anomaly is what a gating job asks about, so it outranks unreadable files.
        if fail_on_anomaly and self.anomalous:
            return ExitCode.ANOMALY
        return ExitCode.UNREADABLE if self.errors else ExitCode.OK


def run(opts: RunOptions, reporter: Reporter, model: Any = None) -> ExitCode:
    """Score every input and write a row for each; returns the process exit code.

    ``model``: an already loaded WinClip to use instead of loading ``opts.model`` (for
    benchmarks and long-lived callers). Raises UsageError (exit 2) and
    backbone.WeightsUnavailableError (exit 4).
    """
    plan_ = plan(opts)
    try:
        return _execute(plan_, opts, reporter, model)
    finally:
        if plan_.rows_file is not None:
            plan_.rows_file.release()


def _execute(plan_: Plan, opts: RunOptions, reporter: Reporter, model: Any) -> ExitCode:
    tally = Tally()
    for row in plan_.done.values():
        tally.add(row.get("status", ""), row.get("score"), opts.threshold)
    todo = [im for im in plan_.images if resume_key(im.display) not in plan_.done]
    if plan_.done:
        reporter.info(f"resuming: {len(plan_.done)} row(s) already written, {len(todo)} to go")
        if not todo and opts.save_bank is None:  # nothing left: don't pay for the model
            return tally.exit_code(opts.fail_on_anomaly)

    with interruptible() as section:
        try:
            wc = model if model is not None else _load_model(opts, plan_.prompts)
            text = wc.text_embeddings(opts.class_name)
            bank = _build_bank(wc, opts, plan_, reporter) if opts.ref is not None else None
            _score_all(wc, text, bank, todo, opts, plan_, tally, section, reporter)
        except Interrupted as stop:
            reporter.stop()
            done = tally.ok + tally.errors
            reporter.error(f"interrupted: {done} row(s) written are complete{opts.resume_hint}")
            return ExitCode(stop.code)
    return tally.exit_code(opts.fail_on_anomaly)


@contextmanager
def _writing_rows(opts: RunOptions) -> Iterator[None]:
    """A row that can't be written (disk full, I/O error) stops the run: exit 2, one line."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        if opts.to_stdout:  # what is still buffered would fail again, noisily, at exit
            discard_stdout()
        where = "stdout" if opts.to_stdout else opts.output
        raise UsageError(f"cannot write rows to {where}: {exc.strerror or exc}") from exc


def _score_all(
    wc: Any,
    text: Any,
    bank: Any,
    todo: list[InputImage],
    opts: RunOptions,
    plan_: Plan,
    tally: Tally,
    section: threading.Event,
    reporter: Reporter,
) -> None:
    appending = opts.resume and bool(plan_.done)
    with _writing_rows(opts):
        rows_file = plan_.rows_file
        stream = rows_file.stream(appending) if rows_file is not None else stdout_rows()
        writer = RowWriter(stream, opts.fmt, plan_.cols, opts.threshold, header=not appending)
    pending: deque[tuple[Row, Future[tuple[str, str]] | None]] = deque()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="winclip-images")
    if opts.maps:
        opts.out_dir.mkdir(parents=True, exist_ok=True)

    def flush(block: bool) -> None:
        """Write rows in input order as soon as their images are on disk."""
        while pending:
            row, job = pending[0]
            if job is not None and not (block or job.done()):
                return
            if job is not None:
                try:
                    row.overlay, row.map = job.result()
                except (ImageReadError, OSError) as exc:
                    if getattr(exc, "errno", None) in DISK_FULL:  # every next image would fail
                        raise UsageError(
                            f"cannot write to --out {opts.out_dir}: {exc.strerror}"
                            + (f"; make room{opts.resume_hint}" if opts.resume_hint else "")
                        ) from exc
                    # An error row has no score: this one could not be delivered whole.
                    row.status, row.error = "error", f"overlay not written: {exc}"
                    row.score = row.map_max = None
            with critical(section), _writing_rows(opts):
                writer.write(row)
                pending.popleft()
                tally.add(row.status, row.score, opts.threshold)

    workers = default_workers() if opts.workers is None else opts.workers
    started = time.perf_counter()
    processed = 0
    # Rows printed on the terminal and a live bar on the same screen would garble each other.
    rows_on_screen = rows_file is None and sys.stdout.isatty()
    reporter.start(len(todo), "scoring", live=not rows_on_screen)
    try:
        pin = wc.device.type == "cuda"
        for batch in batches(todo, wc.preprocessor, opts.batch_size, workers, pin):
            results: dict[int, tuple[float, Any]] = {}
            if batch.pixels is not None:
                prediction = wc.predict(batch.pixels, text=text, bank=bank, maps=opts.maps)
                for j, index in enumerate(batch.readable):
                    grid = prediction.grid_maps[j] if prediction.grid_maps is not None else None
                    results[index] = (float(prediction.image_scores[j]), grid)
            for index in batch.indices:
                image = todo[index]
                if index in batch.errors:
                    row = Row(image.display, status="error", error=batch.errors[index])
                    pending.append((row, None))
                    continue
                score, grid = results[index]
                if not (math.isfinite(score) and (grid is None or bool(grid.isfinite().all()))):
                    # NaN reaches no label, no JSON and no colour: say it, as an error row.
                    reason = "the model gave no finite score (damaged weights?)"
                    pending.append((Row(image.display, status="error", error=reason), None))
                    continue
                row = Row(image.display, score=score)
                job = None
                if grid is not None:
                    row.map_max = float(grid.max())
                    job = pool.submit(_write_images, image, grid, opts)
                pending.append((row, job))
            flush(block=len(pending) > MAX_PENDING_IMAGES)
            processed += len(batch.indices)
            reporter.advance(len(batch.indices), processed, time.perf_counter() - started)
        flush(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        reporter.stop()
        if stream is not sys.stdout:
            with _writing_rows(opts):
                stream.close()
    elapsed = time.perf_counter() - started
    count = len(todo)
    summary = f"{count} image(s) in {elapsed:.1f} s ({count / elapsed:.2f} img/s)"
    summary += f"; with the {len(plan_.done)} resumed row(s): " if plan_.done else ": "
    summary += f"{tally.ok} ok"
    summary += f", {tally.errors} error(s)" if tally.errors else ""
    if opts.threshold is not None:
        summary += f", {tally.anomalous} at or above {opts.threshold:g}"
    reporter.info(summary)
