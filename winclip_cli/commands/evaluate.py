"""`winclip eval`: metrics of WinCLIP / WinCLIP+ on labelled MVTec AD or VisA trees.

Planned like a run (planning_eval: the run's checks and EngineSpec), scored through the
engine registry and the pipeline's loop, with fewshot's reference picker; the dataset
layouts are in datasets/, the published figures in paper.py. No CLI framework here.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import torch

from ..data import InputImage
from ..datasets import CategoryData, discover, load_mask
from ..engines import EngineSpec
from ..errors import DatasetError, ExitCode
from ..metrics import DEFAULT_BINS
from ..model import WinClip
from ..options import DEFAULT_BATCH_SIZE, EvalOptions, ModelOptions
from ..planning_eval import EvalPlan, eval_categories, normalise_shots_seeds, plan_eval
from ..pool import MutualPool
from ..pool_source import build_pool
from ..progress import Reporter
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
from .eval_run import EvalEngine, EvalProgress, EvalRun, evaluate_run, relative

if TYPE_CHECKING:
    from ..model import WinClip


__all__ = ["DatasetError", "discover", "format_table", "load_mask", "run_evaluation"]


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
    shots_seeds = normalise_shots_seeds(shots, seeds)
    found = eval_categories(root, layout, categories, shots_seeds, calibrate)
    spec = EngineSpec("local", batch_size, workers, grid or TileGrid(), ModelOptions(), wc.prompts)
    p = EvalPlan(root, found, *shots_seeds, class_name, calibrate, spec, mutual)
    paths = (scores_path, json_path)
    return evaluate(wc, p, bins, paths, compare, table_stream, progress, pool)


def evaluate(
    wc: WinClip,
    p: EvalPlan,
    bins: int,
    paths: tuple[str | os.PathLike[str] | None, str | os.PathLike[str] | None],
    compare: bool,
    table_stream: IO[str] | None,
    progress: Callable[[EvalProgress], None] | None,
    pool: MutualPool | None = None,
) -> dict[str, Any]:
    """Run an EvalPlan with ``wc``: every category, k and seed; the results (see
    run_evaluation), written to ``paths`` (the scores CSV, the JSON) and the table.
    ``pool``: the plan's --pool, built on ``wc``."""
    scores_path, json_path = paths
    shot_list, seed_list, found = p.shots, p.seeds, p.categories
    per_category = sum(len(seeds_for(k, seed_list)) for k in shot_list)
    results: dict[str, Any] = {
        "dataset": {"root": str(p.root), "layout": found[0].layout},
        "model": model_info(wc),
        "mode": "mutual-set" if p.mutual else "mutual-pool" if pool is not None else "winclip",
        "shots": shot_list,
        "seeds": seed_list,
        "bins": bins,
        "categories": {},
        "mean": {},
    }
    results["dataset"]["categories"] = [d.name for d in found]
    with scores_writer(scores_path) as rows:
        for i, data in enumerate(found):
            engine = _category_engine(wc, data, p, pool)
            counts = (i * per_category, len(found) * per_category)
            results["categories"][data.name] = _evaluate_category(
                engine, data, p, counts, bins, rows, progress
            )
    for k in shot_list:
        results["mean"][str(k)] = overall(results["categories"], k, seeds_for(k, seed_list))
    publish(results, compare, table_stream, json_path)
    return results


def _category_engine(
    wc: WinClip, data: CategoryData, p: EvalPlan, pool: MutualPool | None
) -> EvalEngine:
    """The engine of one category: WinCLIP with its text, or mutual scoring (no text)."""
    if not p.mutual and pool is None:
        text = wc.text_embeddings(p.class_name or data.name)
    else:
        text = torch.zeros(2, wc.embed_dim)
    set_size = max(2, len(data.test)) if p.mutual else None  # the test set is one set
    return EvalEngine(wc, text, dataclasses.replace(p.engine, mutual_set=set_size), pool)


def _evaluate_category(
    engine: EvalEngine,
    data: CategoryData,
    p: EvalPlan,
    counts: tuple[int, int],
    bins: int,
    rows: ScoresWriter | None,
    progress: Callable[[EvalProgress], None] | None,
) -> dict[str, Any]:
    """One category's runs (every k, every seed): its entry in the results.
    ``counts``: runs done before this category, and runs in all."""
    number, runs_total = counts
    tests = [InputImage(s.path, str(s.path), relative(s.path, p.root)) for s in data.test]
    entry: dict[str, Any] = {
        "class_name": p.class_name or data.name,
        "num_test": len(data.test),
        "num_anomalous": data.num_anomalous,
        "num_train_good": len(data.train_good),
        "shots": {},
    }
    for k in p.shots:
        runs: list[dict[str, Any]] = []
        for seed in seeds_for(k, p.seeds):
            number += 1
            first = not runs and k == p.shots[0]
            run = EvalRun(data, engine.text, k, seed, number, runs_total, first, p.calibrate)
            figures = evaluate_run(engine, run, tests, bins, rows, p.root, progress)
            runs.append({key: json_value(v) for key, v in figures.items()})
        entry["shots"][str(k)] = {**mean_std(runs), "runs": runs}
    return entry


def evaluate_command(
    opts: EvalOptions,
    table_stream: IO[str] | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> int:
    """`winclip eval`: plan (every check before the model, a --pool file read too), load
    the model, evaluate; returns the exit code."""
    p = plan_eval(opts)
    wc = WinClip.from_options(p.engine.model, p.engine.prompts)
    warn = lambda message: warnings.warn(message, stacklevel=2)  # noqa: E731
    pool = build_pool(p.pool, wc, p.engine.grid, p.engine.batch_size, warn)
    paths = (opts.scores_path, opts.json_path)
    evaluate(wc, p, DEFAULT_BINS, paths, opts.compare == "paper", table_stream, progress, pool)
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
