"""`winclip review stats`: what a week of reviews says about the alarms and the promise.

From the verdicts alone: images reviewed, defects confirmed, false alarms, and the share
of alarms that were real defects with a 95% Wilson interval. With the runs' rows (every
image, reviewed or not) and the promised false-alarm rate alpha, the drift test of
WINCLIP.md ("Review verdicts taught back"): F = images flagged and confirmed
``false_alarm``, G = images not confirmed as defects; the observed rate F/|G| with its
Wilson interval, and the one-sided binomial p-value P(X >= F) for X ~ Bin(|G|, alpha).

Pure code (the standard library); the command reads the files and prints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from .errors import UsageError
from .verdicts import DEFECT, FALSE_ALARM, VerdictSet

CONFIDENCE = 0.95
DRIFT_LEVEL = 0.05  # the promise counts as broken when the p-value is below this
_Z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2)  # 1.959964...


# ---------------------------------------------------------------------------- formulas


def wilson_interval(successes: int, trials: int, z: float = _Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion successes/trials (None for 0 trials):
    ``(k + z^2/2) / (n + z^2) -/+ z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes in {trials} trials")
    k, n, z2 = successes, trials, z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    # At k = 0 (k = n) the end is exactly 0 (1); rounding would leave a hair above (below).
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _log_pmf(k: int, n: int, p: float) -> float:
    log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return log_choose + k * math.log(p) + (n - k) * math.log1p(-p)


def _tail_sum(start: int, stop: int, step: int, n: int, p: float) -> float:
    """Sum of Bin(n, p) probabilities from ``start`` towards ``stop`` (inclusive), walking
    away from the mode, so each term is smaller than the last: the walk stops once the
    terms no longer change the sum."""
    term = math.exp(_log_pmf(start, n, p))
    total, i = 0.0, start
    odds = p / (1 - p)
    while True:
        total += term
        if i == stop or term <= total * 1e-17:
            return total
        term *= (n - i) / (i + 1) * odds if step > 0 else i / (n - i + 1) / odds
        i += step


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Bin(n, p): the one-sided p-value of seeing k or more events in n
    trials at rate p. Exact up to float rounding; O(sqrt(n)) terms in practice."""
    if not 0 < p < 1:
        raise ValueError(f"rate must be between 0 and 1, got {p}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    mode = math.floor((n + 1) * p)
    if k > mode:  # the upper tail itself, terms falling from k up
        return min(1.0, _tail_sum(k, n, +1, n, p))
    # 1 - P(X <= k - 1); that lower tail's terms fall from k - 1 down
    return max(0.0, 1.0 - _tail_sum(k - 1, 0, -1, n, p))


# ---------------------------------------------------------------------------- the figures


@dataclass
class Proportion:
    """``count`` of ``total`` with its 95% Wilson interval (None when total is 0)."""

    count: int
    total: int
    rate: float | None = None
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.rate = self.count / self.total if self.total else None
        self.interval = wilson_interval(self.count, self.total)


@dataclass
class Drift:
    """The observed false-alarm rate against the promise (WINCLIP.md's drift test)."""

    images: int  # distinct scored images in the rows
    flagged: int  # of them, decided anomalous
    flagged_unreviewed: int  # flagged with no verdict: not counted as false alarms
    observed: Proportion  # F of |G|
    promised: float  # alpha
    p_value: float  # P(X >= F), X ~ Bin(|G|, alpha)
    calibration_n: int | None = None
    drifted: bool = False  # observed above the promise
    broken: bool = False  # ... and significantly (p_value < DRIFT_LEVEL)


@dataclass
class ReviewStats:
    """Everything `review stats` prints (and gives as JSON)."""

    reviewed: int
    defects: int
    false_alarms: int
    alarms: Proportion  # alarms reviewed that were real defects
    alarms_from_labels: bool  # False: no verdict carried a label, all counted as alarms
    missed_defects: int  # defect verdicts on images the rule called normal
    drift: Drift | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, for a dashboard."""
        return asdict(self)


def _is_alarm(label: str) -> bool:
    return label.strip().lower() == "anomalous"


def alarm_stats(verdicts: VerdictSet) -> ReviewStats:
    """Counts and the alarms' precision from the verdicts alone."""
    every = list(verdicts.by_path.values())
    defects = sum(v.verdict == DEFECT for v in every)
    labelled = any(v.label.strip() for v in every)
    alarms = [v for v in every if _is_alarm(v.label)] if labelled else every
    real = sum(v.verdict == DEFECT for v in alarms)
    missed = sum(v.verdict == DEFECT and v.label.strip().lower() == "normal" for v in every)
    stats = ReviewStats(
        reviewed=len(every),
        defects=defects,
        false_alarms=len(every) - defects,
        alarms=Proportion(real, len(alarms)),
        alarms_from_labels=labelled,
        missed_defects=missed,
        notes=list(verdicts.notes),
    )
    if not labelled and every:
        stats.notes.append("no verdict has a label: every reviewed image counted as an alarm")
    return stats


def _flagged(row: Mapping[str, str], alpha: float, calibration: Sequence[float] | None) -> bool:
    """The row's own label when it has one; else its score against the calibration."""
    label = row.get("label", "").strip()
    if label:
        return _is_alarm(label)
    if calibration is None:
        raise UsageError("rows without a label need --calibration to decide them")
    try:
        score = float(row.get("score", ""))
    except ValueError:
        return False
    at_least = sum(1 for c in calibration if c >= score)
    return (1 + at_least) / (len(calibration) + 1) <= alpha


def drift_stats(
    verdicts: VerdictSet,
    rows: Sequence[Mapping[str, str]],
    alpha: float,
    calibration: Sequence[float] | None = None,
) -> tuple[Drift, list[str]]:
    """The drift test over the rows' distinct scored images, and notes on what was left
    out. ``calibration``: its scores, to decide rows without a label, and its n."""
    images: dict[str, bool] = {}  # by path: flagged
    for row in rows:
        if row.get("status", "ok") != "ok" or not row.get("score", "").strip():
            continue
        images[os.path.normpath(row.get("path", ""))] = _flagged(row, alpha, calibration)
    verdict_of = {key: v.verdict for key, v in verdicts.by_path.items()}
    notes = []
    unknown = [key for key in verdict_of if key not in images]
    if unknown:
        notes.append(f"{len(unknown)} verdict(s) name images not in the rows, not counted")
    good = [key for key in images if verdict_of.get(key) != DEFECT]
    false_alarms = sum(images[key] and verdict_of.get(key) == FALSE_ALARM for key in good)
    unreviewed = sum(flag and key not in verdict_of for key, flag in images.items())
    observed = Proportion(false_alarms, len(good))
    p_value = binomial_upper_tail(false_alarms, len(good), alpha)
    drifted = observed.rate is not None and observed.rate > alpha
    drift = Drift(
        images=len(images),
        flagged=sum(images.values()),
        flagged_unreviewed=unreviewed,
        observed=observed,
        promised=alpha,
        p_value=p_value,
        calibration_n=None if calibration is None else len(calibration),
        drifted=drifted,
        broken=drifted and p_value < DRIFT_LEVEL,
    )
    return drift, notes


def review_stats(
    verdicts: VerdictSet,
    rows: Sequence[Mapping[str, str]] | None = None,
    alpha: float | None = None,
    calibration: Sequence[float] | None = None,
) -> ReviewStats:
    """The figures of `review stats`: the alarms' precision, and with rows and a rate
    the drift test."""
    stats = alarm_stats(verdicts)
    if rows is not None and alpha is not None:
        stats.drift, notes = drift_stats(verdicts, rows, alpha, calibration)
        stats.notes.extend(notes)
    return stats


# ---------------------------------------------------------------------------- the table


def _percent(value: float) -> str:
    return f"{value:.2%}" if value < 0.1 else f"{value:.1%}"


def _rate(alpha: float) -> str:
    """A promised rate as the runs' option wrote it, and in percent: '0.01 (1%)'."""
    return f"{alpha:g} ({alpha * 100:.4g}%)"


def _share(p: Proportion) -> str:
    if p.rate is None or p.interval is None:
        return f"{p.count} of {p.total}"
    low, high = p.interval
    return (
        f"{p.count} of {p.total} = {_percent(p.rate)} "
        f"(95% interval {_percent(low)} to {_percent(high)})"
    )


def _drift_lines(d: Drift) -> list[tuple[str, str]]:
    promise = _rate(d.promised)
    if d.calibration_n is not None:
        promise += f", from a calibration of n = {d.calibration_n} known-good images"
    lines = [
        ("images in the runs", f"{d.images} ({d.flagged} flagged)"),
        ("flagged, not reviewed", f"{d.flagged_unreviewed} (not counted as false alarms)"),
        ("false-alarm rate observed", _share(d.observed)),
        ("false-alarm rate promised", promise),
        ("one-sided binomial p-value", f"{d.p_value:.3g} (P of at least this many at the promise)"),
    ]
    return lines


def verdict_of_drift(d: Drift) -> str:
    """The plain sentence on the promise."""
    if not d.drifted:
        return f"The promise held: the observed false-alarm rate is not above {_rate(d.promised)}."
    strength = (
        f"the promise is broken at the 5% level (p = {d.p_value:.3g})"
        if d.broken
        else f"not yet significant at the 5% level (p = {d.p_value:.3g})"
    )
    return (
        f"The observed false-alarm rate is above the promised {_rate(d.promised)}: {strength}. "
        "The line has drifted from its calibration images (camera, light, material): "
        "recalibrate on recent known-good images."
    )


def stats_table(stats: ReviewStats) -> str:
    """The text `review stats` prints: one figure a line, then the plain sentence."""
    lines = [
        ("images reviewed", str(stats.reviewed)),
        ("defects confirmed", str(stats.defects)),
        ("false alarms", str(stats.false_alarms)),
        ("alarms that were defects", _share(stats.alarms)),
    ]
    if stats.missed_defects:
        lines.append(("defects the rule called normal", str(stats.missed_defects)))
    if stats.drift is not None:
        lines.extend(_drift_lines(stats.drift))
    width = max(len(name) for name, _ in lines)
    text = [f"{name:<{width}}  {value}" for name, value in lines]
    if stats.drift is not None:
        text += ["", verdict_of_drift(stats.drift)]
    text += [f"note: {n}" for n in stats.notes]
    return "\n".join(text) + "\n"
