"""`winclip score`, `segment` and `fewshot`: plan the run, then execute it."""

from __future__ import annotations

from ..errors import ExitCode
from ..model import WinClip
from ..options import RunOptions
from ..pipeline import execute
from ..planning import plan
from ..progress import Reporter


def run(opts: RunOptions, reporter: Reporter, model: WinClip | None = None) -> ExitCode:
    """Score every input and write a row for each; returns the process exit code.

    ``model``: an already loaded WinClip to use instead of loading ``opts.model`` (for
    benchmarks and long-lived callers). Raises a WinclipError: UsageError (exit 2),
    WeightsUnavailableError (exit 4), OutputError (exit 2).
    """
    with plan(opts, reporter.info) as checked:
        return execute(checked, reporter, model)
