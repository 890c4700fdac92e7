"""`winclip eval`: metrics of WinCLIP / WinCLIP+ on labelled MVTec AD or VisA trees.

The same engine and loader as the scoring commands (engines.local, DataLoader workers)
and the same reference picker as fewshot; the dataset layouts are in datasets/, the
published figures in paper.py. No CLI framework is imported here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write
from ..calibration import Calibration, conformal_rank
from ..checks import check_class_name, check_model_options, prompt_file, tile_grid
from ..data import InputImage
from ..datasets import CategoryData, TestSample, discover, is_dataset_file, load_mask
from ..decision import ANOMALOUS, CalibratedRule
from ..engines import ImageResult
from ..engines.local import LocalEngine
from ..engines.scorer import Scorer
from ..errors import CalibrationError, DatasetError, ExitCode, ImageReadError, UsageError
from ..metrics import COLUMN_TITLES, DEFAULT_BINS, METRIC_KEYS, PixelMetrics, image_metrics
from ..model import WinClip
from ..options import DEFAULT_BATCH_SIZE, EvalOptions, default_workers
from ..outputs import full_map
from ..paper import DATASET_NAMES, compare_with_paper, format_comparison
from ..paths import check_writable_file, refuse_overwriting
from ..pipeline import reference_pixels
from ..progress import Reporter
from ..prompts import PromptSet
from ..references import calibration_images, pick_references
from ..rows import ENCODING_ERRORS, csv_line
from ..scoring import upsample
from ..tiling import TileGrid, TileGridError

if TYPE_CHECKING:
    import torch

    from ..bank import ReferenceBank
    from ..model import WinClip

SCORES_HEADER = ("category", "k", "seed", "path", "label", "score")

__all__ = ["DatasetError", "discover", "format_table", "load_mask", "run_evaluation"]


@dataclass(frozen=True)
class EvalProgress:
    """Reported after each test batch: run ``run`` of ``runs`` (1-based), ``done``/``total``
    test images of that run."""

    category: str
    k: int
    seed: int
    done: int
    total: int
    run: int
    runs: int


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


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class _Run:
    """What one (category, k, seed) needs besides the model."""

    data: CategoryData
    text: torch.Tensor
    k: int
    seed: int
    number: int
    runs: int
    first_of_category: bool  # warns about the category's masks once
    calibrate: float | None = None  # --calibrate A


@dataclass
class _Engine:
    """The local engine for one category's runs: the model and text are fixed, the bank
    changes with k and seed."""

    wc: WinClip
    text: torch.Tensor
    batch_size: int
    workers: int
    grid: TileGrid = field(default_factory=TileGrid)

    def with_bank(self, bank: ReferenceBank | None) -> LocalEngine:
        scorer = Scorer(self.wc, self.text, bank, maps=True)
        warn = lambda message: warnings.warn(message, stacklevel=2)  # noqa: E731
        return LocalEngine(scorer, self.batch_size, self.workers, self.grid, warn)

    def bank(self, refs: list[Path]) -> ReferenceBank | None:
        if not refs:
            return None
        try:
            x = reference_pixels(self.wc, refs, self.grid)
        except (ImageReadError, TileGridError) as err:  # readable a moment ago
            raise DatasetError(f"cannot read reference {refs}: {err}") from err
        return self.wc.reference_bank(x, batch_size=self.batch_size)


def eval_size(
    width: int, height: int, grid: TileGrid, input_size: tuple[int, int]
) -> tuple[int, int]:
    """(height, width) at which a tiled image's map and mask are compared: per axis the
    tiles' combined input resolution (R * input height, C * input width), never above the
    image's own. That is what the tiles resolve (finer only interpolates; coarser loses
    the gain); 1x1 compares at the input size, as untiled."""
    if grid.is_single:
        return input_size
    return min(height, grid.rows * input_size[0]), min(width, grid.cols * input_size[1])


def _tiled_eval_map(result: ImageResult, size: tuple[int, int]) -> np.ndarray:
    """A tiled result's stitched map (at the image's size), resized to ``size``."""

    assert result.size is not None
    width, height = result.size
    full = torch.from_numpy(full_map(None, result.tiles, height, width))
    if (height, width) == size:
        return full.numpy()
    small = F.interpolate(full[None, None], size=size, mode="bilinear", antialias=True)
    return small[0, 0].numpy()


def _warn_empty_mask(sample: TestSample, mask: np.ndarray) -> None:
    if sample.label and not mask.any():
        warnings.warn(
            f"the mask of anomalous image {sample.path} is empty: its defect counts as "
            "normal pixels",
            stacklevel=2,
        )


def _evaluate_run(
    engine: _Engine,
    run: _Run,
    tests: list[InputImage],
    bins: int,
    rows: _ScoresWriter | None,
    root: Path,
    progress: Callable[[EvalProgress], None] | None,
) -> dict[str, Any]:
    """Scores and metrics of one run; writes its rows to the scores CSV writer ``rows``."""

    wc = engine.wc
    refs = draw_references(run.data, run.k, run.seed) if run.k else []
    local = engine.with_bank(engine.bank(refs))
    pixels = PixelMetrics(bins)
    labels: list[int] = []
    scores: list[float] = []
    samples = run.data.test
    total = len(samples)
    chunk_maps: list[torch.Tensor] = []
    chunk_masks: list[np.ndarray] = []
    for index, result in enumerate(local.predict(tests)):
        sample = samples[index]
        if result.error is not None or not result.has_map or result.score is None:
            # A skipped image would silently change the metrics.
            raise DatasetError(f"cannot read image {sample.path}: {result.error}")
        if result.grid_map is None:  # tiled: one image at a time, at its eval size
            assert result.size is not None
            size = eval_size(*result.size, engine.grid, wc.input_size)
            mask = load_mask(sample.mask, size)
            if run.first_of_category:
                _warn_empty_mask(sample, mask)
            pixels.update(_tiled_eval_map(result, size), mask)
            if rows is not None:
                path = _relative(sample.path, root)
                rows.writerow(
                    [run.data.name, run.k, run.seed, path, sample.label, repr(result.score)]
                )
            labels.append(sample.label)
            scores.append(result.score)
            if progress is not None and (
                len(labels) % engine.batch_size == 0 or index + 1 == total
            ):
                args = (run.data.name, run.k, run.seed, len(labels), total, run.number, run.runs)
                progress(EvalProgress(*args))
            continue
        mask = load_mask(sample.mask, wc.input_size)
        if run.first_of_category:
            _warn_empty_mask(sample, mask)
        chunk_maps.append(result.grid_map)
        chunk_masks.append(mask)
        if rows is not None:
            path = _relative(sample.path, root)
            rows.writerow([run.data.name, run.k, run.seed, path, sample.label, repr(result.score)])
        labels.append(sample.label)
        scores.append(result.score)
        if len(chunk_maps) == engine.batch_size or index + 1 == total:
            maps = upsample(torch.stack(chunk_maps), wc.input_size).numpy()
            pixels.update(maps, np.stack(chunk_masks))
            chunk_maps, chunk_masks = [], []
            if progress is not None:
                args = (run.data.name, run.k, run.seed, len(labels), total, run.number, run.runs)
                progress(EvalProgress(*args))
    figures = image_metrics(np.array(labels), np.array(scores))
    figures.update(pixels.results())
    if run.calibrate is not None:
        figures.update(_calibrated_rates(local, run, refs, labels, scores))
    refs_text = [_relative(p, root) for p in refs]
    return {"seed": run.seed, "references": refs_text, **figures}


# Figures of --calibrate, and how the table titles them.
CAL_TITLES = {"far": "FAR", "tpr": "TPR", "threshold": "thresh", "n_cal": "n_cal"}


def _calibration_set(data: CategoryData, refs: list[Path]) -> list[InputImage]:
    """train/good minus this run's references (also copies of them), each file once."""

    def image(p: Path) -> InputImage:
        return InputImage(p, str(p), str(p))

    kept, _ = calibration_images([image(p) for p in sorted(data.train_good)], map(image, refs))
    return kept


