"""`winclip calibrate`: score known-good images exactly like the runs that will use the
calibration (the same Plan, model, engine and loop), then write the calibration file.

The formulas and the file are conformal.py's; what a calibration records is
settings.py's.
"""

from __future__ import annotations

import dataclasses
from contextlib import closing

import numpy as np

from ..conformal import Calibration, save_calibration, supported_rates
from ..engines.registry import build_engine
from ..errors import ExitCode, UsageError
from ..model import WinClip
from ..options import CalibrateOptions
from ..pipeline import load_scorer, scored
from ..planning import plan_calibration
from ..progress import Reporter
from ..provenance import record_of
from ..settings import fingerprint


def run_calibrate(
    opts: CalibrateOptions, reporter: Reporter, model: WinClip | None = None
) -> ExitCode:
    """Score known-good images under a run's settings and write the calibration file.

    ``model``: an already loaded WinClip (benchmarks, long-lived callers)."""
    p, left_out = plan_calibration(opts)
    for message in left_out:
        reporter.info(f"left out {message}")
    scores: list[float] = []
    maxima: list[float] = []
    names: list[str] = []
    with p:  # the engine's session
        # A pool member would match itself: refused per image (by its pixels), besides the
        # files planning left out (by their bytes).
        scorer = dataclasses.replace(load_scorer(p, reporter, model), refuse_pool_members=True)
        engine = build_engine(p.engine, scorer, reporter.warn)
        with closing(scored(p.todo, engine, reporter, "calibrating")) as pairs:
            for image, result in pairs:
                if result.error is not None or result.score is None or result.map_max is None:
                    reporter.warn(f"{image.display} skipped: {result.error}")
                    continue
                scores.append(result.score)
                maxima.append(result.map_max)
                names.append(image.display)
    if not scores:
        raise UsageError("none of the known-good images could be read: nothing to calibrate")
    settings = fingerprint(scorer.model, opts.class_name, scorer.bank, p.grid, scorer.pool)
    backbone = scorer.model.backbone
    record = record_of(backbone.model_name, backbone.pretrained, backbone.checkpoint)
    cal = Calibration(
        settings, np.asarray(scores), np.asarray(maxima), scorer.bank, names, model_record=record
    )
    save_calibration(cal, opts.output)
    reporter.info(f"calibration written to {opts.output}; {supported_rates(cal.n)}")
    return ExitCode.OK
