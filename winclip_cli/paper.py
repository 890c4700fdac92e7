"""The published WinCLIP figures (WINCLIP.md) and the comparison with measured ones."""

from __future__ import annotations

from typing import Any

from .metrics import COLUMN_TITLES

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


# MuSc (Li et al., ICLR 2024) on WinCLIP's ViT-B-16-plus-240 at 240 px, set mode with
# each category's test set one set: the reference code's README ("Results of different
# backbones", xrli-U/MuSc). Its VisA image scores used RsCIN with k = 1, 8, 9, where
# WINCLIP.md fixes 1, 2, 3.
MUSC_RESULTS: dict[str, dict[int, dict[str, float]]] = {
    "mvtec": {
        0: dict(image_auroc=0.9477, image_ap=0.9760, image_f1max=0.9543, pixel_auroc=0.9626,
                pixel_ap=0.5027, pixel_pro=0.8770, pixel_f1max=0.5223),
    },
    "visa": {
        0: dict(image_auroc=0.8262, image_ap=0.8505, image_f1max=0.8161, pixel_auroc=0.9611,
                pixel_ap=0.3343, pixel_pro=0.7237, pixel_f1max=0.3784),
    },
}  # fmt: skip


def compare_with_paper(results: dict[str, Any]) -> dict[str, Any]:
    """Paper means beside the measured means and their difference, per k: WinCLIP's
    (WINCLIP.md), or MuSc's for mutual scoring."""
    layout = results["dataset"]["layout"]
    mutual = results.get("mode", "winclip") != "winclip"
    table = MUSC_RESULTS if mutual else PAPER_RESULTS
    out: dict[str, Any] = {
        "method": "MuSc" if mutual else "WinCLIP",
        "dataset": DATASET_NAMES[layout],
        "categories_measured": len(results["categories"]),
        "categories_in_paper": DATASET_CATEGORIES[layout],
        "shots": {},
    }
    for k in results["shots"]:
        paper = table[layout].get(k)
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
        f"Compared with {comparison.get('method', 'WinCLIP')}'s published figures "
        f"({comparison['dataset']}; measured over "
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