def _calibrated_rates(
    local: LocalEngine, run: _Run, refs: list[Path], labels: list[int], scores: list[float]
) -> dict[str, Any]:
    """Calibrate on train/good (minus the references) at rate A; the realised false-alarm
    rate on test/good and the detection rate on the test defects."""

    assert run.calibrate is not None
    images = _calibration_set(run.data, refs)
    cal_scores = []
    for image, result in zip(images, local.predict(images), strict=True):
        if result.error is not None or result.score is None:
            raise DatasetError(f"cannot read training image {image.path}: {result.error}")
        cal_scores.append(result.score)
    cal = Calibration({}, np.asarray(cal_scores), None, None, [str(i.path) for i in images])
    rule = CalibratedRule.from_calibration(cal, run.calibrate)
    decided = np.array([rule.label(s) == ANOMALOUS for s in scores])
    truth = np.array(labels, dtype=bool)
    return {
        "far": float(decided[~truth].mean()) if (~truth).any() else None,
        "tpr": float(decided[truth].mean()) if truth.any() else None,
        "threshold": rule.threshold,
        "n_cal": cal.n,
    }


def _check_calibration_sizes(found: list[CategoryData], shots: list[int], alpha: float) -> None:
    """Enough training normals for rate A in every run, before any model time is spent."""

    for data in found:
        for k in shots:
            try:
                conformal_rank(len(data.train_good) - k, alpha)
            except CalibrationError as exc:
                raise DatasetError(f"category {data.name}, {k}-shot --calibrate: {exc}") from exc


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and (population) standard deviation over seeds of each metric; None when undefined."""
    out: dict[str, dict[str, float | None]] = {"mean": {}, "std": {}}
    for key in _keys(runs):
        values = np.array([np.nan if r[key] is None else r[key] for r in runs], dtype=np.float64)
        defined = values[~np.isnan(values)]
        out["mean"][key] = float(defined.mean()) if len(defined) else None
        out["std"][key] = float(defined.std()) if len(defined) else None
    return out


def _overall(per_category: dict[str, Any], k: int, seeds: list[int]) -> dict[str, Any]:
    """Mean over categories for each seed, then mean / std of that over seeds."""
    per_seed = []
    for i, seed in enumerate(seeds):
        row: dict[str, Any] = {"seed": seed}
        first = next(iter(per_category.values()))["shots"][str(k)]["runs"]
        for key in _keys(first):
            values = [c["shots"][str(k)]["runs"][i][key] for c in per_category.values()]
            defined = [v for v in values if v is not None]
            row[key] = float(np.mean(defined)) if defined else None
        per_seed.append(row)
    return _mean_std(per_seed)


def _keys(runs: list[dict[str, Any]]) -> list[str]:
    """The metrics of these runs: the paper's, and --calibrate's when present."""
    return list(METRIC_KEYS) + [key for key in CAL_TITLES if runs and key in runs[0]]


def _seeds_for(k: int, seeds: list[int]) -> list[int]:
    # Zero-shot has no randomness: one run, recorded under the first seed.
    return seeds[:1] if k == 0 else seeds


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
    (c_(k)) and ``n_cal``.

    Results: ``categories[name]["shots"][str(k)]`` = {"mean", "std", "runs"} and
    ``mean[str(k)]`` = {"mean", "std"} (over categories, then over seeds), each metric a
    fraction in [0, 1], None where undefined (e.g. AUROC without anomalies); ``paper``
    with ``compare``. Raises DatasetError for a tree that cannot be evaluated (before any
    model time is spent, except for unreadable images, found when read).
    """
    root = Path(root)
    shot_list, seed_list = _normalise_options(shots, seeds)
    found = discover(root, layout, categories)
    for data in found:  # fail before any model time is spent
        for k in shot_list:
            if k and len(data.train_good) < k:
                draw_references(data, k, seed_list[0])  # raises, saying what is missing
    if calibrate is not None:
        _check_calibration_sizes(found, shot_list, calibrate)
    layout = found[0].layout
    runs_total = len(found) * sum(len(_seeds_for(k, seed_list)) for k in shot_list)
    results: dict[str, Any] = {
        "dataset": {"root": str(root), "layout": layout, "categories": [d.name for d in found]},
        "model": _model_info(wc),
        "shots": shot_list,
        "seeds": seed_list,
        "bins": bins,
        "categories": {},
        "mean": {},
    }
    with _scores_writer(scores_path) as rows:
        number = 0
        for data in found:
            name = class_name or data.name
            text = wc.text_embeddings(name)
            tests = [InputImage(s.path, str(s.path), _relative(s.path, root)) for s in data.test]
            entry: dict[str, Any] = {
                "class_name": name,
                "num_test": len(data.test),
                "num_anomalous": data.num_anomalous,
                "num_train_good": len(data.train_good),
                "shots": {},
            }
            for k in shot_list:
                runs: list[dict[str, Any]] = []
                for seed in _seeds_for(k, seed_list):
                    number += 1
                    first = not runs and k == shot_list[0]
                    run = _Run(data, text, k, seed, number, runs_total, first, calibrate)
                    engine = _Engine(wc, text, batch_size, workers, grid or TileGrid())
                    figures = _evaluate_run(engine, run, tests, bins, rows, root, progress)
                    runs.append({key: _json_value(v) for key, v in figures.items()})
                entry["shots"][str(k)] = {**_mean_std(runs), "runs": runs}
            results["categories"][data.name] = entry
    for k in shot_list:
        results["mean"][str(k)] = _overall(results["categories"], k, _seeds_for(k, seed_list))
    if compare:
        results["paper"] = compare_with_paper(results)
    if table_stream is not None:
        table_stream.write(format_table(results))
        if compare:
            table_stream.write(format_comparison(results["paper"]))
        table_stream.flush()
    if json_path is not None:
        _write_json(Path(json_path), results)
    return results


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
    inputs = [p for p in (opts.model.weights, prompt_file(opts.model)) if p is not None]
    for option, path in (("--json", opts.json_path), ("--scores", opts.scores_path)):
        if path is not None and str(path) != "-":
            check_writable_file(path)
            protected = [*inputs, path] if is_dataset_file(opts.root, path) else inputs
            refuse_overwriting(option, path, protected)
    json_path, scores_path = opts.json_path, opts.scores_path
    if json_path and scores_path and os.path.abspath(json_path) == os.path.abspath(scores_path):
        raise UsageError("--json and --scores name the same file")
    prompts = check_model_options(opts.model)
    found = discover(opts.root, layout=opts.layout, categories=opts.categories)
    if opts.calibrate is not None:
        _check_calibration_sizes(found, opts.shots, opts.calibrate)
    return prompts


