"""The verdict for a row, in one place: a decision rule turns a score into a label.

A run has at most one rule (``--threshold``, or ``--calibration`` with a false-alarm
rate); rows, the summary, the exit code
and --resume's consistency check all ask it, and nothing else compares scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .conformal import Calibration, is_anomalous, p_value
from .rows import SCORE_DECIMALS

if TYPE_CHECKING:
    import numpy as np

ANOMALOUS, NORMAL = "anomalous", "normal"
# An image decided anomalous whose map has no pixel above the pixel threshold: the
# defect is in the whole picture (a wrong part, a colour cast), not at one place.
WHOLE_IMAGE = "anomalous as a whole, no localized region"


def is_whole_image(label: str, anomalous_pixels: int | str | None) -> bool:
    """Whether a row (label, anomalous_pixels as written or read back) is a whole-image
    anomaly: decided anomalous, and not one pixel above the pixel threshold."""
    return label == ANOMALOUS and str(anomalous_pixels) == "0"


@dataclass(frozen=True)
class ThresholdRule:
    """``anomalous`` at or above a manual threshold, compared as printed (6 decimals), so
    that filtering the output by ``score >= T`` agrees with the label and the exit code."""

    threshold: float

    def label(self, score: float | None) -> str:
        """``anomalous`` / ``normal``; empty for a row without a score."""
        if score is None:
            return ""
        return ANOMALOUS if round(score, SCORE_DECIMALS) >= self.threshold else NORMAL

    def describe(self) -> str:
        return f"at or above {self.threshold:g}"

    def p_value(self, score: float | None) -> float | None:
        """A manual threshold gives no p-value."""
        return None

    @property
    def pixel_threshold(self) -> float | None:
        """A manual threshold draws no region."""
        return None


@dataclass(frozen=True)
class CalibratedRule:
    """``anomalous`` iff ``p(s) <= alpha`` (WINCLIP.md "Calibrated decisions"), with s the
    score as printed (6 decimals): a reviewer recomputes every p_value and label from the
    rows and the calibration file's scores. Equivalently ``round(s, 6) > c_(k)``."""

    scores: np.ndarray = field(repr=False)  # the n calibration scores, full precision
    alpha: float
    threshold: float  # c_(k), shown to the user
    pixel_threshold: float | None = None  # m_(k) when the calibration has map maxima

    @classmethod
    def from_calibration(cls, cal: Calibration, alpha: float) -> CalibratedRule:
        """The rule of a calibration at rate alpha; CalibrationError when n is too small."""
        pixel = None if cal.map_maxima is None else cal.pixel_threshold(alpha)
        return cls(cal.scores, alpha, cal.threshold(alpha), pixel)

    def p_value(self, score: float | None) -> float | None:
        """p of the printed score; None for a row without a score."""
        return None if score is None else p_value(round(score, SCORE_DECIMALS), self.scores)

    def label(self, score: float | None) -> str:
        """``anomalous`` / ``normal``; empty for a row without a score."""
        p = self.p_value(score)
        if p is None:
            return ""
        return ANOMALOUS if is_anomalous(p, self.alpha) else NORMAL

    def describe(self) -> str:
        return f"anomalous at false-alarm rate {self.alpha:g} (score above {self.threshold:.6f})"


DecisionRule = ThresholdRule | CalibratedRule


def label_of(rule: DecisionRule | None, score: float | None) -> str:
    """The row's label under ``rule``; empty without a rule."""
    return "" if rule is None else rule.label(score)
