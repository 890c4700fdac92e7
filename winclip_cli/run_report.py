"""`--report FILE` on a run: the HTML report of its rows, written when the run ends
(also when it is interrupted, then marked incomplete)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .options import LOCAL_DIR, RunOptions
from .progress import Reporter
from .report import render_report


def run_info(opts: RunOptions) -> dict[str, str]:
    """What the report's header says was run."""
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
    if opts.threshold is not None:
        info["threshold"] = f"{opts.threshold:g}"
    return info


def _weights(opts: RunOptions) -> str:
    m = opts.model
    if m.weights is not None:
        return str(m.weights)
    return "from the model folder" if m.model.startswith(LOCAL_DIR) else str(m.pretrained)


class RunReport:
    """Collects a run's rows (resumed ones first) and writes the report at the end."""

    def __init__(self, opts: RunOptions, path: Path, resumed: list[dict[str, Any]]) -> None:
        self.opts, self.path = opts, path
        self.rows: list[dict[str, Any]] = list(resumed)
        self.started = time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        self.rows.append(record)

    def write(self, reporter: Reporter, incomplete: bool) -> None:
        """Render and write the report; thumbnails show a progress bar on a terminal."""
        elapsed = time.perf_counter() - self.started
        try:
            text = render_report(
                self.rows,
                output=self.path,
                run_info=run_info(self.opts),
                threshold=self.opts.threshold,
                incomplete=incomplete,
                elapsed=elapsed,
                progress=reporter.counter("thumbnails"),
            )
        finally:
            reporter.stop()
        data = text.encode("utf-8", errors="replace")
        atomic_write(self.path, lambda f: f.write(data))
        reporter.info(f"report written to {self.path}" + (" (incomplete)" if incomplete else ""))
