"""pipeline.run in-process: behaviour not visible from a single CLI call."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from winclip_cli.commands.run import run
from winclip_cli.errors import ExitCode
from winclip_cli.options import ModelOptions, RunOptions
from winclip_cli.progress import Reporter

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "parts" / "good"


def test_resume_with_nothing_left_does_not_load_the_model(tmp_path, tiny, cache_dir, monkeypatch):
    from winclip_cli.model import WinClip

    folder = tmp_path / "images"
    shutil.copytree(SAMPLES, folder)
    rows = tmp_path / "rows.csv"
    opts = RunOptions(inputs=[folder], output=str(rows), workers=0, settle=0)
    opts.model = ModelOptions(model=tiny["local_dir"])
    assert run(opts, Reporter(quiet=True)) == ExitCode.OK
    first = rows.read_text()

    # Everything already has a row: the model must not be touched.
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(WinClip, "load", no_model)
    opts.resume = True
    assert run(opts, Reporter(quiet=True)) == ExitCode.OK
    assert rows.read_text() == first


def test_reporter_animates_only_on_a_terminal_and_quiet_keeps_errors(monkeypatch):
    import io
    import time

    from rich.console import Console

    piped = io.StringIO()
    reporter = Reporter(stream=piped)
    reporter.start(10, "scoring")
    reporter.advance(5, 5)
    reporter.stop()
    # No bar into a pipe or a log file: progress lines (each tenth or 30 s) instead; the
    # first images give no rate yet (it counts from the first one, not from start-up).
    assert piped.getvalue() == "scoring: 5/10 (50%)\n"
    piped.truncate(0)
    piped.seek(0)
    reporter.info("9 image(s) scored")
    reporter.warn("reference [/bold]x[red].jpg skipped")  # file names are not markup
    assert "9 image(s) scored" in piped.getvalue()
    assert "reference [/bold]x[red].jpg skipped" in piped.getvalue()

    terminal = io.StringIO()
    reporter = Reporter(stream=terminal)
    reporter.console = Console(file=terminal, force_terminal=True, width=100)
    clock = iter([10.0, 12.0])  # the first image at 10 s, five more by 12 s
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    reporter.start(10, "scoring")
    reporter.advance(5, 5)
    reporter.advance(5, 10)
    reporter.stop()
    monkeypatch.undo()
    assert "2.50 img/s" in terminal.getvalue()
    terminal.truncate(0)
    reporter.start(10, "scoring", live=False)  # rows on the same screen: no bar
    reporter.advance(5, 5)
    reporter.stop()
    assert terminal.getvalue() == ""

    quiet = io.StringIO()
    reporter = Reporter(quiet=True, stream=quiet)
    reporter.info("summary")
    reporter.warn("a warning")
    reporter.start(10, "scoring")
    reporter.stop()
    assert quiet.getvalue() == ""
    reporter.error("disk [full]")  # markup-like text is printed as is
    assert "disk [full]" in quiet.getvalue()


def test_no_progress_bar_when_the_rows_go_to_the_terminal(tmp_path, tiny, cache_dir, monkeypatch):
    """Rows printed on the terminal and a live bar redrawn under them garble each other."""
    import io

    from rich.console import Console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    opts = RunOptions(inputs=[SAMPLES], workers=0, model=ModelOptions(model=tiny["local_dir"]))
    messages = io.StringIO()
    reporter = Reporter(stream=messages)
    reporter.console = Console(file=messages, force_terminal=True, width=100)
    assert run(opts, reporter) == ExitCode.OK
    assert screen.getvalue().count("\n") == 4  # header + 3 rows
    assert "━" not in messages.getvalue() and "scoring" not in messages.getvalue()


# ----- found in review: signals, pipes, warnings, early exits -----------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from winclip_cli.cli import app  # noqa: E402
from winclip_cli.errors import Interrupted  # noqa: E402


def test_an_interrupt_is_never_swallowed_by_a_decoder_guard(monkeypatch, tmp_path):
    from winclip_cli import data

    def interrupted(*_args, **_kwargs):
        raise Interrupted(130)

    shutil.copy(next(SAMPLES.iterdir()), tmp_path / "a.jpg")
    monkeypatch.setattr(data.Image, "open", interrupted)
    with pytest.raises(Interrupted):
        data.open_image(tmp_path / "a.jpg")


def _many_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    source = next(SAMPLES.iterdir())
    for i in range(count):
        shutil.copy(source, folder / f"img_{i:03d}.jpg")
    return folder


def test_a_closed_pipe_ends_the_run_quietly(tmp_path, tiny, cache_dir):
    folder = _many_images(tmp_path / "images", 40)
    cmd = [sys.executable, "-m", "winclip_cli", "score", str(folder), "--model"]
    cmd += [tiny["local_dir"], "--workers", "0", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"path,score")  # like `| head -1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert b"internal error" not in err and b"Traceback" not in err


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path, tiny, cache_dir):
    folder = _many_images(tmp_path / "images", 6)
    rows = tmp_path / "rows.csv"
    cmd = [sys.executable, "-m", "winclip_cli", "score", str(folder), "--model"]
    cmd += [tiny["local_dir"], "--workers", "0", "--batch-size", "1", "-o", str(rows)]

    def ignore_sigint() -> None:  # what a shell does for a background job of a script
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, preexec_fn=ignore_sigint, stderr=subprocess.PIPE)
    deadline = 120
    while deadline > 0 and (not rows.exists() or rows.read_text().count("\n") < 2):
        subprocess.run(["sleep", "0.2"])
        deadline -= 0.2
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    assert rows.read_text().count("\n") == 7  # header + every image


def test_library_warnings_go_through_the_reporter_and_quiet(tmp_path, tiny, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WINCLIP_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    args = ["score", str(SAMPLES), "--model", tiny["local_dir"], "--workers", "0"]
    loud = CliRunner().invoke(app, args)
    assert loud.exit_code == 0
    assert "warning: text cache not written" in loud.output
    assert "UserWarning" not in loud.output
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0 and "warning" not in quiet.output


def test_early_usage_error_leaves_no_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["segment", "--model", "local-dir:/nowhere"])
    assert result.exit_code == 2 and "no images found" in result.output
    assert not (tmp_path / "winclip-out").exists()


def test_overlay_that_cannot_be_written_makes_a_scoreless_error_row(tmp_path, tiny, cache_dir):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    shutil.copy(next(SAMPLES.iterdir()), inputs / "sub" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the overlay folder must go")
    rows = tmp_path / "rows.csv"
    args = ["segment", str(inputs), "--model", tiny["local_dir"], "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "-o", str(rows), "--workers", "0"])
    assert result.exit_code == 3
    row = rows.read_text().splitlines()[1].split(",")
    assert row[1] == "" and row[-2] == "error" and "overlay not written" in row[-1]


def test_cli_defaults_are_the_engines():
    from winclip_cli import backbone, cli

    assert (cli.DEFAULT_MODEL, cli.DEFAULT_PRETRAINED) == (
        backbone.DEFAULT_MODEL,
        backbone.DEFAULT_PRETRAINED,
    )
