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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .data import InputImage, open_image
from .decision import ANOMALOUS, CalibratedRule, label_of
from .engines import Engine, ImageResult
from .engines.anomalous import AnomalousMapsEngine
from .engines.local import LocalEngine
from .engines.scorer import Scorer
from .errors import ExitCode, ImageReadError, Interrupted, OutputError, UsageError
from .interrupts import CriticalSection, interruptible
from .model import WinClip
from .options import RunOptions, default_workers
from .outputs import Caption, ColourScale, ImageOutputs, OverlayStyle, write_image_outputs
from .planning import Plan, plan, resume_key, tile_grid
from .progress import Reporter
from .rows import Row, RowWriter, discard_stdout, stdout_rows
from .run_report import RunReport
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
    pending: int = 0  # inputs left for the next run (--settle): not looked at

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
        if self.errors:
            return ExitCode.UNREADABLE
        # A gate must not pass on images it never looked at.
        return ExitCode.PENDING if self.pending else ExitCode.OK


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
    opts, resumed = p.opts, p.resume
    tally = Tally(pending=len(resumed.pending))
    for row in p.kept.values():
        tally.add(row.get("status", ""), row.get("label", ""))
    _tell_resume(p, reporter)
    report = None if opts.report is None else RunReport(p, opts.report)
    on_row = report.add if report is not None else None
    if not p.images:  # an empty shard (more shards than inputs): a valid, empty output
        reporter.warn(f"shard {opts.shard} is empty: there are fewer inputs than shards")
        if p.rows_file is not None:  # a job array's collector expects every shard's file
            p.rows_file.keep()
        with interruptible() as section, RowSink(p, tally, section, on_row):
            pass
        if report is not None:
            report.write(reporter, incomplete=False)
        return tally.exit_code(opts.fail_on_anomaly)
    if p.done and not p.todo and opts.save_bank is None:  # nothing left: no model needed
        if resumed.manifest is not None and resumed.recorded_weights is not None:
            resumed.manifest.weights = resumed.recorded_weights  # new identities, same run
            resumed.manifest.write(p.rows_file.path)  # type: ignore[union-attr]
        return tally.exit_code(opts.fail_on_anomaly)
    if not p.todo and not p.done and opts.save_bank is None:  # every input still settling
        return tally.exit_code(opts.fail_on_anomaly)
    with interruptible() as section:
        try:
            with engine_session(opts):  # before the model: an unreachable cluster fails fast
                scorer = load_scorer(p, reporter, model)
                if resumed.manifest is not None and p.rows_file is not None:
                    from .manifest import refuse_other_weights

                    weights = scorer.model.backbone.weights_id
                    refuse_other_weights(p.rows_file.path, resumed.recorded_weights, weights)
                    resumed.manifest.weights = weights
                    with section():
                        resumed.manifest.write(p.rows_file.path)
                engine = make_engine(p, scorer, reporter)
                _say_threshold(p, reporter)
                with RowSink(p, tally, section, on_row) as sink:
                    _score(p, engine.predict(p.todo), sink, reporter)
        except Interrupted as stop:
            reporter.stop()
            done = tally.ok + tally.errors
            reporter.error(f"interrupted: {done} row(s) written are complete{opts.resume_hint}")
            if report is not None:  # of the finished rows; a second Ctrl-C skips it
                report.write(reporter, incomplete=True)
            return ExitCode(stop.code)
    if report is not None:
        report.write(reporter, incomplete=False)
    return tally.exit_code(opts.fail_on_anomaly)


def _say_threshold(p: Plan, reporter: Reporter) -> None:
    """The calibrated threshold in use, once on stderr, so the log says what decided."""
    rule = p.rule
    if not isinstance(rule, CalibratedRule) or p.calibration is None:
        return
    text = (
        f"--calibration {p.opts.calibration}: n={p.calibration.n}, false-alarm rate "
        f"{rule.alpha:g}: anomalous above score {rule.threshold:.6f}"
    )
    if p.opts.maps and rule.pixel_threshold is not None:
        text += f", pixels above {rule.pixel_threshold:.6f}"
    reporter.info(text)


