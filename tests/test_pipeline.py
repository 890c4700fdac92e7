"""pipeline.run in-process: behaviour not visible from a single CLI call."""

from __future__ import annotations

import shutil
from pathlib import Path

from winclip_cli.pipeline import ExitCode, ModelOptions, RunOptions, run
from winclip_cli.report import Reporter

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "parts" / "good"


def test_resume_with_nothing_left_does_not_load_the_model(tmp_path, tiny, cache_dir):
    folder = tmp_path / "images"
    shutil.copytree(SAMPLES, folder)
    rows = tmp_path / "rows.csv"
    opts = RunOptions(inputs=[folder], output=str(rows), workers=0)
    opts.model = ModelOptions(model=tiny["local_dir"])
    assert run(opts, Reporter(quiet=True)) == ExitCode.OK
    first = rows.read_text()
    # Everything already has a row: a model that cannot load must not be touched.
    opts.resume = True
    opts.model = ModelOptions(model=f"local-dir:{tmp_path / 'missing'}")
    assert run(opts, Reporter(quiet=True)) == ExitCode.OK
    assert rows.read_text() == first


def test_reporter_animates_only_on_a_terminal_and_quiet_keeps_errors():
    import io

    from rich.console import Console

    piped = io.StringIO()
    reporter = Reporter(stream=piped)
    reporter.start(10, "scoring")
    reporter.advance(5, 5, 1.0)
    reporter.stop()
    assert piped.getvalue() == ""  # no progress bar into a pipe or a log file
    reporter.info("9 image(s) scored")
    reporter.warn("reference [/bold]x[red].jpg skipped")  # file names are not markup
    assert "9 image(s) scored" in piped.getvalue()
    assert "reference [/bold]x[red].jpg skipped" in piped.getvalue()

    terminal = io.StringIO()
    reporter = Reporter(stream=terminal)
    reporter.console = Console(file=terminal, force_terminal=True, width=100)
    reporter.start(10, "scoring")
    reporter.advance(5, 5, 2.0)
    reporter.stop()
    assert "2.50 img/s" in terminal.getvalue()

    quiet = io.StringIO()
    reporter = Reporter(quiet=True, stream=quiet)
    reporter.info("summary")
    reporter.warn("a warning")
    reporter.start(10, "scoring")
    reporter.stop()
    assert quiet.getvalue() == ""
    reporter.error("disk [full]")  # markup-like text is printed as is
    assert "disk [full]" in quiet.getvalue()
