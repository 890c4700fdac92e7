"""`--report FILE` on a run: collects the rows as the pipeline writes them and renders
the HTML report when the run ends (also when it is interrupted, then marked incomplete)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .htmlreport import render_report
from .planning import Plan
from .progress import Reporter
from .report_context import run_context
from .resume import resume_key


def calibration_scores(p: Plan) -> list[float] | None:
    """The calibration's scores the report draws (None without --calibration)."""
    return None if p.calibration is None else [float(s) for s in p.calibration.scores]


def run_context_of(p: Plan) -> dict[str, Any]:
    """What the run's manifest keeps for a report made later (report_context): the
    header, the threshold and the calibration's scores, as --report shows them."""
    threshold = None if p.rule is None else p.rule.threshold
    return run_context(p.report_header, threshold, calibration_scores(p))


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
        try:
            left = self.plan.resume.not_yet_redone(self.plan.done, self.written)
            text = render_report(
                self.rows + left,
                output=self.path,
                run_info=self.plan.report_header,
                threshold=None if self.plan.rule is None else self.plan.rule.threshold,
                calibration_scores=calibration_scores(self.plan),
                incomplete=incomplete,
                elapsed=elapsed,
                progress=reporter.counter("thumbnails"),
            )
        finally:
            reporter.stop()
        data = text.encode("utf-8", errors="replace")
        atomic_write(self.path, lambda f: f.write(data))
        reporter.info(f"report written to {self.path}" + (" (incomplete)" if incomplete else ""))
