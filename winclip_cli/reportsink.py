"""`--report FILE` on a run: collects the rows as the pipeline writes them and renders
the HTML report when the run ends (also when it is interrupted, then marked incomplete)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .decision import CalibratedRule, ThresholdRule
from .htmlreport import render_report
from .options import LOCAL_DIR, RunOptions
from .planning import Plan
from .progress import Reporter
from .resume import resume_key


def run_info(p: Plan) -> dict[str, str]:
    """What the report's header says was run."""
    opts = p.opts
    info = {
        "command": opts.command,
        "model": opts.model.model,
        "weights": _weights(opts),
        "class": opts.class_name,
        "mode": "few-shot (WinCLIP+)" if opts.ref is not None else "zero-shot (WinCLIP)",
        "inputs": ", ".join(str(p) for p in opts.inputs),
    }
    if opts.ref is not None:
        info["references"] = f"{opts.ref} (K = {opts.k or 'from the bank or 4'})"
    if isinstance(p.rule, ThresholdRule):
        info["threshold"] = f"{p.rule.threshold:g}"
    elif isinstance(p.rule, CalibratedRule) and p.calibration is not None:
        info["calibration"] = f"{opts.calibration} (n = {p.calibration.n})"
        info["false-alarm rate"] = f"{p.rule.alpha:g}: anomalous above {p.rule.threshold:.6f}"
    return info


def _weights(opts: RunOptions) -> str:
    m = opts.model
    if m.weights is not None:
        return str(m.weights)
    return "from the model folder" if m.model.startswith(LOCAL_DIR) else str(m.pretrained)


class ReportSink:
    """Collects a run's rows (the kept ones of a resumed file first) and writes the report
    at the end: exactly the rows of the rows file."""

    def __init__(self, p: Plan, path: Path) -> None:
        self.plan, self.path = p, path
        self.rows: list[dict[str, Any]] = list(p.kept.values())
        self.written: set[str] = set()  # this run's rows, by resume_key
        self.started = time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        self.rows.append(record)
        self.written.add(resume_key(str(record["path"])))

    def write(self, reporter: Reporter, incomplete: bool) -> None:
        """Render and write the report; thumbnails show a progress bar on a terminal."""
        elapsed = time.perf_counter() - self.started
        cal = self.plan.calibration
        calibration_scores = None if cal is None else [float(s) for s in cal.scores]
        try:
            left = self.plan.resume.not_yet_redone(self.plan.done, self.written)
            text = render_report(
                self.rows + left,
                output=self.path,
                run_info=run_info(self.plan),
                threshold=None if self.plan.rule is None else self.plan.rule.threshold,
                calibration_scores=calibration_scores,
                incomplete=incomplete,
                elapsed=elapsed,
                progress=reporter.counter("thumbnails"),
            )
        finally:
            reporter.stop()
        data = text.encode("utf-8", errors="replace")
        atomic_write(self.path, lambda f: f.write(data))
        reporter.info(f"report written to {self.path}" + (" (incomplete)" if incomplete else ""))
