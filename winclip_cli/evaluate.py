"""`winclip eval`: metrics of WinCLIP / WinCLIP+ on labelled MVTec AD or VisA trees.

Library side of the command: dataset discovery (:func:`discover`), one evaluation run
over categories, shots and seeds (:func:`run_evaluation`), and the text outputs (paper-like
table, comparison with the published numbers). No CLI framework is imported here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from .cache import atomic_write
from .data import IMAGE_EXTENSIONS
from .metrics import DEFAULT_BINS, METRIC_KEYS, PixelMetrics, image_metrics
from .outputs import ENCODING_ERRORS, csv_line

if TYPE_CHECKING:
    import torch

    from .model import WinClip

LAYOUTS = ("mvtec", "visa")
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
SCORES_HEADER = ("category", "k", "seed", "path", "label", "score")
# Preprocessed test images of a category are kept in memory across shots and seeds up to
# this size (a few hundred 240x240 images); bigger categories are re-read for every run.
TEST_CACHE_BYTES = 1 << 30

DATASET_NAMES = {"mvtec": "MVTec AD", "visa": "VisA"}
DATASET_CATEGORIES = {"mvtec": 15, "visa": 12}
# WINCLIP.md, "Published results": means over all categories, as fractions.
PAPER_RESULTS: dict[str, dict[int, dict[str, float]]] = {
    "mvtec": {
        0: dict(image_auroc=0.918, image_ap=0.965, image_f1max=0.929,
                pixel_auroc=0.851, pixel_pro=0.646, pixel_f1max=0.317),
        1: dict(image_auroc=0.931, image_ap=0.965, image_f1max=0.937,
                pixel_auroc=0.952, pixel_pro=0.871, pixel_f1max=0.559),
        4: dict(image_auroc=0.952, image_ap=0.973, image_f1max=0.947,
                pixel_auroc=0.962, pixel_pro=0.890, pixel_f1max=0.595),
    },
    "visa": {
        0: dict(image_auroc=0.781, image_ap=0.812, image_f1max=0.790,
                pixel_auroc=0.796, pixel_pro=0.568, pixel_f1max=0.148),
        4: dict(image_auroc=0.873, image_ap=0.888, image_f1max=0.842,
                pixel_auroc=0.972, pixel_pro=0.876, pixel_f1max=0.470),
    },
}  # fmt: skip
COLUMN_TITLES = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_pro": "PRO",
}


class DatasetError(ValueError):
    """A dataset tree that cannot be evaluated; the message is one line naming the problem."""


@dataclass(frozen=True)
class TestSample:
    """One test image: label 1 = anomalous (then ``mask`` is its ground-truth file)."""

    __test__ = False  # not a pytest class

    path: Path
    label: int
    mask: Path | None = None


@dataclass
class CategoryData:
    """A category's training normals (reference pool) and labelled test images."""

    name: str
    layout: str
    root: Path
    train_good: list[Path] = field(default_factory=list)
    test: list[TestSample] = field(default_factory=list)

    @property
    def num_anomalous(self) -> int:
        """Number of anomalous test images."""
        return sum(s.label for s in self.test)


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


# ----- discovery ----------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def detect_layout(root: Path) -> str:
    """'visa' when ROOT/split_csv/1cls.csv exists, 'mvtec' when a category tree is there."""
    if (root / VISA_CSV).is_file():
        return "visa"
    if _mvtec_category_dirs(root):
        return "mvtec"
    raise DatasetError(
        f"no dataset layout found under {root}: expected MVTec AD "
        f"(<category>/test/<defect>/, <category>/train/good/) or VisA ({VISA_CSV})"
    )


def _mvtec_category_dirs(root: Path) -> dict[str, Path]:
    """Category name -> folder; ROOT itself when it is one category (has test/)."""
    if (root / "test").is_dir():
        return {root.resolve().name: root}
    if not root.is_dir():
        return {}
    dirs = (d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("."))
    return {d.name: d for d in dirs if (d / "test").is_dir() or (d / "train").is_dir()}


def _find_mask(folder: Path, stem: str) -> Path | None:
    """MVTec AD names masks ``<stem>_mask.png``; accept any image extension, or ``<stem>.*``."""
    for name in (f"{stem}_mask", stem):
        for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    return None


def _mvtec_category(name: str, folder: Path) -> CategoryData:
    """Read one MVTec AD category folder, checking every anomalous image has a mask."""
    data = CategoryData(name, "mvtec", folder, train_good=_images(folder / "train" / "good"))
    test_dir = folder / "test"
    defects = sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
    for defect in defects:
        label = 0 if defect.name == "good" else 1
        for path in _images(defect):
            mask = _find_mask(folder / "ground_truth" / defect.name, path.stem) if label else None
            if label and mask is None:
                expected = folder / "ground_truth" / defect.name / f"{path.stem}_mask.png"
                raise DatasetError(f"category {name}: no ground-truth mask for {path} ({expected})")
            data.test.append(TestSample(path, label, mask))
    return data


