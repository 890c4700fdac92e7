"""One run: inputs -> batches -> predictions -> rows and images, with progress.

``score``, ``segment`` and ``fewshot`` are configurations of ``run``: whether maps are
made, and whether a reference bank is required.
"""

from __future__ import annotations

import errno
import math
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from .backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, LOCAL_DIR
from .data import ImageReadError, InputImage, batches, find_images, open_image
from .outputs import (
    FileBusyError,
    Row,
    RowsFile,
    RowWriter,
    columns,
    is_anomalous,
    label,
    output_name,
    read_finished_rows,
    render_overlay,
    save_npy,
    save_png,
    stdout_rows,
)
from .prompts import PromptSet, clean_class_name, load_prompt_file
from .report import Reporter

DEFAULT_OUT_DIR = Path("winclip-out")
# Rows waiting for their overlay; beyond this the run waits, so memory stays flat.
MAX_PENDING_IMAGES = 16
DEFAULT_K = 4  # reference images taken from a --ref folder
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


class UsageError(Exception):
    """A mistake in the command line or its inputs: exit 2, nothing scored."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``code`` is the exit code (130 or 143).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    (a decoder guard, a cache read) can swallow it and carry on."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class ModelOptions:
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    weights: Path | None = None
    device: str = "auto"
    precision: str = "fp32"
    prompts: Path | None = None
    temperature: float | None = None
    cache_dir: Path | None = None


@dataclass
class RunOptions:
    inputs: list[Path] = field(default_factory=lambda: [Path(".")])
    class_name: str = "object"
    maps: bool = False  # segment / fewshot: an overlay per image
    require_ref: bool = False  # fewshot
    ref: Path | None = None  # folder of normal images, or a saved bank file
    k: int | None = None  # references to use from a --ref folder (default DEFAULT_K)
    seed: int | None = None
    save_bank: Path | None = None
    out_dir: Path = DEFAULT_OUT_DIR
    save_maps: bool = False
    batch_size: int = 8
    workers: int | None = None
    output: str | None = None
    fmt: str = "csv"
    threshold: float | None = None
    fail_on_anomaly: bool = False
    resume: bool = False
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class Plan:
    """What was checked before the model is loaded."""

    images: list[InputImage]
    prompts: PromptSet
    ref_images: list[InputImage]  # the K references, all readable
    ref_skipped: list[str]  # why unreadable references were passed over
    bank: Any  # a ReferenceBank read from --ref FILE, or None
    cols: list[str]
    done: dict[str, dict[str, str]]  # --resume: path -> row already in the output file
    rows_file: RowsFile | None  # -o FILE, locked; None for stdout


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


# ----- checks before the model is loaded -----------------------------------------------


def check_writable_file(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder, not a file")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


def _check_out_dir(out_dir: Path) -> None:
    """The folder exists and is writable, or can be created: checked, not created, so a
    run that stops early leaves no empty folder behind."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {out_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"cannot write to output folder {out_dir}: permission denied")


def _read_bank_file(path: Path) -> Any:
    from .cache import BankFileError, load_bank

    try:
        return load_bank(path)
    except BankFileError as exc:
        raise UsageError(str(exc)) from exc


def _first_readable(candidates: list[InputImage], k: int) -> tuple[list[InputImage], list[str]]:
    """The first k decodable references (no model needed), and why others were skipped."""
    chosen: list[InputImage] = []
    skipped: list[str] = []
    for image in candidates:
        if len(chosen) == k:
            break
        try:
            open_image(image.path)
            chosen.append(image)
        except ImageReadError as exc:
            skipped.append(f"reference {image.display} skipped: {exc}")
    return chosen, skipped


