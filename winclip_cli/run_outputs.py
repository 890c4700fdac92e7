"""What a run writes and how, decided once from its options: the Outputs (rows, images,
report) and what the report's header says was run. The pipeline reads these through
the Plan, never the options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .decision import CalibratedRule, DecisionRule, ThresholdRule
from .options import LOCAL_DIR, RunOptions
from .outputs import OverlayStyle

if TYPE_CHECKING:
    from .conformal import Calibration


@dataclass(frozen=True)
class Outputs:
    """What a run writes and how: the rows (format, file or stdout), the images (folder,
    overlay style, maps, masks) and the report; decided once, read by RowSink."""

    fmt: str  # a key of rows.FORMATS
    header: bool  # a header line (CSV/TSV; --no-header for a stream to concatenate)
    to_stdout: bool
    where: str  # where the rows go, for messages: "stdout" or the -o file
    resume_hint: str  # how to continue the run, for messages ('' for stdout)
    appending: bool  # --resume: rows are added to the file's (unless it is rewritten)
    maps: bool  # overlays (segment, fewshot)
    out_dir: Path
    style: OverlayStyle
    save_maps: bool
    save_masks: bool
    report: Path | None


def outputs_of(opts: RunOptions) -> Outputs:
    """The outputs of a run's options."""
    return Outputs(
        fmt=opts.fmt,
        header=opts.header,
        to_stdout=opts.to_stdout,
        where="stdout" if opts.to_stdout else str(opts.output),
        resume_hint=opts.resume_hint,
        appending=opts.resume,
        maps=opts.maps,
        out_dir=opts.out_dir,
        style=OverlayStyle(opts.overlay_format, opts.overlay_max_side, opts.map_dtype),
        save_maps=opts.save_maps,
        save_masks=opts.save_masks,
        report=opts.report,
    )


def run_header(
    opts: RunOptions, rule: DecisionRule | None, cal: Calibration | None
) -> dict[str, str]:
    """What the report's header says was run."""
    m = opts.model
    weights = str(m.pretrained)
    if m.weights is not None:
        weights = str(m.weights)
    elif m.model.startswith(LOCAL_DIR):
        weights = "from the model folder"
    info = {
        "command": opts.command,
        "model": m.model,
        "weights": weights,
        "class": opts.class_name,
        "mode": "few-shot (WinCLIP+)" if opts.ref is not None else "zero-shot (WinCLIP)",
        "inputs": ", ".join(str(p) for p in opts.inputs),
    }
    if opts.ref is not None:
        info["references"] = f"{opts.ref} (K = {opts.k or 'from the bank or 4'})"
    if isinstance(rule, ThresholdRule):
        info["threshold"] = f"{rule.threshold:g}"
    elif isinstance(rule, CalibratedRule) and cal is not None:
        info["calibration"] = f"{opts.calibration} (n = {cal.n})"
        info["false-alarm rate"] = f"{rule.alpha:g}: anomalous above {rule.threshold:.6f}"
    return info
