"""Metrics: exact image metrics, histogram pixel metrics and PRO against slow references."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn import metrics as skm

from winclip_cli.metrics import (
    MissingDependencyError,
    PixelMetrics,
    f1_max,
    image_metrics,
    require,
)

# Documented bound for the default 10k bins on smooth score distributions (see PixelMetrics).
BINNED_TOLERANCE = 1e-3


def sklearn_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(2 * precision * recall / (precision + recall)))


def brute_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over every threshold 'score >= t', t in the scores."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        best = max(best, 2 * tp / (pred.sum() + labels.sum()))
    return float(best)


# ----- image level ------------------------------------------------------------------


def test_image_metrics_perfect_separation():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert image_metrics(labels, scores) == {
        "image_auroc": 1.0,
        "image_ap": 1.0,
        "image_f1max": 1.0,
    }


def test_image_metrics_hand_computed():
    # Descending: 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0).
    # AUROC: 3 of 4 (positive, negative) pairs ordered right. AP: 0.5 * 1 + 0.5 * 2/3.
    # F1: at 0.8 -> 2/3, at 0.35 -> P 2/3, R 1 -> 0.8.
    got = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert got["image_auroc"] == pytest.approx(0.75)
    assert got["image_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert got["image_f1max"] == pytest.approx(0.8)


def test_image_metrics_single_class_is_nan():
    got = image_metrics(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9]))
    assert all(np.isnan(v) for v in got.values())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=40).filter(
        lambda rows: len({r[0] for r in rows}) == 2
    )
)
def test_image_metrics_match_sklearn(rows):
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] / 20 for r in rows])  # coarse values: many ties
    got = image_metrics(labels, scores)
    assert got["image_auroc"] == skm.roc_auc_score(labels, scores)
    assert got["image_ap"] == skm.average_precision_score(labels, scores)
    assert got["image_f1max"] == pytest.approx(brute_f1max(labels, scores), abs=1e-12)
    assert f1_max(labels, scores) == pytest.approx(sklearn_f1max(labels, scores), abs=1e-12)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'winclip\[eval\]'"):
        require("sklearn.metrics")
    with pytest.raises(ImportError, match="scikit-learn"):
        image_metrics(np.array([0, 1]), np.array([0.2, 0.7]))


# ----- pixel level: histograms ------------------------------------------------------


def random_pixels(rng: np.random.Generator, shape: tuple[int, ...], kind: str):
    labels = rng.random(shape) < 0.15
    if kind == "normal":
        scores = np.clip(rng.normal(0.45 + 0.15 * labels, 0.12), 0, 1)
    elif kind == "beta":
        scores = np.where(labels, rng.beta(3, 2, shape), rng.beta(2, 3, shape))
    else:  # squashed into a narrow range: many pixels per bin
        scores = 0.5 + 0.01 * rng.random(shape) + 0.002 * labels
    return scores, labels


@pytest.mark.parametrize("kind", ["normal", "beta", "narrow"])
def test_binned_pixel_metrics_match_sklearn(kind):
    rng = np.random.default_rng(1)
    scores, labels = random_pixels(rng, (6, 64, 64), kind)
    pm = PixelMetrics()
    for batch in range(0, 6, 4):  # batches must not matter
        pm.update(scores[batch : batch + 4], labels[batch : batch + 4])
    flat_l, flat_s = labels.ravel(), scores.ravel()
    exact = {
        "pixel_auroc": skm.roc_auc_score(flat_l, flat_s),
        "pixel_ap": skm.average_precision_score(flat_l, flat_s),
        "pixel_f1max": sklearn_f1max(flat_l, flat_s),
    }
    got, bounds = pm.results(), pm.error_bounds()
    for key, value in exact.items():
        error = abs(got[key] - value)
        assert error <= bounds[key] + 1e-12, key
        if kind != "narrow":  # the documented tolerance is for scores spread over [0, 1]
            assert error <= BINNED_TOLERANCE, key
    assert got["pixel_f1max"] <= exact["pixel_f1max"] + 1e-12  # edges are real thresholds


def test_binned_pixel_metrics_are_exact_on_bin_aligned_scores():
    rng = np.random.default_rng(2)
    bins = 100
    labels = rng.random((3, 20, 20)) < 0.3
    scores = (rng.integers(0, bins, labels.shape) + 0.5) / bins
    pm = PixelMetrics(bins)
    pm.update(scores, labels)
    assert pm.auroc() == pytest.approx(skm.roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-12)
    assert pm.ap() == pytest.approx(
        skm.average_precision_score(labels.ravel(), scores.ravel()), abs=1e-12
    )
    assert pm.f1max() == pytest.approx(sklearn_f1max(labels.ravel(), scores.ravel()), abs=1e-12)


def test_pixel_metrics_perfect_and_undefined():
    mask = np.zeros((2, 16, 16), dtype=bool)
    mask[0, 2:6, 3:9] = True
    mask[1, 10:12, 10:15] = True
    pm = PixelMetrics()
    pm.update(np.where(mask, 0.9, 0.1), mask)
    assert pm.results() == pytest.approx(
        {"pixel_auroc": 1.0, "pixel_ap": 1.0, "pixel_f1max": 1.0, "pixel_pro": 1.0}, abs=1e-12
    )
    empty = PixelMetrics()
    empty.update(np.full((4, 4), 0.3), np.zeros((4, 4), dtype=bool))
    assert all(np.isnan(v) for v in empty.results().values())


def test_pixel_metrics_reject_bad_input():
    pm = PixelMetrics()
    with pytest.raises(ValueError, match="shape"):
        pm.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        pm.update(np.full((4, 4), np.nan), np.zeros((4, 4), dtype=bool))


# ----- PRO ----------------------------------------------------------------------------


def random_masks(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Masks with several separate rectangles (some images without any)."""
    masks = np.zeros((count, size, size), dtype=bool)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 5)):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 8, 2)
            mask[y : y + h, x : x + w] = True
    return masks


