"""Split-conformal calibration: a false-alarm rate from known-good images.

The formulas are fixed in WINCLIP.md, "Calibrated decisions". From n known-good scores
``c_1..c_n``: the p-value of a new score s is ``(1 + #{i : c_i >= s}) / (n + 1)``; at
false-alarm rate alpha an image is anomalous iff ``p(s) <= alpha``, equivalently
``s > c_(k)`` with ``k = ceil((n + 1) * (1 - alpha))``. When ``k > n`` no threshold has
the guarantee, and the rate is refused (never clipped).

Pure library code (numpy and torch); the CLI wires it in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bank import ReferenceBank, bank_from_payload, bank_payload
from .errors import BankFileError, CalibrationError
from .hardware import RESOLVED, UNRECORDED
from .payloads import (
    BANK_FORMAT,
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    CalibrationFile,
    CalibrationSettings,
    read_torch_file,
    write_torch_file,
)
from .schemas import check

# Rates are read as the fraction with a denominator up to this that rounds to the given
# float, when there is one (see _exact_rate).
_MAX_DENOMINATOR = 10**6


# ---------------------------------------------------------------------------- the rule


def _exact_rate(alpha: float | Fraction) -> Fraction:
    """``alpha`` as an exact fraction, checked to lie strictly between 0 and 1.

    Float arithmetic would get the rank wrong on exact cases (``100 * (1 - 0.41)`` is
    59.00000000000001, so ceil gives 60, not 59). The float is read as the simplest
    fraction that rounds to it: a short decimal such as 0.01 is exactly 1/100, and
    ``1 / (n + 1)`` computed in floats is exactly 1/(n+1) (its shortest decimal,
    '0.3333333333333333' for n = 2, is below 1/3 and would refuse the rate).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, Fraction, np.floating)):
        raise CalibrationError(f"false-alarm rate must be a number, got {alpha!r}")
    if isinstance(alpha, Fraction):
        rate = alpha
    else:
        value = float(alpha)
        if not math.isfinite(value):
            raise CalibrationError(f"false-alarm rate must be between 0 and 1, got {value}")
        rate = Fraction(value).limit_denominator(_MAX_DENOMINATOR)
        if float(rate) != value:  # no simple fraction: take its shortest decimal
            rate = Fraction(repr(value))
    if not 0 < rate < 1:
        raise CalibrationError(f"false-alarm rate must be between 0 and 1, got {float(rate)}")
    return rate


def _rate_text(rate: Fraction) -> str:
    """A rate for people: 3 significant digits, rounded UP, so the printed value works."""
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 3, ROUND_CEILING
        value = Decimal(rate.numerator) / Decimal(rate.denominator)
    return format(value.normalize(), "f")


def images_needed(alpha: float | Fraction) -> int:
    """The fewest known-good images that support rate ``alpha``: n >= 1/alpha - 1."""
    rate = _exact_rate(alpha)
    return max(1, math.ceil(1 / rate - 1))