def evaluate_command(
    opts: EvalOptions,
    table_stream: IO[str] | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> int:
    """`winclip eval`: check, load the model, evaluate; returns the exit code."""

    prompts = check_eval_options(opts)  # before paying for the model
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
    )
    return ExitCode.OK


def _json_value(value: Any) -> Any:
    return _nan_to_none(value) if isinstance(value, float) else value


def _model_info(wc: WinClip) -> dict[str, Any]:
    backbone = wc.backbone
    return {
        "model": getattr(backbone, "model_name", None),
        "weights": getattr(backbone, "weights_id", None),
        "input_size": list(wc.input_size),
        "temperature": wc.temperature,
    }


@contextlib.contextmanager
def _scores_writer(path: str | os.PathLike[str] | None) -> Iterator[_ScoresWriter | None]:
    """A row writer on the scores CSV (header written), or None without a path."""
    if path is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        if os.fspath(path) == "-":  # stdout: rows for a pipe, the table stays on stderr
            fh: IO[str] = sys.stdout
        else:
            fh = stack.enter_context(
                open(path, "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS)
            )
        writer = _ScoresWriter(fh)
        writer.writerow(SCORES_HEADER)
        yield writer


@dataclass
class _ScoresWriter:
    # The same record format as the scoring commands' rows (outputs.csv_line), flushed as
    # they come: an interrupted run leaves every finished row.
    fh: IO[str]

    def writerow(self, row: Sequence[Any]) -> None:
        self.fh.write(csv_line([str(v) for v in row]))
        self.fh.flush()


def _write_json(path: Path, results: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: never a half-written file under ``path``."""
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    if os.fspath(path) == "-":  # stdout, for a pipe into jq; the table stays on stderr
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8", errors=ENCODING_ERRORS)))


# ----- text outputs -------------------------------------------------------------------


def _cell(mean: float | None, std: float | None, with_std: bool) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}"
    return f"{text}±{100 * std:.1f}" if with_std and std is not None else text


def _cell_of(key: str, mean: float | None, std: float | None, with_std: bool) -> str:
    """Rates in %, like the metrics; the threshold and n_cal as they are."""
    if key == "threshold" and mean is not None:
        return f"{mean:.4f}"
    if key == "n_cal" and mean is not None:
        return f"{mean:.0f}"
    return _cell(mean, std, with_std)


def format_table(results: dict[str, Any]) -> str:
    """The paper-style table: one block per k, rows categories + mean, metrics in %."""
    layout = results["dataset"]["layout"]
    names = list(results["categories"])
    width = max(len("category"), *(len(n) for n in names), len("mean")) + 2
    lines = []
    for k in results["shots"]:
        seeds = len(_seeds_for(k, results["seeds"]))
        with_std = seeds > 1
        cell = 12 if with_std else 8
        note = f"mean±std over {seeds} seeds" if with_std else "1 run"
        lines.append(f"{DATASET_NAMES[layout]} layout, {k}-shot ({note}), metrics in %")
        titles = dict(COLUMN_TITLES)
        titles.update(
            {key: t for key, t in CAL_TITLES.items() if key in results["mean"][str(k)]["mean"]}
        )
        lines.append("category".ljust(width) + "".join(t.rjust(cell) for t in titles.values()))
        rows = [(n, results["categories"][n]["shots"][str(k)]) for n in names]
        rows.append(("mean", results["mean"][str(k)]))
        for name, entry in rows:
            cells = (_cell_of(m, entry["mean"][m], entry["std"][m], with_std) for m in titles)
            lines.append(name.ljust(width) + "".join(c.rjust(cell) for c in cells))
        lines.append("")
    return "\n".join(lines) + "\n"


def eval_with_progress(opts: EvalOptions, reporter: Reporter, quiet: bool) -> int:
    """`winclip eval` from the command line: a line per finished run, the table on stderr
    (none with --quiet)."""

    def progress(p: EvalProgress) -> None:
        if p.done == p.total:
            reporter.info(f"{p.category} k={p.k} seed={p.seed}: {p.total} images")

    table = None if quiet else cast("IO[str]", reporter.stream)
    return evaluate_command(opts, table_stream=table, progress=progress)
