"""`winclip eval`'s checks before the model loads, and its Plan: the categories, the
shots and seeds, where the figures go, and the engine of every run.

The option checks and the EngineSpec are the runs' own (checks.check_numbers,
planning.engine_spec), so eval scores exactly as `winclip segment` would.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check_model_options, check_numbers, model_files
from .conformal import conformal_rank
from .datasets import CategoryData, discover, is_dataset_file
from .engines import EngineSpec
from .errors import CalibrationError, DatasetError, UsageError
from .options import DEFAULT_CLASS, EvalOptions, RunOptions
from .overlaps import FileUse, refuse_overlaps
from .paths import check_writable_file
from .planning import engine_spec
from .pool_source import PoolSource, plan_pool
from .references import pick_references


@dataclass(frozen=True)
class EvalPlan:
    """Everything `winclip eval` needs besides the model, checked."""

    root: Path
    categories: list[CategoryData]  # discovered, each with enough training normals
    shots: list[int]  # the k values, each once (0: zero-shot)
    seeds: list[int]
    class_name: str | None  # the prompt class of every category; None: its own name
    calibrate: float | None  # --calibrate A
    engine: EngineSpec  # the local engine of every run: batch size, workers, grid, model
    mutual: bool = False  # --mutual: each category's test set scored as one set
    pool: PoolSource = field(default_factory=PoolSource)  # --pool, planned (a file read)


def normalise_shots_seeds(
    shots: Sequence[int], seeds: int | Sequence[int]
) -> tuple[list[int], list[int]]:
    """The k values (each once, in order) and the seeds (N: 0..N-1); ValueError when
    either is empty or a k is negative."""
    shot_list = list(dict.fromkeys(int(k) for k in shots))
    if not shot_list or any(k < 0 for k in shot_list):
        raise ValueError("shots must be a non-empty list of k >= 0")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("at least one seed is needed")
    return shot_list, seed_list


def draw_references(data: CategoryData, k: int, seed: int | None) -> list[Path]:
    """The ``k`` references of a category: fewshot's picker (references.pick_references)
    over the training normals, so `fewshot --ref train/good --k K --seed S` and eval use
    the same images. Unreadable ones are passed over with a warning."""
    if len(data.train_good) < k:
        raise DatasetError(
            f"category {data.name}: {k}-shot needs {k} training normal images, "
            f"found {len(data.train_good)}"
        )
    chosen, skipped = pick_references(
        sorted(data.train_good), k, seed, path_of=lambda p: p, name_of=str
    )
    for message in skipped:
        warnings.warn(message, stacklevel=2)
    if len(chosen) < k:
        raise DatasetError(
            f"category {data.name}: {k}-shot needs {k} readable training normal images, "
            f"found {len(chosen)} of {len(data.train_good)}"
        )
    return chosen


def check_calibration_sizes(found: list[CategoryData], shots: list[int], alpha: float) -> None:
    """Enough training normals for rate A in every run, before any model time is spent."""
    for data in found:
        for k in shots:
            try:
                conformal_rank(len(data.train_good) - k, alpha)
            except CalibrationError as exc:
                raise DatasetError(f"category {data.name}, {k}-shot --calibrate: {exc}") from exc


def eval_categories(
    root: Path,
    layout: str,
    categories: Sequence[str] | None,
    shots_seeds: tuple[list[int], list[int]],
    calibrate: float | None,
) -> list[CategoryData]:
    """The categories to evaluate, checked before any model time is spent (DatasetError:
    too few training normals for a k, or for --calibrate)."""
    shot_list, seed_list = shots_seeds
    found = discover(root, layout, categories)
    for data in found:
        for k in shot_list:
            if k and len(data.train_good) < k:
                draw_references(data, k, seed_list[0])  # raises, saying what is missing
    if calibrate is not None:
        check_calibration_sizes(found, shot_list, calibrate)
    return found


def _check_outputs(opts: EvalOptions) -> None:
    """--json and --scores: writable, two files, neither a file eval reads."""
    reads, writes = model_files(opts.model), []
    for option, path in (("--json", opts.json_path), ("--scores", opts.scores_path)):
        if path is not None and str(path) != "-":
            check_writable_file(path)
            writes.append(FileUse(option, path))
            if is_dataset_file(opts.root, path):  # results kept in the dataset are outputs
                reads.append(FileUse("a file of the dataset", path))
    refuse_overlaps(reads, writes)


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


def plan_eval(opts: EvalOptions) -> EvalPlan:
    """Every check that needs no model (UsageError, DatasetError), and the EvalPlan."""
    if opts.compare not in (None, "paper"):
        raise UsageError(f"--compare {opts.compare!r}: the only comparison is 'paper'")
    if opts.seeds < 1 or any(shot < 0 for shot in opts.shots):
        raise UsageError("--seeds must be at least 1 and every --k at least 0")
    # The run's own checks of what eval shares with it (class, batch size, workers,
    # tiles, engine); eval writes no rows (the output only keeps stdout out of it).
    run = RunOptions(
        inputs=[opts.root],
        class_name=opts.class_name or DEFAULT_CLASS,
        maps=True,
        batch_size=opts.batch_size,
        workers=opts.workers,
        tiles=opts.tiles,
        tile_overlap=opts.tile_overlap,
        output=os.devnull,
        model=opts.model,
    )
    check_numbers(run)
    _check_mutual_eval(opts)
    _check_outputs(opts)
    prompts = check_model_options(opts.model)
    shots_seeds = normalise_shots_seeds(opts.shots, opts.seeds)
    found = eval_categories(opts.root, opts.layout, opts.categories, shots_seeds, opts.calibrate)
    spec = engine_spec(run, prompts)
    pool = plan_pool(opts.pool, None, spec.grid)  # a pool file is read and checked here
    plan = (opts.root, found, *shots_seeds, opts.class_name, opts.calibrate, spec)
    return EvalPlan(*plan, opts.mutual, pool)
