"""`winclip review apply` and `winclip review stats`: options -> one call -> exit code.

The logic is review_apply.py's and review_stats.py's; this module reads the files the
commands name (verdicts, rows and their manifests, the calibration), has the model
loaded for apply (review_model.py), and says what happened on stderr (Reporter).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..checks import cached_weights
from ..conformal import Calibration, load_calibration
from ..errors import ExitCode, UsageError
from ..manifest import digest_of, read_manifest
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_FALSE_ALARM_RATE, ModelOptions, default_workers
from ..progress import Reporter
from ..provenance import model_from_record
from ..review_apply import INTO, ApplyRequest, apply_verdicts
from ..review_stats import review_stats, stats_table
from ..verdicts import read_verdicts
from .report import read_rows
from .review_model import CalibrationScorer, calibration_scorer

STATS_FORMATS = ("text", "json")
RATE_SETTING = "--false-alarm-rate"  # how a run manifest records the rate
CALIBRATION_SETTING = "--calibration"


@dataclass
class ReviewApplyOptions:
    """One `winclip review apply`."""

    verdicts: list[Path]
    calibration: Path
    output: Path
    into: str = "bank"
    root: Path | None = None
    false_alarm_rate: float | None = None  # --into calibration: the runs' rate
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    given: frozenset[str] = frozenset()  # options the user typed (CLI parameter names)


@dataclass
class ReviewStatsOptions:
    """One `winclip review stats`."""

    verdicts: list[Path]
    rows: list[Path] = field(default_factory=list)
    calibration: Path | None = None
    false_alarm_rate: float | None = None  # None: the rate the runs' manifests record
    fmt: str = "text"
    fail_on_drift: bool = False


def _model_of(cal: Calibration, opts: ReviewApplyOptions) -> ModelOptions:
    """The model the calibration was made with, unless the user chose one: its recorded
    model and weights file (provenance, never a download), else its model's name."""
    if cal.model_record is not None:
        what = f"--calibration {opts.calibration}"
        return model_from_record(opts.model, opts.given, cal.model_record, what, cached_weights)
    recorded = cal.settings.get("model")
    if "model" in opts.given or not isinstance(recorded, str):
        return opts.model
    pretrained = opts.model.pretrained if recorded == opts.model.model else None
    if "pretrained" in opts.given or "weights" in opts.given:
        pretrained = opts.model.pretrained
    return dataclasses.replace(opts.model, model=recorded, pretrained=pretrained)


def run_review_apply(opts: ReviewApplyOptions, reporter: Reporter) -> ExitCode:
    """Teach the false alarms back into a new calibration file (review_apply)."""
    if opts.into not in INTO:
        raise UsageError(f"--into {opts.into!r}: use {' or '.join(INTO)}")
    if opts.root is not None and not opts.root.is_dir():
        raise UsageError(f"--root {opts.root}: no such folder")
    if opts.false_alarm_rate is not None and opts.into != "calibration":
        raise UsageError("--false-alarm-rate applies to --into calibration only")
    rate = DEFAULT_FALSE_ALARM_RATE if opts.false_alarm_rate is None else opts.false_alarm_rate
    request = ApplyRequest(
        list(opts.verdicts), opts.calibration, opts.output, opts.into, opts.root, rate
    )
    workers = default_workers() if opts.workers is None else opts.workers

    def scoring(cal: Calibration) -> CalibrationScorer:
        model = _model_of(cal, opts)
        return calibration_scorer(model, opts.calibration, reporter, opts.batch_size, workers)(cal)

    result = apply_verdicts(request, scoring, reporter.info)
    how = "reference bank" if opts.into == "bank" else "calibration set"
    line = f"{len(result.added)} false alarm(s) added to the {how}; {opts.output} written"
    if result.thresholds is not None:
        old, new = result.thresholds
        line += f"; threshold at rate {rate:g}: {old:.6f} -> {new:.6f}"
    reporter.info(line)
    if opts.into == "bank" and result.calibration.lineage[-1].get("mode_change"):
        reporter.info("the calibration was zero-shot: its runs are WinCLIP+ (few-shot) now")
    return ExitCode.OK


