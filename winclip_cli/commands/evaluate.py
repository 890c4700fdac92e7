"""`winclip eval`: metrics of WinCLIP / WinCLIP+ on labelled MVTec AD or VisA trees.

The same engine and loader as the scoring commands (engines.local, DataLoader workers)
and the same reference picker as fewshot; the dataset layouts are in datasets/, the
published figures in paper.py. No CLI framework is imported here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import torch

from ..calibration import conformal_rank
from ..checks import check_class_name, check_model_options, model_files, tile_grid
from ..data import InputImage
from ..datasets import CategoryData, discover, is_dataset_file, load_mask
from ..errors import CalibrationError, DatasetError, ExitCode, UsageError
from ..metrics import DEFAULT_BINS
from ..model import WinClip
from ..options import DEFAULT_BATCH_SIZE, EvalOptions, default_workers
from ..overlaps import FileUse, refuse_overlaps
from ..paths import check_writable_file
from ..pool import MutualPool
from ..pool_source import PoolSource, build_pool, plan_pool
from ..progress import Reporter
from ..prompts import PromptSet
from ..tiling import TileGrid
from .eval_results import (
    ScoresWriter,
    format_table,
    json_value,
    mean_std,
    model_info,
    overall,
    publish,
    scores_writer,
    seeds_for,
)
from .eval_run import EvalEngine, EvalProgress, EvalRun, draw_references, evaluate_run, relative

if TYPE_CHECKING:
    from ..model import WinClip


__all__ = ["DatasetError", "discover", "format_table", "load_mask", "run_evaluation"]


def _check_calibration_sizes(found: list[CategoryData], shots: list[int], alpha: float) -> None:
    """Enough training normals for rate A in every run, before any model time is spent."""

    for data in found:
        for k in shots:
            try:
                conformal_rank(len(data.train_good) - k, alpha)
            except CalibrationError as exc:
                raise DatasetError(f"category {data.name}, {k}-shot --calibrate: {exc}") from exc


def _normalise_options(shots: Sequence[int], seeds: int | Sequence[int]) -> tuple[list, list]:
    shot_list = list(dict.fromkeys(int(k) for k in shots))
    if not shot_list or any(k < 0 for k in shot_list):
        raise ValueError("shots must be a non-empty list of k >= 0")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("at least one seed is needed")
    return shot_list, seed_list


def run_evaluation(
    wc: WinClip,
    root: str | os.PathLike[str],
    *,
    layout: str = "auto",
    categories: Sequence[str] | None = None,
    shots: Sequence[int] = (0,),
    seeds: int | Sequence[int] = 1,
    class_name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    grid: TileGrid | None = None,
    bins: int = DEFAULT_BINS,
    scores_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    compare: bool = False,
    table_stream: IO[str] | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
    calibrate: float | None = None,
    mutual: bool = False,
    pool: MutualPool | None = None,
) -> dict[str, Any]:
    """Evaluate ``wc`` on a labelled dataset tree and return the JSON-able results.

    Arguments: ``root`` the dataset folder; ``layout`` 'auto' | 'mvtec' | 'visa';
    ``categories`` names to evaluate (None: all); ``shots`` the k values (0 = zero-shot,
    k > 0 = WinCLIP+ with k references drawn from the training normals); ``seeds`` the
    number of seeds (0..N-1) or the seeds themselves, for k > 0 (k = 0 runs once);
    ``class_name`` the prompt class for every category (None: the category name);
    ``batch_size`` images per forward pass (tiles when tiled); ``workers`` decoding
    processes (the local engine's); ``grid`` tiles per image (None: 1x1; maps and masks
    are then compared at eval_size); ``bins`` histogram bins of the pixel metrics;
    ``scores_path`` per-image CSV (category, k, seed, path, label, score), rows flushed as
    they come; ``json_path`` the results as JSON; ``compare`` add the paper's numbers;
    ``table_stream`` where the table (and comparison) is written; ``progress`` called with
    an EvalProgress after every test batch; ``calibrate`` a false-alarm rate A: each run
    also calibrates on train/good minus its references and reports ``far`` (realised
    false-alarm rate on test/good), ``tpr`` (detection rate on the defects), ``threshold``
    (c_(k)) and ``n_cal``. ``mutual``: MuSc set mode, each category's test set one set;
    ``pool``: MuSc pool mode, every test image against it (both zero-shot: k = 0 only).

    Results: ``categories[name]["shots"][str(k)]`` = {"mean", "std", "runs"} and
    ``mean[str(k)]`` = {"mean", "std"} (over categories, then over seeds), each metric a
    fraction in [0, 1], None where undefined (e.g. AUROC without anomalies); ``paper``
    with ``compare``. Raises DatasetError for a tree that cannot be evaluated (before any
    model time is spent, except for unreadable images, found when read).
    """
    root = Path(root)
    shot_list, seed_list = _normalise_options(shots, seeds)
    found = _categories(root, layout, categories, shot_list, seed_list, calibrate)
    per_category = sum(len(seeds_for(k, seed_list)) for k in shot_list)
    results: dict[str, Any] = {
        "dataset": {"root": str(root), "layout": found[0].layout},
        "model": model_info(wc),
        "mode": "mutual-set" if mutual else "mutual-pool" if pool is not None else "winclip",
        "shots": shot_list,
        "seeds": seed_list,
        "bins": bins,
        "categories": {},
        "mean": {},
    }
    results["dataset"]["categories"] = [d.name for d in found]
    with scores_writer(scores_path) as rows:
        for i, data in enumerate(found):
            engine = _category_engine(wc, data, class_name, batch_size, workers, grid, pool, mutual)
            counts = (i * per_category, len(found) * per_category)
            results["categories"][data.name] = _evaluate_category(
                engine, data, class_name, (shot_list, seed_list), counts, bins, rows, root,
                progress, calibrate,
            )  # fmt: skip
    for k in shot_list:
        results["mean"][str(k)] = overall(results["categories"], k, seeds_for(k, seed_list))
    publish(results, compare, table_stream, json_path)
    return results


def _category_engine(
    wc: WinClip,
    data: CategoryData,
    class_name: str | None,
    batch_size: int,
    workers: int,
    grid: TileGrid | None,
    pool: MutualPool | None,
    mutual: bool,
) -> EvalEngine:
    """The engine of one category: WinCLIP with its text, or mutual scoring (no text)."""
    if not mutual and pool is None:
        text = wc.text_embeddings(class_name or data.name)
    else:
        text = torch.zeros(2, wc.embed_dim)
    set_size = max(2, len(data.test)) if mutual else None  # the test set is one set
    return EvalEngine(wc, text, batch_size, workers, grid or TileGrid(), pool, set_size)


def _categories(
    root: Path,
    layout: str,
    categories: Sequence[str] | None,
    shot_list: list[int],
    seed_list: list[int],
    calibrate: float | None,
) -> list[CategoryData]:
    """The categories to evaluate, checked before any model time is spent (DatasetError:
    too few training normals for a k, or for --calibrate)."""
    found = discover(root, layout, categories)
    for data in found:
        for k in shot_list:
            if k and len(data.train_good) < k:
                draw_references(data, k, seed_list[0])  # raises, saying what is missing
    if calibrate is not None:
        _check_calibration_sizes(found, shot_list, calibrate)
    return found


def _evaluate_category(
    engine: EvalEngine,
    data: CategoryData,
    class_name: str | None,
    shots_seeds: tuple[list[int], list[int]],
    counts: tuple[int, int],
    bins: int,
    rows: ScoresWriter | None,
    root: Path,
    progress: Callable[[EvalProgress], None] | None,
    calibrate: float | None,
) -> dict[str, Any]:
    """One category's runs (every k, every seed): its entry in the results.
    ``counts``: runs done before this category, and runs in all."""
    shot_list, seed_list = shots_seeds
    number, runs_total = counts
    tests = [InputImage(s.path, str(s.path), relative(s.path, root)) for s in data.test]
    entry: dict[str, Any] = {
        "class_name": class_name or data.name,
        "num_test": len(data.test),
        "num_anomalous": data.num_anomalous,
        "num_train_good": len(data.train_good),
        "shots": {},
    }
    for k in shot_list:
        runs: list[dict[str, Any]] = []
        for seed in seeds_for(k, seed_list):
            number += 1
            first = not runs and k == shot_list[0]
            run = EvalRun(data, engine.text, k, seed, number, runs_total, first, calibrate)
            figures = evaluate_run(engine, run, tests, bins, rows, root, progress)
            runs.append({key: json_value(v) for key, v in figures.items()})
        entry["shots"][str(k)] = {**mean_std(runs), "runs": runs}
    return entry


def check_eval_options(opts: EvalOptions) -> PromptSet:
    """Every check that needs no model (UsageError, DatasetError); returns the prompts."""
    if opts.compare not in (None, "paper"):
        raise UsageError(f"--compare {opts.compare!r}: the only comparison is 'paper'")
    if opts.seeds < 1 or any(shot < 0 for shot in opts.shots):
        raise UsageError("--seeds must be at least 1 and every --k at least 0")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if opts.class_name is not None:
        check_class_name(opts.class_name)
    tile_grid(opts.tiles, opts.tile_overlap)
    _check_mutual_eval(opts)
    reads, writes = model_files(opts.model), []
    for option, path in (("--json", opts.json_path), ("--scores", opts.scores_path)):
        if path is not None and str(path) != "-":
            check_writable_file(path)
            writes.append(FileUse(option, path))
            if is_dataset_file(opts.root, path):  # results kept in the dataset are outputs
                reads.append(FileUse("a file of the dataset", path))
    refuse_overlaps(reads, writes)
    prompts = check_model_options(opts.model)
    found = discover(opts.root, layout=opts.layout, categories=opts.categories)
    if opts.calibrate is not None:
        _check_calibration_sizes(found, opts.shots, opts.calibrate)
    return prompts


def _check_mutual_eval(opts: EvalOptions) -> None:
    """--mutual and --pool: zero-shot modes (no --k); set scores are not calibrated."""
    if not (opts.mutual or opts.pool is not None):
        return
    if opts.mutual and opts.pool is not None:
        raise UsageError("--mutual and --pool are two modes of mutual scoring: give one")
    if any(opts.shots):
        raise UsageError("mutual scoring uses no references: --k must be 0 (the default)")
    if opts.mutual and opts.calibrate is not None:
        raise UsageError("--mutual with --calibrate: set scores rank one set, not calibrated")
    if opts.mutual and opts.tiles != "1x1":
        raise UsageError("--mutual with --tiles: set mode compares whole images")
    if opts.pool is not None and not opts.pool.exists():
        raise UsageError(f"--pool {opts.pool}: no such folder or pool file")


def _eval_pool(planned: PoolSource, opts: EvalOptions, wc: WinClip) -> MutualPool | None:
    """--pool's pool on the loaded model (a file checked, or a folder's images built)."""
    grid = TileGrid.parse(opts.tiles, opts.tile_overlap)
    warn = lambda message: warnings.warn(message, stacklevel=2)  # noqa: E731
    return build_pool(planned, wc, grid, opts.batch_size, warn)


def evaluate_command(
    opts: EvalOptions,
    table_stream: IO[str] | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> int:
    """`winclip eval`: check, load the model, evaluate; returns the exit code."""

    prompts = check_eval_options(opts)  # before paying for the model
    # A pool file is read and checked before the model, too.
    planned = plan_pool(opts.pool, None, TileGrid.parse(opts.tiles, opts.tile_overlap))
    wc = WinClip.from_options(opts.model, prompts)
    run_evaluation(
        wc,
        opts.root,
        layout=opts.layout,
        categories=opts.categories,
        shots=opts.shots,
        seeds=opts.seeds,
        class_name=opts.class_name,
        batch_size=opts.batch_size,
        workers=default_workers() if opts.workers is None else opts.workers,
        grid=TileGrid.parse(opts.tiles, opts.tile_overlap),
        scores_path=opts.scores_path,
        json_path=opts.json_path,
        compare=opts.compare == "paper",
        table_stream=table_stream,
        progress=progress,
        calibrate=opts.calibrate,
        mutual=opts.mutual,
        pool=_eval_pool(planned, opts, wc),
    )
    return ExitCode.OK


# ----- text outputs -------------------------------------------------------------------


def eval_with_progress(opts: EvalOptions, reporter: Reporter, quiet: bool) -> int:
    """`winclip eval` from the command line: a line per finished run, the table on stderr
    (none with --quiet)."""

    def progress(p: EvalProgress) -> None:
        if p.done == p.total:
            reporter.info(f"{p.category} k={p.k} seed={p.seed}: {p.total} images")

    table = None if quiet else cast("IO[str]", reporter.stream)
    return evaluate_command(opts, table_stream=table, progress=progress)
