"""One run: a Plan -> an engine -> rows and image files, with progress.

``score``, ``segment`` and ``fewshot`` (and calibrate and eval) are configurations of the
same run: the Plan says what to score and how to decide; the engine yields results in
input order; RowSink writes each row as soon as its images are on disk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .bank import save_bank
from .data import InputImage, decode_tiles, open_image
from .decision import CalibratedRule
from .engines import Engine, ImageResult
from .engines.registry import build_engine
from .engines.scorer import Scorer
from .errors import BankMismatchError, ExitCode, ImageReadError, Interrupted, UsageError
from .interrupts import interruptible
from .manifest import refuse_other_weights
from .model import WinClip
from .planning import Plan
from .pool import MutualPool
from .pool_source import build_pool
from .progress import Reporter, rows_and_files
from .reportsink import ReportSink, run_context_of
from .rowsink import RowSink, Tally
from .settings import check_loaded, fingerprint
from .tiling import TileGrid, TileGridError, grid_meta

if TYPE_CHECKING:
    import torch


def execute(p: Plan, reporter: Reporter, model: WinClip | None = None) -> ExitCode:
    """Run a checked Plan: load what it needs, score ``p.todo``, write the rows. The
    counts of the rows written (kept ones included) go to ``reporter.counts``."""
    tally = Tally(pending=len(p.resume.pending))
    try:
        return _execute(p, reporter, tally, model)
    finally:
        reporter.counts = run_counts(p, tally)


def run_counts(p: Plan, tally: Tally) -> str:
    """'10 rows (9 files present, 1 no longer on disk): 9 ok, 1 error(s), ...'."""
    gone = sum(1 for key in p.kept if not os.path.lexists(key))
    text = f"{rows_and_files(tally.ok + tally.errors, gone)}: {tally.ok} ok"
    text += f", {tally.errors} error(s)" if tally.errors else ""
    if p.rule is not None:
        text += f", {tally.anomalous} {p.rule.describe()}"
    return text + (f", {tally.pending} left for the next run" if tally.pending else "")


def _execute(p: Plan, reporter: Reporter, tally: Tally, model: WinClip | None) -> ExitCode:
    resumed, out = p.resume, p.outputs
    for row in p.kept.values():
        tally.add(row.get("status", ""), row.get("label", ""))
    _tell_resume(p, reporter)
    report = None if out.report is None else ReportSink(p, out.report)
    on_row = report.add if report is not None else None
    if not p.images:  # an empty shard (more shards than inputs): a valid, empty output
        reporter.warn(f"shard {p.shard} is empty: there are fewer inputs than shards")
        if p.rows_file is not None:  # a job array's collector expects every shard's file
            p.rows_file.keep()
        with interruptible() as section, RowSink(p, tally, section, on_row):
            pass
        if report is not None:
            report.write(reporter, incomplete=False)
        return tally.exit_code(p.fail_on_anomaly)
    saves = p.references.save_to is not None or p.pool.save_to is not None  # a bank or pool
    if p.done and not p.todo and not saves:  # nothing left: no model needed
        if resumed.manifest is not None and (resumed.recorded_weights or resumed.rebuilt):
            resumed.manifest.weights = resumed.recorded_weights  # new identities, same run
            resumed.manifest.context = run_context_of(p)
            resumed.manifest.write(p.rows_file.path)  # type: ignore[union-attr]
        reporter.info(f"nothing new to score; {run_counts(p, tally)}")
        return tally.exit_code(p.fail_on_anomaly)
    if not p.todo and not p.done and not saves:  # every input still settling
        return tally.exit_code(p.fail_on_anomaly)
    with interruptible() as section:
        try:
            scorer = load_scorer(p, reporter, model)  # the engine's session is the Plan's
            if resumed.manifest is not None and p.rows_file is not None:
                weights = scorer.model.backbone.weights_id
                refuse_other_weights(p.rows_file.path, resumed.recorded_weights, weights)
                resumed.manifest.weights = weights
                resumed.manifest.context = run_context_of(p)
                with section():
                    resumed.manifest.write(p.rows_file.path)
            engine = build_engine(p.engine, scorer, reporter.warn)
            _say_threshold(p, reporter)
            with RowSink(p, tally, section, on_row) as sink:
                _score(p, engine, sink, reporter)
        except Interrupted as stop:
            reporter.stop()
            done = tally.ok + tally.errors
            reporter.error(f"interrupted: {done} row(s) written are complete{out.resume_hint}")
            if report is not None:  # of the finished rows; a second Ctrl-C skips it
                report.write(reporter, incomplete=True)
            return ExitCode(stop.code)
    if report is not None:
        report.write(reporter, incomplete=False)
    return tally.exit_code(p.fail_on_anomaly)


def _say_threshold(p: Plan, reporter: Reporter) -> None:
    """The calibrated threshold in use, once on stderr, so the log says what decided."""
    rule = p.rule
    if not isinstance(rule, CalibratedRule) or p.calibration is None:
        return
    text = (
        f"--calibration {p.calibration_file}: n={p.calibration.n}, false-alarm rate "
        f"{rule.alpha:g}: anomalous above score {rule.threshold:.6f}"
    )
    if p.outputs.maps and rule.pixel_threshold is not None:
        text += f", pixels above {rule.pixel_threshold:.6f}"
    reporter.info(text)


def _tell_resume(p: Plan, reporter: Reporter) -> None:
    """What --resume found: rows kept, to score again, files left for the next run."""
    resumed = p.resume
    for note in resumed.notes:
        reporter.warn(note)
    if resumed.legacy:
        reporter.warn(
            f"{p.outputs.where} has no run manifest (written by an older winclip): its "
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
            f"{len(resumed.pending)} file(s) modified within the last {p.settle:g} s "
            f"left for the next run (still being written?): {names}{more}"
        )


def load_scorer(p: Plan, reporter: Reporter, model: WinClip | None = None) -> Scorer:
    """The model (loaded unless given), the class's text embeddings and the bank."""

    wc = model or WinClip.from_options(p.engine.model, p.prompts)
    source = wc.backbone.source or "given"
    reporter.stage(f"model loaded: {wc.backbone.model_name} ({source}); {wc.precision_reason}")
    if p.mutual_scoring:  # mutual scoring reads no text
        text = torch.zeros(2, wc.embed_dim)
    else:
        text = wc.text_embeddings(p.class_name)
        reporter.stage(f"text embeddings for {p.class_name!r}: {wc.text_source}")
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
        grid = p.grid
        try:
            pixels = reference_pixels(wc, [image.path for image in refs.images], grid)
        except ImageReadError as exc:  # readable a moment ago: changed under our feet
            raise UsageError(f"--ref {refs.source}: a reference became unreadable: {exc}") from exc
        except TileGridError as exc:
            raise UsageError(f"--ref {refs.source}: a reference cannot be tiled: {exc}") from exc
        bank = wc.reference_bank(pixels, batch_size=p.engine.batch_size)
        if not grid.is_single:
            bank.meta.update(grid_meta(grid), references=len(refs.images))
        reporter.stage(f"reference bank built from {len(refs.images)} image(s) in {refs.source}")
        if refs.save_to is not None:
            save_bank(bank, refs.save_to)
            reporter.info(f"reference bank saved to {refs.save_to}")
    pool = load_pool(p, wc, reporter)
    if p.calibration is not None and p.calibration_file is not None:
        settings = fingerprint(wc, p.class_name, bank, p.grid, pool)
        check_loaded(p.calibration, p.calibration_file, settings)
    return Scorer(wc, text, bank, maps=p.outputs.maps, pool=pool)