def _tell_resume(p: Plan, reporter: Reporter) -> None:
    """What --resume found: rows kept, to score again, files left for the next run."""
    resumed = p.resume
    if resumed.legacy:
        reporter.warn(
            f"{p.opts.output} has no run manifest (written by an older winclip): its "
            "settings can't be checked and its rows are kept as they are"
        )
    if p.done:
        line = f"resuming: {len(p.done)} row(s) already written, {len(p.todo)} to go"
        if resumed.again:
            errors = sum(1 for why in resumed.again.values() if why == "error row")
            changed = len(resumed.again) - errors
            line += f" ({errors} error row(s) and {changed} changed file(s) to score again)"
        reporter.info(line)
    if resumed.pending:
        names = ", ".join(im.display for im in resumed.pending[:10])
        more = f" and {len(resumed.pending) - 10} more" if len(resumed.pending) > 10 else ""
        reporter.warn(
            f"{len(resumed.pending)} file(s) modified within the last {p.opts.settle:g} s "
            f"left for the next run (still being written?): {names}{more}"
        )


@contextmanager
def engine_session(opts: RunOptions) -> Iterator[None]:
    """What the engine needs around the run: for Ray, the connection to the cluster."""
    if opts.engine != "ray":
        yield
        return
    from .engines.ray import ray_session

    with ray_session(opts.ray.address):
        yield


def make_engine(p: Plan, scorer: Scorer, reporter: Reporter) -> Engine:
    """The engine of ``p.opts.engine`` (inside engine_session)."""
    opts = p.opts
    if opts.engine == "ray":
        from .engines.ray import RayEngine

        return RayEngine(p, scorer)
    workers = default_workers() if opts.workers is None else opts.workers
    if opts.maps_mode == "anomalous":
        assert p.rule is not None  # planning refuses --maps anomalous without one
        return AnomalousMapsEngine(scorer, opts.batch_size, workers, p.rule)
    grid = tile_grid(opts.tiles, opts.tile_overlap)
    return LocalEngine(scorer, opts.batch_size, workers, grid, reporter.warn)


def load_scorer(p: Plan, reporter: Reporter, model: WinClip | None = None) -> Scorer:
    """The model (loaded unless given), the class's text embeddings and the bank."""

    from .bank import save_bank
    from .errors import BankMismatchError

    opts, m = p.opts, p.opts.model
    wc = model or WinClip.from_options(m, p.prompts)
    reporter.stage(f"model loaded: {wc.backbone.model_name} ({wc.backbone.source or 'given'})")
    text = wc.text_embeddings(opts.class_name)
    reporter.stage(f"text embeddings for {opts.class_name!r}: {wc.text_source}")
    refs, bank = p.references, None
    if refs.bank is not None:
        try:
            bank = wc.check_bank(refs.bank)
        except BankMismatchError as exc:
            raise UsageError(f"--ref {refs.source}: {exc}") from exc
        reporter.stage(f"reference bank loaded from {refs.source}")
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
        reporter.stage(f"reference bank built from {len(refs.images)} image(s) in {refs.source}")
        if refs.save_to is not None:
            save_bank(bank, refs.save_to)
            reporter.info(f"reference bank saved to {refs.save_to}")
    if p.calibration is not None and opts.calibration is not None:
        from .calibrate import check_loaded, fingerprint

        grid = tile_grid(opts.tiles, opts.tile_overlap)
        settings = fingerprint(wc, opts.class_name, bank, grid)
        check_loaded(p.calibration, opts.calibration, settings)
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
    kept = len(p.kept)
    summary += f"; with the {kept} resumed row(s): " if kept else ": "
    summary += f"{tally.ok} ok"
    summary += f", {tally.errors} error(s)" if tally.errors else ""
    if p.rule is not None:
        summary += f", {tally.anomalous} {p.rule.describe()}"
    summary += f", {tally.pending} left for the next run" if tally.pending else ""
    reporter.info(summary)


def _p(rule: object, row: Row) -> float | None:
    return rule.p_value(row.score) if isinstance(rule, CalibratedRule) else None