def conformal_rank(n: int, alpha: float | Fraction) -> int:
    """k = ceil((n + 1) * (1 - alpha)), exactly; refuses when k > n (too few images)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CalibrationError(f"calibration needs at least 1 image, got {n!r}")
    n = int(n)
    rate = _exact_rate(alpha)
    k = math.ceil((n + 1) * (1 - rate))
    if k > n:
        raise CalibrationError(
            f"a false-alarm rate of {_rate_text(rate)} needs at least {images_needed(rate)} "
            f"known-good images, these are {n}; the smallest rate {n} images allow is "
            f"{_rate_text(Fraction(1, n + 1))} (1/{n + 1})"
        )
    return k


def _as_scores(scores: Any, what: str) -> np.ndarray:
    """A non-empty 1-D float64 array of finite values, or CalibrationError."""
    try:
        array = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} are not numbers") from exc
    if array.ndim != 1 or array.size == 0:
        raise CalibrationError(f"{what} must be a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise CalibrationError(f"{what} contain NaN or infinite values")
    return array


def threshold(scores: Any, alpha: float | Fraction) -> float:
    """The threshold c_(k) (k-th smallest calibration score); s > c_(k) is anomalous."""
    array = _as_scores(scores, "calibration scores")
    k = conformal_rank(array.size, alpha)
    return float(np.partition(array, k - 1)[k - 1])


def p_values(scores: Any, calibration_scores: Any) -> np.ndarray:
    """p(s) = (1 + #{i : c_i >= s}) / (n + 1) for each s, as float64, same shape as ``scores``.

    Sorting once and binary search: O((m + n) log n). A NaN score gets a NaN p-value,
    which no rate calls anomalous.
    """
    cal = np.sort(_as_scores(calibration_scores, "calibration scores"))
    s = np.asarray(scores, dtype=np.float64)
    n = cal.size
    # c_i >= s for every i at or after the first index where s fits on the left.
    at_least = n - np.searchsorted(cal, s, side="left")
    p = (1.0 + at_least) / (n + 1.0)
    return np.where(np.isnan(s), np.nan, p)


def p_value(score: float, calibration_scores: Any) -> float:
    """p(s) for one score; see p_values."""
    return float(p_values(np.float64(score), calibration_scores))


def is_anomalous(p: float, alpha: float | Fraction) -> bool:
    """The decision at false-alarm rate alpha: p <= alpha."""
    _exact_rate(alpha)  # the same checks as the threshold's
    return bool(p <= float(alpha))


def supported_rates(n: int) -> str:
    """One line for the calibrate summary: which false-alarm rates n images support."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CalibrationError(f"calibration needs at least 1 image, got {n!r}")
    lowest = _rate_text(Fraction(1, n + 1))
    needs = ", ".join(f"{a} needs {images_needed(Fraction(a))}" for a in ("0.01", "0.001"))
    return f"n={n} known-good images support false-alarm rates from {lowest} (1/(n+1)); {needs}"


# ---------------------------------------------------------------------- the record


def _plain_json(settings: Any, what: str = "settings") -> dict[str, Any]:
    """``settings`` after a JSON round trip (tuples become lists), so saved == in memory."""
    try:
        value = json.loads(json.dumps(settings, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} are not plain JSON values ({exc})") from exc
    if not isinstance(value, dict):
        raise CalibrationError(f"{what} must be a mapping of names to values")
    return value


@dataclass
class Calibration:
    """n known-good images scored under one run's settings (see save_calibration).

    ``settings``: the run settings' fingerprint (plain JSON values); ``scores``: the n
    image scores; ``map_maxima``: the n grid-map maxima when the run made maps;
    ``bank``: the few-shot reference bank; ``images``: the calibration images' paths;
    ``lineage``: how the file came to be, oldest first (each `review apply`: the old
    file's fingerprint, the verdict files' hashes, the images added and how).
    ``settings["precision"]``: what the scores were computed in (fp32, bf16, fp16, int8).
    ``model_record``: the model it was made with (provenance.ModelRecord as JSON), so a
    run that names no model uses that one.
    """

    settings: dict[str, Any]
    scores: np.ndarray
    map_maxima: np.ndarray | None
    bank: ReferenceBank | None
    images: list[str]
    lineage: list[dict[str, Any]] = field(default_factory=list)
    model_record: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.settings = _plain_json(self.settings)
        self.lineage = _plain_json({"lineage": self.lineage}, "lineage")["lineage"]
        if not isinstance(self.lineage, list) or not all(isinstance(e, dict) for e in self.lineage):
            raise CalibrationError("the lineage must be a list of records")
        if self.precision not in RESOLVED:  # "auto" too: a file records what was used
            raise CalibrationError(
                f"calibration precision must be one of {', '.join(RESOLVED)}, "
                f"got {self.precision!r}"
            )
        self.scores = _as_scores(self.scores, "calibration scores")
        if self.map_maxima is not None:
            self.map_maxima = _as_scores(self.map_maxima, "calibration map maxima")
            if self.map_maxima.size != self.scores.size:
                raise CalibrationError(
                    f"{self.map_maxima.size} map maxima for {self.scores.size} scores"
                )
        if not all(isinstance(p, str) for p in self.images):
            raise CalibrationError("calibration image names must be strings")
        self.images = list(self.images)
        if len(self.images) != self.scores.size:
            raise CalibrationError(
                f"{len(self.images)} calibration image names for {self.scores.size} scores"
            )

    @property
    def precision(self) -> str:
        """What the scores were computed in."""
        return str(self.settings.get("precision", UNRECORDED))

    @property
    def n(self) -> int:
        """The number of calibration images."""
        return int(self.scores.size)

    def threshold(self, alpha: float | Fraction) -> float:
        """The image-score threshold c_(k) at rate alpha."""
        return threshold(self.scores, alpha)

    def pixel_threshold(self, alpha: float | Fraction) -> float:
        """The pixel threshold m_(k) at rate alpha (same k, on the map maxima)."""
        if self.map_maxima is None:
            raise CalibrationError("this calibration has no map maxima (it was made without maps)")
        return threshold(self.map_maxima, alpha)

    def p_values(self, scores: Any) -> np.ndarray:
        """p-values of new image scores against this calibration."""
        return p_values(scores, self.scores)


def _bank_from_payload(payload: Any, where: str) -> ReferenceBank:
    try:
        return bank_from_payload(payload, f"{where}: its bank")
    except BankFileError as exc:
        raise CalibrationError(f"damaged reference bank in the calibration file: {exc}") from exc


def save_calibration(cal: Calibration, path: str | os.PathLike[str]) -> None:
    """Write a calibration file (plain tensors and strings, safe to load), atomically."""
    payload = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        # A JSON string: any JSON value survives, and weights_only loading accepts it.
        "settings": json.dumps(cal.settings, allow_nan=False),
        "scores": torch.from_numpy(np.array(cal.scores, dtype=np.float64)),
        "map_maxima": (
            None
            if cal.map_maxima is None
            else torch.from_numpy(np.array(cal.map_maxima, dtype=np.float64))
        ),
        "bank": None if cal.bank is None else bank_payload(cal.bank),
        "images": list(cal.images),
    }
    if cal.lineage:  # files without one stay byte-identical to those made before
        payload["lineage"] = json.dumps(cal.lineage, allow_nan=False)
    if cal.model_record is not None:  # the model it was made with (provenance)
        payload["model"] = json.dumps(cal.model_record)
    write_torch_file(path, payload)


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a file written by save_calibration; CalibrationError when it is not a good one."""
    path = Path(path)
    where = str(path)
    payload = read_torch_file(path, "calibration file", CalibrationError)
    if isinstance(payload, dict) and payload.get("format") == BANK_FORMAT:
        raise CalibrationError(f"{where} is a reference bank, not a calibration file")
    if not isinstance(payload, dict) or payload.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{where} is not a winclip calibration file")
    if payload.get("version") != CALIBRATION_VERSION:
        raise CalibrationError(
            f"{where}: calibration format version {payload.get('version')!r} unsupported "
            f"(this winclip reads version {CALIBRATION_VERSION})"
        )
    damaged = f"{where}: damaged calibration file"
    checked = check(CalibrationFile, payload, damaged, CalibrationError)
    try:
        settings = json.loads(checked.settings)
        lineage = json.loads(checked.lineage)
        record = None if checked.model is None else json.loads(checked.model)
    except ValueError as exc:
        raise CalibrationError(f"{damaged}: field settings or lineage: not JSON ({exc})") from None
    check(CalibrationSettings, settings, f"{damaged}: settings", CalibrationError)
    # Files from before the precision was recorded were made at the CLI's fp32 default.
    settings.setdefault("precision", UNRECORDED)
    scores = checked.scores.to(torch.float64).numpy()
    maxima = None if checked.map_maxima is None else checked.map_maxima.to(torch.float64).numpy()
    bank = None if checked.bank is None else _bank_from_payload(checked.bank, where)
    try:
        return Calibration(settings, scores, maxima, bank, checked.images, lineage, record)
    except CalibrationError as exc:
        raise CalibrationError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------- the settings


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_difference(recorded: Any, current: Any, name: str) -> tuple[str, Any, Any] | None:
    """The first place where two JSON values differ, descending into dicts and lists."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for key in [*recorded, *(k for k in current if k not in recorded)]:
            sub = f"{name}.{key}" if name else str(key)
            if key not in recorded or key not in current:
                return sub, recorded.get(key, _MISSING), current.get(key, _MISSING)
            found = _first_difference(recorded[key], current[key], sub)
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for i, (a, b) in enumerate(zip(recorded, current, strict=True)):
            found = _first_difference(a, b, f"{name}[{i}]")
            if found:
                return found
        return None
    if recorded == current and isinstance(recorded, bool) == isinstance(current, bool):
        return None
    return name, recorded, current


_MISSING = object()


def check_settings(recorded: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Refuse a calibration whose settings differ from this run's, naming the first one.

    E.g. "screw.cal was made with class 'screw', this run has 'nut'". A setting present
    in only one of them counts as different.
    """
    found = _first_difference(
        _plain_json(recorded, f"{source}: settings"),
        _plain_json(current, "this run's settings"),
        "",
    )
    if found is None:
        return
    name, was, now = found
    if was is _MISSING:
        raise CalibrationError(f"{source} was made without {name}, this run has {_show(now)}")
    if now is _MISSING:
        raise CalibrationError(f"{source} was made with {name} {_show(was)}, this run has none")
    raise CalibrationError(f"{source} was made with {name} {_show(was)}, this run has {_show(now)}")