def _read_visa_csv(root: Path) -> list[dict[str, str]]:
    csv_path = root / VISA_CSV
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
            return [{k: (row.get(k) or "").strip() for k in VISA_COLUMNS} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read {csv_path}: {err}") from err


def _visa_file(root: Path, relative: str, what: str) -> Path:
    path = root / relative
    if not relative or not path.is_file():
        raise DatasetError(f"{what} listed in {VISA_CSV} not found: {path}")
    return path


def _visa_category(name: str, root: Path, rows: list[dict[str, str]]) -> CategoryData:
    """One VisA object from its 1cls.csv rows, checking files and labels."""
    data = CategoryData(name, "visa", root)
    for row in rows:
        label = {"normal": 0, "anomaly": 1}.get(row["label"].lower())
        if label is None:
            raise DatasetError(f"{VISA_CSV}: unknown label {row['label']!r} for {row['image']}")
        split = row["split"].lower()
        if split == "train" and label == 0:
            data.train_good.append(_visa_file(root, row["image"], "image"))
        elif split == "test":
            image = _visa_file(root, row["image"], "image")
            mask = _visa_file(root, row["mask"], f"mask of {row['image']}") if label else None
            data.test.append(TestSample(image, label, mask))
    data.train_good.sort()
    return data


def _select(available: Sequence[str], categories: Sequence[str] | None, root: Path) -> list[str]:
    """The requested categories (all by default), refusing unknown names."""
    if not available:
        raise DatasetError(f"no categories found under {root}")
    if not categories:
        return list(available)
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DatasetError(
            f"unknown category {', '.join(unknown)} under {root}; available: {', '.join(available)}"
        )
    return list(dict.fromkeys(categories))


def is_dataset_file(root: Path, path: Path) -> bool:
    """Whether ``path`` is part of the dataset under ``root``: an image, a mask or the
    VisA split CSV. Results of an earlier eval kept there (`--json data/results.json`)
    are not."""
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            return False
        return path.suffix.lower() in IMAGE_EXTENSIONS or resolved == (root / VISA_CSV).resolve()
    except OSError:
        return False


def discover(
    root: str | os.PathLike[str], layout: str = "auto", categories: Sequence[str] | None = None
) -> list[CategoryData]:
    """Find the categories of an MVTec AD or VisA tree (``layout`` 'auto', 'mvtec', 'visa').

    Only the selected ``categories`` (all when None) are read and checked. Raises
    DatasetError for an unknown layout or category, a category without test images, or
    an anomalous test image without a ground-truth mask.
    """
    root = Path(root)
    if not root.is_dir():
        why = "is not a folder" if root.exists() else "not found"
        raise DatasetError(f"dataset folder {why}: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "mvtec":
        folders = _mvtec_category_dirs(root)
        found = [_mvtec_category(n, folders[n]) for n in _select(list(folders), categories, root)]
    elif layout == "visa":
        if not (root / VISA_CSV).is_file():
            raise DatasetError(f"not a VisA tree: {root / VISA_CSV} not found")
        by_object: dict[str, list[dict[str, str]]] = {}
        for row in _read_visa_csv(root):
            by_object.setdefault(row["object"], []).append(row)
        names = _select(sorted(by_object), categories, root)
        found = [_visa_category(n, root, by_object[n]) for n in names]
    else:
        raise DatasetError(f"unknown layout {layout!r}: use auto, {', '.join(LAYOUTS)}")
    for data in found:
        if not data.test:
            raise DatasetError(f"category {data.name} has no test images")
        for sample in data.test:
            if sample.mask is not None:
                _check_mask_fits(sample.mask, sample.path)
    return found


def _check_mask_fits(mask: Path, image: Path) -> None:
    """Headers only (no decoding): a mask that is no image, or whose shape differs from its
    image's, is found before any model time is spent. A different size of the same shape
    is fine: both are resized to the model's input."""
    sizes = []
    for path, what in ((mask, "mask"), (image, "image")):
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DatasetError(f"cannot read {what} {path}: {' '.join(str(err).split())}") from err
    (mw, mh), (iw, ih) = sizes
    if abs(mw * ih - mh * iw) > 0.01 * iw * ih:  # aspect ratios differ by over 1 %
        raise DatasetError(
            f"mask {mask} is {mw}x{mh}, its image {image} is {iw}x{ih}: the mask would not "
            "line up with the image"
        )


# ----- loading ------------------------------------------------------------------------


def load_image(path: Path) -> Image.Image:
    """The test or reference image in RGB (data.open_image), or DatasetError: a skipped
    image would silently change the metrics."""
    from .data import ImageReadError, open_image

    try:
        return open_image(path)
    except ImageReadError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask at ``size`` (nearest-neighbour resize, > 0); all False for None.

    Read without the RGB conversion of images: 16-bit 0/1 masks would round to zero.
    """
    if path is None:
        return np.zeros(size, dtype=bool)
    try:
        with Image.open(path) as img:
            img.load()
            mask = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read mask {path}: {' '.join(str(err).split())}") from err
    if mask.mode not in ("1", "L", "I", "I;16", "F"):
        mask = mask.convert("L")
    resized = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def _preprocess(wc: WinClip, paths: Sequence[Path]) -> torch.Tensor:
    import torch

    return torch.stack([wc.preprocess(load_image(p)) for p in paths])


Batch = tuple[list[TestSample], "torch.Tensor", np.ndarray]


class _TestSet:
    """Batches of (samples, model inputs, masks at input size), cached when small enough."""

    def __init__(self, wc: WinClip, samples: list[TestSample], batch_size: int) -> None:
        self.wc, self.samples, self.batch_size = wc, samples, batch_size
        height, width = wc.input_size
        self.keep = len(samples) * height * width * 13 <= TEST_CACHE_BYTES  # 12 B input + mask
        self._cache: list[Batch] | None = None

    def batches(self) -> Iterator[Batch]:
        if self._cache is not None:
            yield from self._cache
            return
        loaded = []
        for start in range(0, len(self.samples), self.batch_size):
            chunk = self.samples[start : start + self.batch_size]
            masks = np.stack([load_mask(s.mask, self.wc.input_size) for s in chunk])
            for sample, mask in zip(chunk, masks, strict=True):
                if sample.label and not mask.any():
                    warnings.warn(
                        f"the mask of anomalous image {sample.path} is empty: its defect "
                        "counts as normal pixels",
                        stacklevel=1,
                    )
            batch = (chunk, _preprocess(self.wc, [s.path for s in chunk]), masks)
            if self.keep:
                loaded.append(batch)
            yield batch
        if self.keep:
            self._cache = loaded


# ----- evaluation ---------------------------------------------------------------------


def draw_references(data: CategoryData, k: int, seed: int) -> list[Path]:
    """``k`` training normals drawn with ``random.Random(seed)`` (sorted pool)."""
    if len(data.train_good) < k:
        raise DatasetError(
            f"category {data.name}: {k}-shot needs {k} training normal images, "
            f"found {len(data.train_good)}"
        )
    return random.Random(seed).sample(sorted(data.train_good), k)


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


def _evaluate_run(
    wc: WinClip,
    run: _Run,
    tests: _TestSet,
    *,
    batch_size: int,
    bins: int,
    rows: Any,
    root: Path,
    progress: Callable[[EvalProgress], None] | None,
) -> dict[str, Any]:
    """Scores and metrics of one run; writes its rows to the scores CSV writer ``rows``."""
    from .model import upsample

    refs = draw_references(run.data, run.k, run.seed) if run.k else []
    bank = wc.reference_bank(_preprocess(wc, refs), batch_size=batch_size) if refs else None
    pixels = PixelMetrics(bins)
    labels: list[int] = []
    scores: list[float] = []
    total = len(run.data.test)
    for samples, x, masks in tests.batches():
        pred = wc.predict(x, text=run.text, bank=bank, maps=True)
        pixels.update(upsample(pred.grid_maps, wc.input_size).numpy(), masks)
        batch_scores = pred.image_scores.double().tolist()
        for sample, score in zip(samples, batch_scores, strict=True):
            if rows is not None:
                path = _relative(sample.path, root)
                rows.writerow([run.data.name, run.k, run.seed, path, sample.label, repr(score)])
        labels += [s.label for s in samples]
        scores += batch_scores
        if progress is not None:
            args = (run.data.name, run.k, run.seed, len(labels), total, run.number, run.runs)
            progress(EvalProgress(*args))
    figures = image_metrics(np.array(labels), np.array(scores))
    figures.update(pixels.results())
    refs_text = [_relative(p, root) for p in refs]
    return {"seed": run.seed, "references": refs_text, **figures}


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and (population) standard deviation over seeds of each metric; None when undefined."""
    out: dict[str, dict[str, float | None]] = {"mean": {}, "std": {}}
    for key in METRIC_KEYS:
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
        for key in METRIC_KEYS:
            values = [c["shots"][str(k)]["runs"][i][key] for c in per_category.values()]
            defined = [v for v in values if v is not None]
            row[key] = float(np.mean(defined)) if defined else None
        per_seed.append(row)
    return _mean_std(per_seed)


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
    batch_size: int = 8,
    bins: int = DEFAULT_BINS,
    scores_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    compare: bool = False,
    table_stream: IO[str] | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``wc`` on a labelled dataset tree and return the JSON-able results.

    Arguments: ``root`` the dataset folder; ``layout`` 'auto' | 'mvtec' | 'visa';
    ``categories`` names to evaluate (None: all); ``shots`` the k values (0 = zero-shot,
    k > 0 = WinCLIP+ with k references drawn from the training normals); ``seeds`` the
    number of seeds (0..N-1) or the seeds themselves, for k > 0 (k = 0 runs once);
    ``class_name`` the prompt class for every category (None: the category name);
    ``batch_size`` images per forward pass; ``bins`` histogram bins of the pixel metrics;
    ``scores_path`` per-image CSV (category, k, seed, path, label, score), rows flushed as
    they come; ``json_path`` the results as JSON; ``compare`` add the paper's numbers;
    ``table_stream`` where the table (and comparison) is written; ``progress`` called with
    an EvalProgress after every test batch.

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
            if k:
                draw_references(data, k, seed_list[0])
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
            tests = _TestSet(wc, data.test, batch_size)
            entry: dict[str, Any] = {
                "class_name": name,
                "num_test": len(data.test),
                "num_anomalous": data.num_anomalous,
                "num_train_good": len(data.train_good),
                "shots": {},
            }
            for k in shot_list:
                runs = []
                for seed in _seeds_for(k, seed_list):
                    number += 1
                    run = _Run(data, text, k, seed, number, runs_total)
                    figures = _evaluate_run(
                        wc, run, tests, batch_size=batch_size, bins=bins,
                        rows=rows, root=root, progress=progress,
                    )  # fmt: skip
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
        lines.append(
            "category".ljust(width) + "".join(t.rjust(cell) for t in COLUMN_TITLES.values())
        )
        rows = [(n, results["categories"][n]["shots"][str(k)]) for n in names]
        rows.append(("mean", results["mean"][str(k)]))
        for name, entry in rows:
            cells = (_cell(entry["mean"][m], entry["std"][m], with_std) for m in COLUMN_TITLES)
            lines.append(name.ljust(width) + "".join(c.rjust(cell) for c in cells))
        lines.append("")
    return "\n".join(lines) + "\n"


def compare_with_paper(results: dict[str, Any]) -> dict[str, Any]:
    """Paper means (WINCLIP.md) beside the measured means and their difference, per k."""
    layout = results["dataset"]["layout"]
    out: dict[str, Any] = {
        "dataset": DATASET_NAMES[layout],
        "categories_measured": len(results["categories"]),
        "categories_in_paper": DATASET_CATEGORIES[layout],
        "shots": {},
    }
    for k in results["shots"]:
        paper = PAPER_RESULTS[layout].get(k)
        if paper is None:
            out["shots"][str(k)] = None
            continue
        measured = {m: results["mean"][str(k)]["mean"][m] for m in paper}
        diff = {m: None if measured[m] is None else measured[m] - paper[m] for m in paper}
        out["shots"][str(k)] = {"paper": paper, "measured": measured, "difference": diff}
    return out


def _categories(count: int) -> str:
    return f"{count} category" if count == 1 else f"{count} categories"


def format_comparison(comparison: dict[str, Any]) -> str:
    """Text block: paper vs measured means (in %) with the difference, per k."""
    lines = [
        f"Compared with the paper ({comparison['dataset']}; measured over "
        f"{_categories(comparison['categories_measured'])}, paper over "
        f"{comparison['categories_in_paper']}), in %:",
        f"{'k':>3}  {'metric':<9}{'paper':>8}{'measured':>10}{'diff':>8}",
    ]
    for k, entry in comparison["shots"].items():
        if entry is None:
            lines.append(f"{k:>3}  no published figure for {k}-shot")
            continue
        for metric, paper in entry["paper"].items():
            measured, diff = entry["measured"][metric], entry["difference"][metric]
            m_text = "n/a" if measured is None else f"{100 * measured:.1f}"
            d_text = "n/a" if diff is None else f"{100 * diff:+.1f}"
            title = COLUMN_TITLES[metric]
            lines.append(f"{k:>3}  {title:<9}{100 * paper:>8.1f}{m_text:>10}{d_text:>8}")
    return "\n".join(lines) + "\n\n"
