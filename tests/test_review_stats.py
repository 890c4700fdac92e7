"""`review stats` figures: the Wilson interval and the one-sided binomial p-value against
slow, obvious versions (and scipy), then the counts and the drift test of WINCLIP.md
("Review verdicts taught back") on made-up verdicts and rows."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from winclip_cli.review_stats import (
    alarm_stats,
    binomial_upper_tail,
    review_stats,
    stats_table,
    wilson_interval,
)
from winclip_cli.verdicts import Verdict, VerdictFile, combine_verdicts

Z95 = 1.959963984540054


# ----------------------------------------------------------------------- slow references


def slow_wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval as its definition: every rate p the score test does not reject,
    |k - n p| <= z sqrt(n p (1 - p)); its ends found by bisection."""

    def accepted(p: float) -> bool:
        return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))

    def edge(inside: float, outside: float) -> float:
        for _ in range(200):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if accepted(middle) else (inside, middle)
        return (inside + outside) / 2

    centre = (k + z * z / 2) / (n + z * z)  # always accepted
    low = 0.0 if accepted(1e-300) else edge(centre, 0.0)
    high = 1.0 if accepted(1 - 1e-16) else edge(centre, 1.0)
    return low, high


def slow_upper_tail(k: int, n: int, p: Fraction) -> Fraction:
    """P(X >= k), X ~ Bin(n, p), as an exact sum of every term."""
    return sum(
        (Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)),
        Fraction(0),
    )


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (7, 12), (1, 500), (250, 500)]
)
def test_wilson_matches_its_definition_and_scipy(k, n):
    low, high = wilson_interval(k, n)
    slow_low, slow_high = slow_wilson(k, n)
    assert low == pytest.approx(slow_low, abs=1e-9) and high == pytest.approx(slow_high, abs=1e-9)
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    assert low <= k / n <= high


def test_wilson_of_nothing_is_none_and_bad_counts_are_refused():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 5, "1/2"), (1, 1, "1/100"), (3, 10, "1/10"), (2, 40, "1/100"), (7, 40, "1/100"),
     (1, 60, "1/5"), (12, 60, "1/5"), (25, 60, "1/5"), (60, 60, "1/5"), (5, 7, "9/10")],
)  # fmt: skip
def test_binomial_upper_tail_matches_the_exact_sum(k, n, p):
    rate = Fraction(p)
    exact = slow_upper_tail(k, n, rate)
    assert binomial_upper_tail(k, n, float(rate)) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize(
    ("k", "n", "p"), [(12, 1000, 0.01), (3, 1000, 0.01), (40, 2000, 0.01), (600, 100_000, 0.005)]
)
def test_binomial_upper_tail_matches_scipy_on_large_counts(k, n, p):
    assert binomial_upper_tail(k, n, p) == pytest.approx(
        scipy_stats.binom.sf(k - 1, n, p), rel=1e-7
    )


def test_binomial_edges():
    assert binomial_upper_tail(0, 0, 0.01) == 1.0
    assert binomial_upper_tail(3, 2, 0.5) == 0.0
    with pytest.raises(ValueError):
        binomial_upper_tail(1, 10, 0.0)


# ----------------------------------------------------------------------- the figures


def verdict_set(*entries: tuple[str, str, str]):
    verdicts = [Verdict(path=p, verdict=v, label=label) for p, v, label in entries]
    return combine_verdicts([VerdictFile(Path("v.csv"), "h", verdicts)])


def test_alarm_precision_counts_only_alarms():
    verdicts = verdict_set(
        ("a.png", "defect", "anomalous"),
        ("b.png", "defect", "anomalous"),
        ("c.png", "false_alarm", "anomalous"),
        ("d.png", "defect", "normal"),  # a miss, not an alarm
    )
    stats = alarm_stats(verdicts)
    assert (stats.reviewed, stats.defects, stats.false_alarms) == (4, 3, 1)
    assert (stats.alarms.count, stats.alarms.total) == (2, 3)
    assert stats.alarms.interval == wilson_interval(2, 3)
    assert stats.missed_defects == 1