def load_pool(p: Plan, wc: WinClip, reporter: Reporter) -> MutualPool | None:
    """Pool mode's pool: the --pool file's, or one built from the --pool folder."""
    planned = p.pool
    if planned.source is None:
        return None
    pool = build_pool(planned, wc, p.grid, p.engine.batch_size, reporter.warn)
    assert pool is not None
    how = "loaded from" if planned.pool is not None else "built from"
    reporter.stage(f"pool of {pool.num_images} image(s) {how} {planned.source}")
    if planned.save_to is not None:
        reporter.info(f"pool saved to {planned.save_to}")
    return pool


def reference_pixels(wc: WinClip, paths: list[Path], grid: TileGrid) -> torch.Tensor:
    """The model inputs of the reference images: one per image untiled; tiled, every tile
    of each reference (tiled on its own size), K*R*C in all. Raises ImageReadError or
    TileGridError (a reference the grid does not fit, naming it)."""

    if grid.is_single:
        return torch.stack([wc.preprocess(open_image(path)) for path in paths])
    parts = []
    for path in paths:
        try:
            parts.append(decode_tiles(path, grid, wc.preprocessor)[0])
        except TileGridError as exc:
            raise TileGridError(f"{path}: {exc}") from exc
    return torch.cat(parts)


def scored(
    images: Sequence[InputImage], engine: Engine, reporter: Reporter, what: str, live: bool = True
) -> Generator[tuple[InputImage, ImageResult], None, None]:
    """The one loop of every command: each image with its result, in input order, with
    the progress bar (advanced once the caller is done with the image). Close it (with
    contextlib.closing) so the bar stops even when the caller fails."""
    reporter.start(len(images), what, live=live)
    try:
        results = engine.predict(images)
        for done, (image, result) in enumerate(zip(images, results, strict=True), 1):
            yield image, result
            reporter.advance(1, done)
    finally:
        reporter.stop()


def _score(p: Plan, engine: Engine, sink: RowSink, reporter: Reporter) -> None:
    started = time.perf_counter()
    # Rows printed on the terminal and a live bar on the same screen would garble each other.
    rows_on_screen = p.rows_file is None and sys.stdout.isatty()
    with closing(scored(p.todo, engine, reporter, "scoring", live=not rows_on_screen)) as pairs:
        for image, result in pairs:
            sink.add(image, result)
        sink.flush(block=True)
    elapsed = time.perf_counter() - started
    count = len(p.todo)
    summary = f"{count} image(s) in {elapsed:.1f} s ({count / elapsed:.2f} img/s)"
    kept = len(p.kept)
    summary += f"; with the {kept} resumed row(s), " if kept else "; "
    reporter.info(summary + run_counts(p, sink.tally))
