"""What `review apply` asks of the model: encode an image into bank entries, and score
images (image score and map maximum) exactly as the calibration's runs do.

``CalibrationScorer`` loads the calibration's model with its recorded prompts and
temperature, refuses one whose settings differ (another model, other weights), and
scores through the engine registry and the pipeline's one loop, tiled by the
calibration's grid. review_apply.py only sees its small ``Scoring`` protocol, so its
logic is tested without a model where it can be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from ..bank import ReferenceBank
from ..conformal import Calibration
from ..data import InputImage
from ..engines import EngineSpec
from ..engines.registry import build_engine, engine_session
from ..engines.scorer import Scorer
from ..errors import BankMismatchError, CalibrationError, ImageReadError, UsageError
from ..hardware import AUTO
from ..model import WinClip
from ..options import DEFAULT_BATCH_SIZE, ModelOptions
from ..pipeline import reference_pixels, scored
from ..progress import Reporter
from ..prompts import PromptSet
from ..settings import check_loaded, fingerprint
from ..tiling import TileGrid, TileGridError, grid_meta

__all__ = ["CalibrationScorer", "calibration_scorer", "grid_of_settings", "model_options_for"]


def grid_of_settings(settings: dict[str, Any]) -> TileGrid:
    """The tile grid a calibration's settings record: ``"1x1"`` or ``"RxC overlap F"``."""
    text = str(settings.get("tiles", "1x1"))
    grid_text, _, overlap = text.partition(" overlap ")
    try:
        return TileGrid.parse(grid_text.strip(), float(overlap) if overlap else 0.25)
    except ValueError as exc:
        raise CalibrationError(f"damaged tile grid record {text!r}: {exc}") from exc


def model_options_for(cal: Calibration, given: ModelOptions) -> tuple[ModelOptions, PromptSet]:
    """``given`` (model, weights, device, precision) with the calibration's temperature,
    and the calibration's prompt set: the scores are then the runs' scores. Precision
    `auto` becomes the calibration's own (a typed other one is refused by check_loaded)."""
    s = cal.settings
    precision = cal.precision if given.precision == AUTO else given.precision
    try:
        prompts = PromptSet(**{k: tuple(v) for k, v in s["prompts"].items()})
        temperature = float(s["temperature"])
        return dataclasses.replace(given, temperature=temperature, precision=precision), prompts
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CalibrationError("damaged calibration file (settings)") from exc


class CalibrationScorer:
    """A loaded model that scores exactly as the runs of ``cal`` do (see module doc)."""

    def __init__(
        self, wc: WinClip, cal: Calibration, source: Path, spec: EngineSpec, reporter: Reporter
    ) -> None:
        self.wc, self.spec, self.reporter = wc, spec, reporter
        self.class_name = str(cal.settings.get("class", ""))
        self.grid = spec.grid
        check_loaded(cal, source, self.settings(cal.bank))
        self.text = wc.text_embeddings(self.class_name)

    def settings(self, bank: ReferenceBank | None) -> dict[str, Any]:
        return fingerprint(self.wc, self.class_name, bank, self.grid)

    def bank_part(self, path: Path) -> ReferenceBank:
        try:
            pixels = reference_pixels(self.wc, [path], self.grid)
        except (ImageReadError, TileGridError) as exc:
            raise UsageError(f"{path}: {exc}") from exc
        bank = self.wc.reference_bank(pixels, batch_size=self.spec.batch_size)
        if not self.grid.is_single:
            bank.meta.update(grid_meta(self.grid), references=1)
        return bank

    def score(
        self, images: Sequence[InputImage], bank: ReferenceBank | None
    ) -> list[tuple[float, float]]:
        if bank is not None:
            try:
                bank = self.wc.check_bank(bank)
            except BankMismatchError as exc:
                raise UsageError(f"the reference bank does not fit the model: {exc}") from exc
        scorer = Scorer(self.wc, self.text, bank, maps=True)
        out: list[tuple[float, float]] = []
        with engine_session(self.spec):
            engine = build_engine(self.spec, scorer, self.reporter.warn)
            with closing(scored(images, engine, self.reporter, "scoring")) as pairs:
                for image, result in pairs:
                    if result.error is not None or result.score is None or result.map_max is None:
                        raise UsageError(f"{image.display} cannot be scored: {result.error}")
                    out.append((result.score, result.map_max))
        return out


def calibration_scorer(
    given: ModelOptions,
    source: Path,
    reporter: Reporter,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
) -> Callable[[Calibration], CalibrationScorer]:
    """A factory for review_apply: loads the model of ``given`` (model, weights, device,
    precision) with the calibration's prompts and temperature, once it is needed, and
    scores on the local engine tiled by the calibration's grid."""

    def make(cal: Calibration) -> CalibrationScorer:
        options, prompts = model_options_for(cal, given)
        grid = grid_of_settings(cal.settings)
        spec = EngineSpec("local", batch_size, workers, grid, options, prompts)
        reporter.stage("loading the calibration's model")
        wc = WinClip.from_options(options, prompts)
        return CalibrationScorer(wc, cal, source, spec, reporter)

    return make
