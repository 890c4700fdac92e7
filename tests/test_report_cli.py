"""`winclip report` and `--report FILE` on a run: the CLI side of the HTML report."""

from __future__ import annotations

import html
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import command, count_rows, env_for, read_csv, run_runner

HOSTILE = "<img src=x onerror=alert(1)>.png"


def images(folder: Path, count: int = 4) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png"
        )
    (folder / HOSTILE).write_bytes(b"not an image")
    return folder


def cards(text: str) -> int:
    return text.count('class="card')


def test_report_command_over_a_segment_run(tiny, cache_dir, tmp_path):
    parts = images(tmp_path / "parts")
    rows = tmp_path / "rows.csv"
    args = ["segment", parts, "--model", tiny["local_dir"], "--workers", "0"]
    assert run_runner([*args, "--out", tmp_path / "out", "-o", rows]).code == 3
    report = tmp_path / "report.html"
    outcome = run_runner(["report", rows, "-o", report])
    assert outcome.code == 0, outcome.stderr
    text = report.read_text()
    assert HOSTILE not in text and html.escape(HOSTILE) in text
    assert text.count("data:image/jpeg;base64,") >= 4  # every overlay embedded
    assert "5 row(s)" in outcome.stderr
    # Missing rows file: a usage error; the report may not replace its rows file.
    assert run_runner(["report", tmp_path / "none.csv", "-o", report]).code == 2
    assert run_runner(["report", rows, "-o", rows]).code == 2


def test_report_option_on_a_run(tiny, cache_dir, tmp_path):
    parts = images(tmp_path / "parts")
    report = tmp_path / "run.html"
    args = ["score", parts, "--model", tiny["local_dir"], "--workers", "0", "--report", report]
    outcome = run_runner([*args, "--threshold", "0.5", "-o", tmp_path / "rows.csv"])
    assert outcome.code == 3
    text = report.read_text()
    assert "INCOMPLETE" not in text
    assert "score" in text and tiny["local_dir"] in html.unescape(text)
    assert f"report written to {report}" in outcome.stderr
    # -o and --report may not be the same file.
    clash = run_runner([*args, "-o", report])
    assert clash.code == 2 and "-o and --report name the same file" in clash.stderr


def test_an_interrupted_run_still_writes_its_report(dataset, model_dir, tmp_path):
    rows, report = tmp_path / "rows.csv", tmp_path / "r.html"
    args = [*command(dataset, model_dir, tmp_path / "out", rows, "csv", slow=True)]
    args += ["--report", str(report)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, env=env_for(tmp_path / "cache"))
    try:
        while count_rows(rows, "csv") < 5:
            assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    text = report.read_text()
    assert "INCOMPLETE" in text
    written = count_rows(rows, "csv")
    assert text.count("<tr") - 1 >= written  # every finished row is in the table


def _report_rows(text: str) -> list[str]:
    """The paths in the report's table of every row (its first column after #), in order."""
    table = text.split('<table id="rows">', 1)[1]
    return [html.unescape(p) for p in re.findall(r"<tr><td>\d+<td>([^<\n]*)", table)]


def test_the_report_of_a_resumed_run_has_exactly_the_rows_of_its_file(tiny, cache_dir, tmp_path):
    """Resuming rescored an error row: the report held the old error row and the new one
    (5 rows for a 4-row file, one image both an error and ok). It holds the file's rows."""
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(parts / f"p{i}.png")
    broken = parts / "p3.png"
    broken.write_bytes(b"not an image yet")
    rows, report = tmp_path / "rows.csv", tmp_path / "r.html"
    args = ["score", parts, "--model", tiny["local_dir"], "--workers", "0", "-o", rows]
    assert run_runner([*args, "--settle", "0"]).code == 3  # the broken file's error row
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(broken)
    outcome = run_runner([*args, "--resume", "--settle", "0", "--report", report])
    assert outcome.code == 0, outcome.stderr
    written = read_csv(rows.read_text())[1]
    assert len(written) == 4 and all(r["status"] == "ok" for r in written)
    text = report.read_text()
    assert '<li data-count="rows"><strong>4</strong>' in text
    assert '<li data-count="errors"><strong>0</strong>' in text
    assert sorted(_report_rows(text)) == sorted(r["path"] for r in written)