class RowSink:
    """Rows in input order, each written (and flushed) once its overlay is on disk.

    Overlays are rendered by two threads while the model works on the next batch; at
    most MAX_PENDING_IMAGES rows wait for theirs, so memory stays flat."""

    def __init__(
        self,
        p: Plan,
        tally: Tally,
        section: CriticalSection,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.plan, self.tally, self.section, self.on_row = p, tally, section, on_row
        self.opts = p.opts
        # Rows replaced or out of order: a new file, renamed over the old one at the end.
        self.rewriting = p.resume.rewrite and p.rows_file is not None
        self.cursor = 0  # rewriting: p.images[:cursor] have their row in the new file
        self.scored_again: set[str] = set()
        self.broken = False
        appending = self.opts.resume and bool(p.done) and not self.rewriting
        with self._writing_rows():
            stream: IO[str]
            if p.rows_file is None:
                stream = stdout_rows()
            elif self.rewriting:
                stream = p.rows_file.replacement()
            else:
                stream = p.rows_file.stream(appending)
            self.stream = stream
            self.writer = RowWriter(stream, self.opts.fmt, p.cols, header=not appending)
            if self.rewriting:
                self._orphans_after(None)
        self.pending: deque[tuple[Row, Future[ImageOutputs] | None]] = deque()
        self.scale = ColourScale.of(p.calibration, p.rule)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="winclip-images")
        opts = self.opts
        self.style = OverlayStyle(opts.overlay_format, opts.overlay_max_side, opts.map_dtype)
        if opts.maps:
            opts.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, kind: object, *_exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.rewriting:
            self._commit(failed=kind is not None and kind is not Interrupted)
        if self.stream is not sys.stdout:
            with self._writing_rows():
                self.stream.close()

    def _commit(self, failed: bool) -> None:
        """Finish the new file with every row not yet in it (the old row of an input not
        scored again yet included) and rename it over the old one; then the manifest
        learns the new identities. On a failure writing it, the old file stays."""
        rows_file = self.plan.rows_file
        assert rows_file is not None
        if self.broken:
            rows_file.discard()
            return
        try:
            with self.section(), self._writing_rows():
                self._copy_until(None)
                self.stream.flush()
                rows_file.commit()
        except BaseException:
            rows_file.discard()
            if not failed:
                raise
            return
        manifest = self.plan.resume.manifest
        if manifest is not None and self.scored_again:
            fresh = self.plan.resume.fresh
            manifest.inputs.update({k: fresh[k] for k in self.scored_again if k in fresh})
            with self.section(), self._writing_rows():
                manifest.write(rows_file.path)

    def _orphans_after(self, key: str | None) -> None:
        for record in self.plan.resume.orphans.get(key, []):
            self.writer.copy(record)

    def _copy_until(self, key: str | None) -> None:
        """Rewriting: copy the kept rows of the inputs before ``key`` (None: all)."""
        images, done = self.plan.images, self.plan.done
        while self.cursor < len(images):
            current = resume_key(images[self.cursor].display)
            if current == key:
                return
            if current in done:
                self.writer.copy(done[current])
                self._orphans_after(current)
            self.cursor += 1

    def _write(self, row: Row) -> None:
        if not self.rewriting:
            self.writer.write(row)
            return
        key = resume_key(row.path)
        self._copy_until(key)
        self.writer.write(row)
        self._orphans_after(key)
        self.cursor += 1
        if key in self.plan.resume.again:
            self.scored_again.add(key)

    @contextmanager
    def _writing_rows(self) -> Iterator[None]:
        """A row that can't be written (disk full, I/O error) stops the run: one line."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.broken = True  # a row may be torn: a replacement must not be committed
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
                opts, rule = self.opts, self.plan.rule
                caption = Caption(result.score, label_of(rule, result.score), _p(rule, row))
                job = self.pool.submit(
                    write_image_outputs,
                    image,
                    result.grid_map,
                    opts.out_dir,
                    opts.save_maps,
                    result.tiles,
                    self.style,
                    pixel_threshold=None if rule is None else rule.pixel_threshold,
                    scale=self.scale,
                    caption=caption if rule is not None else None,
                    save_mask=opts.save_masks,
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
            row.p_value = _p(self.plan.rule, row)
            # The report's copy too: a Ctrl-C at the section's end must not leave a
            # written row out of the report.
            with self.section(), self._writing_rows():
                self._write(row)
                self.pending.popleft()
                self.tally.add(row.status, row.label)
                if self.on_row is not None:
                    self.on_row(self.writer.record(row))

    def _collect(self, row: Row, job: Future[ImageOutputs]) -> None:
        try:
            written = job.result()
            row.overlay, row.map, row.mask = written.overlay, written.map, written.mask
            row.anomalous_pixels = written.anomalous_pixels
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
            row.anomalous_pixels = None