def rows_of(flagged: int, normal: int, prefix: str = "img") -> list[dict[str, str]]:
    rows = []
    for i in range(flagged + normal):
        label = "anomalous" if i < flagged else "normal"
        rows.append({"path": f"{prefix}/{i:04d}.png", "score": "0.5", "label": label,
                     "status": "ok", "error": ""})  # fmt: skip
    return rows


def test_drift_follows_winclip_md_definitions():
    """N = 1000 images, 40 flagged: 10 confirmed defects, 22 false alarms, 8 unreviewed.
    G = 1000 - 10 = 990, F = 22; an error row and a verdict for an unknown image are
    left out."""
    rows = rows_of(40, 960)
    rows.append({"path": "img/broken.png", "score": "", "label": "", "status": "error"})
    entries = [(f"img/{i:04d}.png", "defect", "anomalous") for i in range(10)]
    entries += [(f"./img/{i:04d}.png", "false_alarm", "anomalous") for i in range(10, 32)]
    entries += [("elsewhere.png", "false_alarm", "anomalous")]
    stats = review_stats(verdict_set(*entries), rows, alpha=0.01)
    d = stats.drift
    assert d is not None
    assert (d.images, d.flagged, d.flagged_unreviewed) == (1000, 40, 8)
    assert (d.observed.count, d.observed.total) == (22, 990)
    assert d.p_value == pytest.approx(scipy_stats.binom.sf(21, 990, 0.01), rel=1e-9)
    assert d.drifted and d.broken and d.p_value < 0.05  # 2.2% against 1%
    assert any("not in the rows" in n for n in stats.notes)
    text = stats_table(stats)
    assert "drifted" in text and "recalibrate" in text and "camera, light, material" in text


def test_a_held_promise_says_so_and_exits_clean():
    rows = rows_of(12, 988)
    entries = [(f"img/{i:04d}.png", "false_alarm", "anomalous") for i in range(8)]
    stats = review_stats(verdict_set(*entries), rows, alpha=0.01)
    assert stats.drift is not None and not stats.drift.drifted and not stats.drift.broken
    assert "promise held" in stats_table(stats)


def test_above_the_promise_but_not_significant_still_says_recalibrate():
    rows = rows_of(3, 197)
    entries = [(f"img/{i:04d}.png", "false_alarm", "anomalous") for i in range(3)]
    d = review_stats(verdict_set(*entries), rows, alpha=0.01).drift
    assert d is not None and d.drifted and not d.broken  # 1.5% of 200, p = 0.32: chance?
    assert d.p_value == pytest.approx(scipy_stats.binom.sf(2, 200, 0.01), rel=1e-9)


def test_rows_without_labels_are_decided_by_the_calibration():
    calibration = [i / 100 for i in range(99)]  # alpha = 0.05: anomalous iff s > 0.94
    rows = [{"path": f"{i}.png", "score": f"{s:.6f}", "status": "ok"}
            for i, s in enumerate([0.2, 0.95, 0.97, 0.5])]  # fmt: skip
    entries = [("1.png", "false_alarm", ""), ("3.png", "false_alarm", "")]
    d = review_stats(verdict_set(*entries), rows, alpha=0.05, calibration=calibration).drift
    assert d is not None and d.flagged == 2 and d.observed.count == 1  # 3.png was not flagged
    assert d.calibration_n == 99


def test_json_carries_the_same_figures():
    rows = rows_of(5, 95)
    entries = [
        ("img/0000.png", "defect", "anomalous"),
        ("img/0001.png", "false_alarm", "anomalous"),
    ]
    stats = review_stats(verdict_set(*entries), rows, alpha=0.01)
    data = json.loads(json.dumps(stats.to_json()))
    assert data["reviewed"] == 2 and data["alarms"]["count"] == 1
    assert data["drift"]["observed"]["count"] == 1 and data["drift"]["observed"]["total"] == 99
    assert data["drift"]["promised"] == 0.01 and data["drift"]["p_value"] == stats.drift.p_value