def _manifest_rate(
    rows: list[Path], cal: Calibration | None, given: float | None
) -> tuple[float | None, list[str]]:
    """The rate given, else the one the runs' manifests record (all must agree); and
    notes on rows made with another calibration than ``cal``."""
    rates: set[float] = set()
    notes: list[str] = []
    digest = None if cal is None else digest_of([cal.scores.tolist(), cal.settings])
    for path in rows:
        manifest = read_manifest(path)
        if manifest is None:
            continue
        rate = manifest.settings.get(RATE_SETTING)
        if isinstance(rate, (int, float)):
            rates.add(float(rate))
        recorded = manifest.settings.get(CALIBRATION_SETTING)
        if digest is not None and recorded is not None and recorded != digest:
            notes.append(f"{path} was made with another calibration than this one")
    if given is not None:
        return given, notes
    if len(rates) > 1:
        shown = ", ".join(f"{r:g}" for r in sorted(rates))
        raise UsageError(
            f"the rows were made at different false-alarm rates ({shown}): "
            "give --false-alarm-rate, or the rows of one rate"
        )
    return (rates.pop() if rates else None), notes


def _is_rows_file(path: Path) -> bool:
    """A rows file (CSV with path but no verdict column, or JSON lines), by its first line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().lstrip("\ufeff").strip()
    except OSError:
        return False
    if first.startswith("{"):
        return True
    columns = [c.strip() for c in first.split(",")]
    return "path" in columns and "verdict" not in columns


def split_files(verdicts: list[Path], rows: list[Path]) -> tuple[list[Path], list[Path]]:
    """`--rows rows-*.csv` in a shell puts every file but the first among the arguments:
    with --rows given, arguments that are rows files (by their columns) join the rows."""
    if not rows:
        return verdicts, rows
    moved = [p for p in verdicts if _is_rows_file(p)]
    return [p for p in verdicts if p not in moved], [*rows, *moved]


def run_review_stats(
    opts: ReviewStatsOptions, reporter: Reporter, out: TextIO | None = None
) -> ExitCode:
    """Print the review's figures (review_stats) to ``out`` (stdout); exit 1 with
    --fail-on-drift when the promised false-alarm rate is broken at the 5% level."""
    if opts.fmt not in STATS_FORMATS:
        raise UsageError(f"--format {opts.fmt!r}: use {' or '.join(STATS_FORMATS)}")
    out = sys.stdout if out is None else out
    verdict_files, rows_files = split_files(list(opts.verdicts), list(opts.rows))
    opts = dataclasses.replace(opts, verdicts=verdict_files, rows=rows_files)
    verdicts = read_verdicts(opts.verdicts)
    cal = None if opts.calibration is None else load_calibration(opts.calibration)
    rows: list[dict[str, str]] | None = None
    alpha: float | None = None
    notes: list[str] = []
    if opts.rows:
        missing = [str(p) for p in opts.rows if not p.is_file()]
        if missing:
            raise UsageError(f"rows file(s) not found: {', '.join(missing)}")
        rows, notes = read_rows(opts.rows)
        alpha, more = _manifest_rate(opts.rows, cal, opts.false_alarm_rate)
        notes += more
        if alpha is None:
            alpha = DEFAULT_FALSE_ALARM_RATE
            notes.append(f"no run manifest names the rate: the default {alpha:g} is assumed")
    elif opts.fail_on_drift:
        raise UsageError("--fail-on-drift needs --rows (the runs' rows files)")
    scores = None if cal is None else [float(s) for s in cal.scores]
    stats = review_stats(verdicts, rows, alpha, scores)
    stats.notes += notes
    if opts.fmt == "json":
        out.write(json.dumps(stats.to_json(), indent=1) + "\n")
    else:
        out.write(stats_table(stats))
    broken = stats.drift is not None and stats.drift.broken
    return ExitCode.ANOMALY if opts.fail_on_drift and broken else ExitCode.OK
