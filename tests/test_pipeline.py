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