def reference_pro(maps, masks, thresholds, fpr_limit=0.3):
    """The MVTec AD definition, slowly: binarise at each threshold, average the overlap
    of every connected region, pair it with the FPR, integrate to fpr_limit."""
    region_image = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        region_image += [(i, labelled == r) for r in range(1, n + 1)]
    negatives = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(thresholds, reverse=True):
        pred = maps >= t
        overlaps = [np.sum(pred[i] & region) / np.sum(region) for i, region in region_image]
        fpr = np.sum(pred & negatives) / np.sum(negatives)
        points.append((fpr, float(np.mean(overlaps))))
    points.sort()
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the last segment at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    bins = 64
    masks = random_masks(rng, 5, 24)
    assert sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks) >= 3
    maps = np.clip(0.35 * masks + rng.normal(0.4, 0.2, masks.shape), 0, 1)
    # Bin-aligned scores, so that 'map >= b / bins' and the bin index agree exactly.
    maps = (np.floor(maps * bins).clip(0, bins - 1) + 0.5) / bins
    pm = PixelMetrics(bins)
    pm.update(maps[:2], masks[:2])
    pm.update(maps[2:], masks[2:])
    expected = reference_pro(maps, masks, [b / bins for b in range(bins)])
    assert pm.pro() == pytest.approx(expected, abs=1e-9)


def test_pro_default_bins_close_to_all_thresholds():
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 4, 32)
    maps = np.clip(0.3 * masks + rng.normal(0.4, 0.2, masks.shape), 0, 1)
    pm = PixelMetrics()
    pm.update(maps, masks)
    expected = reference_pro(maps, masks, np.unique(maps))
    error = abs(pm.pro() - expected)
    assert error <= BINNED_TOLERANCE
    assert error <= pm.error_bounds()["pixel_pro"] + 1e-12


def test_pro_counts_regions_not_pixels():
    # A big region fully found and a small one missed: the overlap is 1/2 whatever the sizes.
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:10, 0:10] = True
    mask[15:17, 15:17] = True
    score = np.zeros((20, 20))
    score[0:10, 0:10] = 1.0
    pm = PixelMetrics(10)
    pm.update(score, mask)
    # Curve: (0, 0) -> (0, 1/2) at any threshold above 0 -> (1, 1) at 0, which is 0.65
    # at FPR 0.3; area (0.5 + 0.65) / 2 * 0.3, normalised by 0.3.
    assert pm.pro() == pytest.approx(0.575)
