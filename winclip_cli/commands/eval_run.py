"""One `winclip eval` run (a category, k, seed): its references, its scores and maps
through the local engine, and its metrics (with --calibrate, the calibrated rates)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..calibration import Calibration
from ..data import InputImage
from ..datasets import CategoryData, TestSample, load_mask
from ..decision import ANOMALOUS, CalibratedRule
from ..engines import Engine, EngineSpec, ImageResult
from ..engines.registry import build_engine
from ..engines.scorer import Scorer
from ..errors import DatasetError, ImageReadError
from ..metrics import PixelMetrics, image_metrics
from ..model import WinClip
from ..options import ModelOptions
from ..outputs import full_map
from ..pipeline import reference_pixels
from ..pool import MutualPool
from ..references import calibration_images, pick_references
from ..scoring import upsample
from ..tiling import TileGrid, TileGridError
from .eval_results import (
    ScoresWriter,
)

if TYPE_CHECKING:
    import torch

    from ..bank import ReferenceBank
    from ..model import WinClip


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


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class EvalRun:
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
class EvalEngine:
    """The engine for one category's runs (built through the engine registry, as a run's
    is): the model and text are fixed, the bank changes with k and seed."""

    wc: WinClip
    text: torch.Tensor
    batch_size: int
    workers: int
    grid: TileGrid = field(default_factory=TileGrid)
    pool: MutualPool | None = None  # --pool: mutual scoring against it
    mutual_set: int | None = None  # --mutual: the category's test set as one set

    def with_bank(self, bank: ReferenceBank | None) -> Engine:
        scorer = Scorer(self.wc, self.text, bank, maps=True, pool=self.pool)
        warn = lambda message: warnings.warn(message, stacklevel=2)  # noqa: E731
        spec = EngineSpec(
            "local", self.batch_size, self.workers, self.grid, ModelOptions(), self.wc.prompts,
            mutual_set=self.mutual_set,
        )  # fmt: skip
        return build_engine(spec, scorer, warn)

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


def evaluate_run(
    engine: EvalEngine,
    run: EvalRun,
    tests: list[InputImage],
    bins: int,
    rows: ScoresWriter | None,
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
                path = relative(sample.path, root)
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
            path = relative(sample.path, root)
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
    refs_text = [relative(p, root) for p in refs]
    return {"seed": run.seed, "references": refs_text, **figures}


def _calibration_set(data: CategoryData, refs: list[Path]) -> list[InputImage]:
    """train/good minus this run's references (also copies of them), each file once."""

    def image(p: Path) -> InputImage:
        return InputImage(p, str(p), str(p))

    kept, _ = calibration_images([image(p) for p in sorted(data.train_good)], map(image, refs))
    return kept


def _calibrated_rates(
    local: Engine, run: EvalRun, refs: list[Path], labels: list[int], scores: list[float]
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
