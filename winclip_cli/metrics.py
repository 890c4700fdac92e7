"""Anomaly-detection metrics: image AUROC / AP / F1-max (exact), pixel metrics and PRO (streamed).

Image-level metrics are computed exactly with scikit-learn. Pixel-level metrics must cover
thousands of full-size maps, so they are accumulated batch by batch into fixed-size score
histograms (:class:`PixelMetrics`); memory is O(bins), whatever the number of pixels.

scikit-learn and scipy are the optional ``eval`` extra: they are imported inside the
functions that need them, and a missing one raises :class:`MissingDependencyError`.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np

from .errors import MissingDependencyError

DEFAULT_BINS = 10_000
# The MVTec AD PRO: area under the per-region-overlap curve up to this false-positive rate.
PRO_FPR_LIMIT = 0.3
# 8-connectivity, as in the MVTec AD evaluation code.
REGION_STRUCTURE = np.ones((3, 3), dtype=int)

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_pro")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS
# How tables title each metric.
COLUMN_TITLES = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_pro": "PRO",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError saying how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0].replace("sklearn", "scikit-learn")
        raise MissingDependencyError(
            f"evaluation needs {package}, which is not installed: pip install 'winclip[eval]'"
        ) from err


# ----- image level (exact) ------------------------------------------------------------


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any()) and not bool(labels.all())


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds (exact, scikit-learn's precision-recall curve)."""
    metrics = require("sklearn.metrics")
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Exact image AUROC, AP and F1-max; NaN for all three unless both classes are present."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError("labels and scores must have the same length")
    if not _both_classes(labels):
        return dict.fromkeys(IMAGE_KEYS, math.nan)
    metrics = require("sklearn.metrics")
    return {
        "image_auroc": float(metrics.roc_auc_score(labels, scores)),
        "image_ap": float(metrics.average_precision_score(labels, scores)),
        "image_f1max": f1_max(labels, scores),
    }


