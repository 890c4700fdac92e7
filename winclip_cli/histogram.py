"""The report's score histogram: an inline SVG of the run's scores, the calibration's
beside them, and the threshold."""

from __future__ import annotations

import math

import numpy as np


def _short(number: float) -> str:
    return f"{number:.4g}"


def histogram(scores: list[float], calibration: list[float] | None, threshold: float | None) -> str:
    """Inline SVG: the run's score distribution, the calibration's beside it, the cut."""
    calibration = [c for c in (calibration or []) if math.isfinite(c)]
    if not scores and not calibration:
        return '<p class="empty">No scores to plot.</p>'
    every = scores + calibration + ([threshold] if threshold is not None else [])
    low, high = min(every), max(every)
    if high - low < 1e-6:
        low, high = low - 0.005, high + 0.005
    pad = (high - low) * 0.02
    low, high = low - pad, high + pad
    bins = int(min(40, max(10, math.sqrt(max(len(scores), len(calibration))) * 2)))
    edges = np.linspace(low, high, bins + 1)
    width, height, left, bottom, top, right = 640, 250, 48, 36, 24, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    series = [("run", scores, "bar-run")]
    if calibration:
        series.append(("calibration", calibration, "bar-cal"))
    shares = []
    for _name, values, _cls in series:
        counts = np.histogram(values, bins=edges)[0] if values else np.zeros(bins)
        total = max(len(values), 1)
        shares.append(counts / total if calibration else counts.astype(float))
    peak = max(float(s.max()) for s in shares) or 1.0
    slot = plot_w / bins
    parts = [
        f'<svg class="hist" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="hist-title">',
        '<title id="hist-title">Histogram of image scores'
        + (", with the calibration scores" if calibration else "")
        + (f", threshold {threshold:.6f}" if threshold is not None else "")
        + "</title>",
    ]
    for index, ((name, _values, cls), share) in enumerate(zip(series, shares, strict=True)):
        bar_w = slot / len(series)
        for b in range(bins):
            if share[b] <= 0:
                continue
            h = share[b] / peak * plot_h
            x = left + b * slot + index * bar_w
            value = f"{share[b]:.1%}" if calibration else f"{int(share[b])}"
            parts.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}">'
                f"<title>{name}: {value} in {edges[b]:.4f}..{edges[b + 1]:.4f}</title></rect>"
            )
    axis_y = top + plot_h
    parts.append(
        f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>'
    )
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        x = left + fraction * plot_w
        tick = low + fraction * (high - low)
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}"/>'
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{_short(tick)}</text>'
        )
    peak_text = f"{peak:.0%}" if calibration else f"{int(peak)}"
    parts.append(
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak_text}</text>'
        f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">score'
        + (" (bars: share of each set)" if calibration else " (bars: images)")
        + "</text>"
    )
    if threshold is not None:
        x = left + (threshold - low) / (high - low) * plot_w
        parts.append(_cut(threshold, x, x < left + plot_w * 0.7, top, axis_y))
    parts.append("</svg>")
    return "".join(parts) + _legend(len(scores), len(calibration), threshold)


def _cut(threshold: float, x: float, right_side: bool, top: int, axis_y: int) -> str:
    """The threshold's line, its label beside it (inside the plot: ``right_side``)."""
    return (
        f'<line class="cut" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}"/>'
        f'<text class="cut-label" x="{x + (3 if right_side else -3):.1f}" y="{top - 10}" '
        f'text-anchor="{"start" if right_side else "end"}">'
        f"threshold {threshold:.6f}</text>"
    )


def _legend(scores: int, calibration: int, threshold: float | None) -> str:
    legend = ['<ul class="legend">', f'<li><span class="key bar-run"></span>run ({scores})']
    if calibration:
        legend.append(f'<li><span class="key bar-cal"></span>calibration ({calibration})')
    if threshold is not None:
        legend.append('<li><span class="key cut"></span>threshold')
    legend.append("</ul>")
    return "".join(legend)