def check_class_name(class_name: str) -> None:
    try:
        clean_class_name(class_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def check_model_options(model: ModelOptions) -> PromptSet:
    """Model options that can be checked without loading it; returns the prompt set."""
    from .backbone import resolve_device, resolve_precision
    from .model import MIN_TEMPERATURE
    from .prompts import PromptFileError

    if model.temperature is not None and not (MIN_TEMPERATURE <= model.temperature < math.inf):
        raise UsageError(f"--temperature must be a positive number (at least {MIN_TEMPERATURE:g})")
    if model.weights is not None and not model.weights.is_file():
        raise UsageError(f"weights file not found: {model.weights}")
    try:
        resolve_precision(model.precision, resolve_device(model.device))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if model.prompts is None:
        return PromptSet()
    try:
        return load_prompt_file(model.prompts)
    except PromptFileError as exc:
        raise UsageError(str(exc)) from exc


def _check_numbers(opts: RunOptions) -> None:
    check_class_name(opts.class_name)
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if opts.threshold is not None and not math.isfinite(opts.threshold):
        raise UsageError("--threshold must be a number (scores lie in 0..1)")
    if opts.fail_on_anomaly and opts.threshold is None:
        raise UsageError("--fail-on-anomaly needs --threshold")
    if opts.require_ref and opts.ref is None:
        raise UsageError("fewshot needs --ref (a folder of normal images, or a bank file)")
    if opts.ref is None and (opts.k is not None or opts.seed is not None):
        raise UsageError("--k and --seed choose reference images: they need --ref")
    if opts.k is not None and opts.k < 1:
        raise UsageError("--k must be at least 1")
    if opts.resume and opts.output in (None, "-"):
        raise UsageError("--resume needs -o FILE (the file to continue)")
    if opts.output in (None, "-") and sys.stdout is None:
        raise UsageError("stdout is closed: give -o FILE for the rows")


def _plan_references(opts: RunOptions) -> tuple[list[InputImage], list[str], Any]:
    """The K readable reference images (folder) or the bank (file): (images, skipped, bank)."""
    if opts.ref is None:
        return [], [], None
    if opts.ref.is_file():
        bank = _read_bank_file(opts.ref)
        if opts.seed is not None:
            raise UsageError(f"--seed picks images from a folder; --ref {opts.ref} is a bank")
        if opts.k is not None and opts.k != bank.num_images:
            raise UsageError(
                f"--ref {opts.ref} holds {bank.num_images} reference image(s), not --k {opts.k}"
            )
        return [], [], bank
    if not opts.ref.is_dir():
        raise UsageError(f"--ref {opts.ref}: no such folder or bank file")
    k = DEFAULT_K if opts.k is None else opts.k
    candidates = find_images([opts.ref])
    if len(candidates) < k:
        raise UsageError(f"--ref {opts.ref} has {len(candidates)} image(s), --k {k} needs {k}")
    if opts.seed is not None:
        random.Random(opts.seed).shuffle(candidates)
    chosen, skipped = _first_readable(candidates, k)
    if len(chosen) < k:
        raise UsageError(
            f"--ref {opts.ref} has only {len(chosen)} readable image(s), --k {k} needs {k}"
        )
    return chosen, skipped, None


def _is_within(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _find_inputs(opts: RunOptions) -> list[InputImage]:
    """The images to score. The walk never enters the output folder (a second run must
    not score the first one's overlays) or the --ref folder; an input folder inside one of
    them is refused with the reason, rather than "no images found"."""
    exclude: list[Path] = []
    roots = [p for p in opts.inputs if p.is_dir()]
    if opts.ref is not None and opts.ref.is_dir():
        if inside := [r for r in roots if _is_within(r, opts.ref)]:
            raise UsageError(f"{inside[0]} is (in) the --ref folder: references are not scored")
        exclude.append(opts.ref)
    inside = [r for r in roots if _is_within(r, opts.out_dir)]
    if inside and opts.maps:
        raise UsageError(
            f"{inside[0]} is (in) the output folder --out {opts.out_dir}: overlays would "
            "mix with the images; choose another --out"
        )
    if not inside:  # score makes no overlays: then a folder named as input is read
        exclude.append(opts.out_dir)
    try:
        images = find_images(opts.inputs, exclude=exclude)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not images:
        raise UsageError("no images found in " + ", ".join(str(p) for p in opts.inputs))
    return images


def refuse_overwriting(
    option: str, target: Path | None, files: list[Path], folders: list[Path] = ()
) -> None:
    """UsageError when writing ``target`` would destroy one of the run's inputs: one of
    ``files`` (the same file under any name) or an existing file in one of ``folders``."""
    if target is None or not target.exists():
        return
    st = os.stat(target)
    same = next((f for f in files if _same_file(f, st)), None)
    if same is None:
        same = next((d for d in folders if _is_within(target, d)), None)
    if same is not None:
        raise UsageError(f"{option} {target} would overwrite an input of this run ({same})")


def _same_file(path: Path, target: os.stat_result) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)


def _check_not_clobbering(
    opts: RunOptions, images: list[InputImage], refs: list[InputImage]
) -> None:
    """Nothing the run writes may be something it reads (an image, a reference, the bank,
    the weights, the prompt file, the model's folder) or another of its outputs."""
    output = None if opts.output in (None, "-") else Path(opts.output)  # type: ignore[arg-type]
    both = output is not None and opts.save_bank is not None
    if both and os.path.abspath(output) == os.path.abspath(opts.save_bank):  # type: ignore[arg-type]
        raise UsageError("-o and --save-bank name the same file")
    m = opts.model
    files = [x.path for x in (*images, *refs)]
    files += [p for p in (opts.ref, m.weights, m.prompts) if p is not None]
    folders = [Path(m.model[len(LOCAL_DIR) :])] if m.model.startswith(LOCAL_DIR) else []
    for option, target in (("-o", output), ("--save-bank", opts.save_bank)):
        refuse_overwriting(option, target, files, folders)
    if not opts.maps:
        return
    if opts.ref is not None and opts.ref.is_dir() and _is_within(opts.out_dir, opts.ref):
        raise UsageError(
            f"--out {opts.out_dir} is in the --ref folder: overlays would become references"
        )
    suffixes = [".png", ".npy"] if opts.save_maps else [".png"]
    for option, target in (("-o", output), ("--save-bank", opts.save_bank)):
        if target is None or not _is_within(target, opts.out_dir):
            continue
        mine = os.path.abspath(target)
        for image in images:
            if any(
                os.path.abspath(output_name(opts.out_dir, image.relative, x)) == mine
                for x in suffixes
            ):
                raise UsageError(
                    f"{option} {target} is the name of {image.display}'s overlay or map"
                )


def _read_resume(opts: RunOptions, cols: list[str]) -> dict[str, dict[str, str]]:
    """Rows already in -o FILE (--resume), by real path; refuses a file whose labels
    disagree with this run's --threshold (the file would contradict itself)."""
    out = Path(opts.output)  # type: ignore[arg-type]
    if not (opts.resume and out.is_file()):
        return {}
    try:
        rows = read_finished_rows(out, opts.fmt, cols)
    except ValueError as exc:
        raise UsageError(f"cannot resume: {exc}") from exc
    if "label" in cols:
        for row in rows:
            score = float(row["score"]) if row.get("score") not in (None, "") else None
            if row["label"] != label(score, opts.threshold):
                raise UsageError(
                    f"cannot resume: {out} was labelled with another --threshold "
                    f"({row['path']} is {row['label']!r} at {row['score']}); "
                    "resume with the first run's --threshold"
                )
    return {resume_key(row["path"]): row for row in rows}


def resume_key(path: str) -> str:
    """Rows match inputs by real path, so `./a.png`, `a.png` and `/abs/a.png` are one."""
    return os.path.realpath(path)


def plan(opts: RunOptions) -> Plan:
    """Validate everything that can be validated without the model (exit 2 on failure)."""
    _check_numbers(opts)
    prompts = check_model_options(opts.model)
    ref_images, skipped, bank = _plan_references(opts)
    if opts.save_bank is not None:
        if opts.ref is None:
            raise UsageError("--save-bank needs --ref (the folder of normal images)")
        if bank is not None:
            raise UsageError("--save-bank needs --ref to be a folder of images, not a bank")
        check_writable_file(opts.save_bank)
    if opts.maps:
        _check_out_dir(opts.out_dir)
    images = _find_inputs(opts)
    _check_not_clobbering(opts, images, ref_images)
    cols = columns(opts.maps, opts.maps and opts.save_maps, opts.threshold)
    if opts.output in (None, "-"):
        return Plan(images, prompts, ref_images, skipped, bank, cols, {}, None)
    output = Path(opts.output)  # type: ignore[arg-type]
    check_writable_file(output)
    try:
        rows_file = RowsFile(output)  # held from here: resume reads what no one else writes
    except FileBusyError as exc:
        raise UsageError(f"{exc}: wait for it, or write to another file") from exc
    try:
        done = _read_resume(opts, cols)
        if done and not any(resume_key(im.display) in done for im in images):
            raise UsageError(
                f"cannot resume: none of the {len(done)} row(s) in {opts.output} is an input "
                "of this run (other inputs, or relative paths from another folder?)"
            )
    except BaseException:
        rows_file.release()
        raise
    return Plan(images, prompts, ref_images, skipped, bank, cols, done, rows_file)


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
            reporter.error(
                f"interrupted: {tally.ok + tally.errors} row(s) written are complete"
                + (
                    f"; continue with --resume -o {opts.output}"
                    if opts.output not in (None, "-")
                    else ""
                )
            )
            return ExitCode(stop.code)
    return tally.exit_code(opts.fail_on_anomaly)


@contextmanager
def _writing_rows(output: str | None) -> Iterator[None]:
    """A row that can't be written (disk full, I/O error) stops the run: exit 2, one line."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        to_stdout = output in (None, "-")
        if to_stdout:  # what is still buffered would fail again, noisily, at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = "stdout" if to_stdout else output
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
    with _writing_rows(opts.output):
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
                            f"cannot write to --out {opts.out_dir}: {exc.strerror}; make room, "
                            f"then continue with --resume"
                        ) from exc
                    # An error row has no score: this one could not be delivered whole.
                    row.status, row.error = "error", f"overlay not written: {exc}"
                    row.score = row.map_max = None
            with critical(section), _writing_rows(opts.output):
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
            with _writing_rows(opts.output):
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
