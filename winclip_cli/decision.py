"""The verdict for a row, in one place: a decision rule turns a score into a label.

A run has at most one rule (``--threshold`` today); rows, the summary, the exit code
and --resume's consistency check all ask it, and nothing else compares scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rows import SCORE_DECIMALS

ANOMALOUS, NORMAL = "anomalous", "normal"


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


DecisionRule = ThresholdRule  # the calibrated rule joins here


def label_of(rule: DecisionRule | None, score: float | None) -> str:
    """The row's label under ``rule``; empty without a rule."""
    return "" if rule is None else rule.label(score)