# ----- pixel level (streamed histograms) ----------------------------------------------


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid rule (numpy's name for it changed between 1.x and 2.x)."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x ascending) from x[0] to x_max, interpolated."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max and inside.sum() < len(x):
        # Close the area at x_max by linear interpolation to the next point, as MVTec AD does.
        nxt = int(np.argmax(~inside))
        y_end = np.interp(x_max, [x[nxt - 1], x[nxt]], [y[nxt - 1], y[nxt]])
        xs, ys = np.append(xs, x_max), np.append(ys, y_end)
    return _trapezoid(xs, ys)


class PixelMetrics:
    """Streaming pixel AUROC, AP, F1-max and PRO over many (H, W) maps and binary masks.

    Every pixel score in [0, 1] is counted in one of ``bins`` equal bins (scores outside
    [0, 1] are clipped into the end bins), separately for anomalous (mask) and normal
    pixels; PRO adds, per anomalous pixel, the weight 1/|its region| (regions: 8-connected
    components of each mask, scipy.ndimage.label), so the mean per-region overlap at a
    threshold is a cumulative sum of that histogram divided by the number of regions.

    How exact: the thresholds are the bin edges t_b = b / bins (a pixel is predicted
    anomalous when its bin index is >= b). At each edge the counts are exact, so every
    point of the binned ROC, precision-recall, F1 and PRO curves lies exactly on the true
    curve; the binned metrics are the exact metrics of the scores rounded down to a
    multiple of 1/bins. Only the points *inside* a bin are missed:

    - AUROC: |binned - exact| <= 1/2 * sum_b (P_b / P) * (N_b / N), where P_b, N_b are the
      anomalous / normal pixels in bin b (the triangle a bin's ROC step can hide). For
      scores with densities bounded by d, this is <= d / (2 * bins): 5e-5 * d at 10k bins.
    - F1-max: binned <= exact (edges are real thresholds), and the gap is at most the gap
      of the best in-bin bound, again O(1 / bins) for continuous scores.
    - AP: each bin's precision is taken at its lower edge; the error is at most
      sum_b (P_b / P) * (range of precision inside bin b).
    - PRO: the MVTec AD definition evaluated on the threshold grid b / bins; by the same
      triangle argument, |binned - exact| <= sum_b dFPR_b * dPRO_b / (2 * 0.3) over the
      bins below FPR 0.3 (the bin cut at 0.3 counted in full).

    :meth:`error_bounds` computes all four bounds from the counts. With the default 10k
    bins and scores spread over [0, 1], every difference from the exact value is below
    1e-3, usually about 1e-5 (tests check this against scikit-learn and a slow PRO on
    random data). Scores crowded into a few bins (a tiny range) make the bounds larger.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 2:
            raise ValueError("PixelMetrics needs at least 2 bins")
        self.bins = int(bins)
        self.positive = np.zeros(self.bins, dtype=np.int64)
        self.negative = np.zeros(self.bins, dtype=np.int64)
        self.region_weight = np.zeros(self.bins, dtype=np.float64)
        self.regions = 0

    def _bin_index(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError("pixel scores must be finite")
        return np.clip((scores * self.bins).astype(np.int64), 0, self.bins - 1)

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Add a batch: ``maps`` (B, H, W) or (H, W) scores, ``masks`` of the same shape."""
        maps = np.asarray(maps)
        masks = np.asarray(masks).astype(bool)
        if maps.shape != masks.shape:
            raise ValueError(f"map shape {maps.shape} differs from mask shape {masks.shape}")
        if maps.ndim == 2:
            maps, masks = maps[None], masks[None]
        index = self._bin_index(maps)
        self.positive += np.bincount(index[masks], minlength=self.bins)
        self.negative += np.bincount(index[~masks], minlength=self.bins)
        ndimage = require("scipy.ndimage")
        for one_index, one_mask in zip(index, masks, strict=True):
            self._add_regions(ndimage, one_index, one_mask)

    def _add_regions(self, ndimage: ModuleType, index: np.ndarray, mask: np.ndarray) -> None:
        """Weight each anomalous pixel by 1/|its connected region| (one image)."""
        if not mask.any():
            return
        labels, count = ndimage.label(mask, structure=REGION_STRUCTURE)
        sizes = np.bincount(labels.ravel())
        inside = labels > 0
        weights = 1.0 / sizes[labels[inside]]
        self.region_weight += np.bincount(index[inside], weights=weights, minlength=self.bins)
        self.regions += int(count)

    # Cumulative counts with the threshold running from above the top bin down to bin 0.
    def _curves(self) -> tuple[np.ndarray, np.ndarray]:
        tp = np.concatenate([[0], np.cumsum(self.positive[::-1])])
        fp = np.concatenate([[0], np.cumsum(self.negative[::-1])])
        return tp.astype(np.float64), fp.astype(np.float64)

    @property
    def defined(self) -> bool:
        """True when both anomalous and normal pixels were seen."""
        return bool(self.positive.sum() > 0 and self.negative.sum() > 0)

    def auroc(self) -> float:
        """Area under the ROC curve through the bin edges (ties inside a bin count half)."""
        if not self.defined:
            return math.nan
        tp, fp = self._curves()
        return _trapezoid(fp / fp[-1], tp / tp[-1])

    def ap(self) -> float:
        """Average precision, sum of recall steps times precision (scikit-learn's form)."""
        if not self.defined:
            return math.nan
        tp, fp = self._curves()
        recall_step = np.diff(tp) / tp[-1]
        predicted = tp[1:] + fp[1:]
        precision = np.divide(tp[1:], predicted, out=np.zeros_like(predicted), where=predicted > 0)
        return float(np.sum(recall_step * precision))

    def f1max(self) -> float:
        """Best F1 over the bin-edge thresholds."""
        if not self.defined:
            return math.nan
        tp, fp = self._curves()
        return float(np.max(2 * tp / (tp + fp + tp[-1])))

    def _pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, mean per-region overlap) at the bin edges, threshold descending."""
        _, fp = self._curves()
        overlap = np.concatenate([[0.0], np.cumsum(self.region_weight[::-1])]) / self.regions
        return fp / fp[-1], overlap

    def pro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        """Area under the per-region-overlap curve for FPR in [0, fpr_limit], divided by it."""
        if self.regions == 0 or self.negative.sum() == 0:
            return math.nan
        fpr, overlap = self._pro_curve()
        return _area_up_to(fpr, overlap, fpr_limit) / fpr_limit

    def results(self) -> dict[str, float]:
        """pixel_auroc, pixel_ap, pixel_f1max and pixel_pro (NaN where undefined)."""
        return {
            "pixel_auroc": self.auroc(),
            "pixel_ap": self.ap(),
            "pixel_f1max": self.f1max(),
            "pixel_pro": self.pro(),
        }

    def error_bounds(self) -> dict[str, float]:
        """Upper bounds on |binned - exact| of each pixel metric, from the counts."""
        if not self.defined:
            return dict.fromkeys(PIXEL_KEYS, math.nan)
        tp, fp = self._curves()
        pos, neg = tp[-1], fp[-1]
        in_pos, in_neg = np.diff(tp), np.diff(fp)  # counts per bin, top bin first
        auroc = 0.5 * float(np.sum(in_pos * in_neg) / (pos * neg))
        # Inside a bin, TP ranges over [tp_hi, tp_lo] and FP over [fp_hi, fp_lo].
        tp_hi, fp_hi, tp_lo, fp_lo = tp[:-1], fp[:-1], tp[1:], fp[1:]
        p_max = np.divide(tp_lo, tp_lo + fp_hi, out=np.ones_like(tp_lo), where=tp_lo + fp_hi > 0)
        p_min = np.divide(tp_hi, tp_hi + fp_lo, out=np.zeros_like(tp_hi), where=tp_hi + fp_lo > 0)
        ap = float(np.sum(in_pos / pos * (p_max - p_min)))
        f1_in_bin = 2 * tp_lo / (tp_hi + fp_hi + pos)
        f1 = max(0.0, float(np.max(f1_in_bin)) - self.f1max())
        return {
            "pixel_auroc": auroc,
            "pixel_ap": ap,
            "pixel_f1max": f1,
            "pixel_pro": self._pro_bound(),
        }

    def _pro_bound(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        if self.regions == 0:
            return math.nan
        fpr, overlap = self._pro_curve()
        steps = np.diff(fpr) * np.diff(overlap)
        inside = fpr[1:] <= fpr_limit
        # The segment cut at the limit may hide its whole rectangle, not just half of it.
        crossing = (fpr[:-1] < fpr_limit) & ~inside
        return float(np.sum(steps[inside]) / 2 + np.sum(steps[crossing])) / fpr_limit
