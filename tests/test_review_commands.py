"""`winclip review stats` and `winclip review apply` on the command line: the files they
read (verdicts, rows and their manifests, the calibration), the promised rate taken from
the runs' manifests, JSON on stdout, --fail-on-drift, one-line errors with exit 2, and
apply taking the calibration's own model when no model option is given."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Outcome, read_csv, run_runner
from tests.test_calibrated_runs import make_images
from tests.test_review_apply import make_odd_images, write_verdicts
from winclip_cli.calibration import load_calibration
from winclip_cli.manifest import RunManifest
from winclip_cli.verdicts import VERDICT_COLUMNS


def review(*args: object, cwd: Path | None = None) -> Outcome:
    outcome = run_runner(["review", *args], cwd=cwd)
    assert "Traceback" not in outcome.stderr, outcome.stderr
    return outcome


def week(folder: Path, days: int, flagged: int, images: int, rate: float) -> list[Path]:
    """Rows files of ``days`` runs, each with its manifest recording ``rate``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for day in range(days):
        path = folder / f"day{day}.csv"
        lines = ["path,score,p_value,label,status,error"]
        for i in range(images):
            label = "anomalous" if i < flagged else "normal"
            lines.append(f"d{day}/{i:03d}.png,0.5,0.5,{label},ok,")
        path.write_text("\n".join(lines) + "\n")
        RunManifest({"--false-alarm-rate": rate, "--calibration": None}).write(path)
        files.append(path)
    return files


def verdicts_for(folder: Path, days: int, false_alarms: int, defects: int) -> Path:
    lines = [",".join(VERDICT_COLUMNS)]
    for day in range(days):
        for i in range(false_alarms + defects):
            verdict = "false_alarm" if i < false_alarms else "defect"
            lines.append(f"d{day}/{i:03d}.png,{verdict},0.5,anomalous,0.5,,")
    path = folder / "verdicts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_week_that_kept_its_promise(tmp_path):
    rows = week(tmp_path, days=5, flagged=3, images=200, rate=0.01)
    verdicts = verdicts_for(tmp_path, days=5, false_alarms=1, defects=2)
    outcome = review("stats", verdicts, "--rows", *rows, "--fail-on-drift")  # as a glob gives
    assert outcome.code == 0, outcome.stderr
    assert "false-alarm rate promised   0.01 (1%)" in outcome.stdout
    assert "5 of 990" in outcome.stdout  # F = 5 false alarms among G = 1000 - 10 defects
    assert "promise held" in outcome.stdout


def test_a_drifted_week_says_so_and_fails_on_request(tmp_path):
    rows = week(tmp_path, days=5, flagged=8, images=200, rate=0.01)
    verdicts = verdicts_for(tmp_path, days=5, false_alarms=6, defects=1)
    rows_args = [a for path in rows for a in ("--rows", path)]
    said = review("stats", verdicts, *rows_args)
    assert said.code == 0  # without --fail-on-drift it is only said
    for words in ("drifted", "camera, light, material", "recalibrate", "broken at the 5% level"):
        assert words in said.stdout
    assert review("stats", verdicts, *rows_args, "--fail-on-drift").code == 1
    data = json.loads(review("stats", verdicts, *rows_args, "--format", "json").stdout)
    assert data["drift"]["observed"]["count"] == 30 and data["drift"]["observed"]["total"] == 995
    assert data["drift"]["broken"] is True and data["drift"]["promised"] == 0.01


def test_rates_that_differ_or_are_missing(tmp_path):
    first = week(tmp_path / "a", 1, 1, 50, rate=0.01)
    second = week(tmp_path / "b", 1, 1, 50, rate=0.05)
    verdicts = verdicts_for(tmp_path, 1, 1, 0)
    refused = review("stats", verdicts, "--rows", *first, *second)
    assert refused.code == 2 and "different false-alarm rates (0.01, 0.05)" in refused.stderr
    given = review("stats", verdicts, "--rows", *first, *second, "--false-alarm-rate", "0.05")
    assert given.code == 0 and "promised   0.05 (5%)" in given.stdout
    first[0].with_name(first[0].name + ".manifest.json").unlink()
    assert "the default 0.01 is assumed" in review("stats", verdicts, "--rows", *first).stdout


def test_stats_refusals_are_one_line_exit_2(tmp_path):
    verdicts = verdicts_for(tmp_path, 1, 1, 0)
    (tmp_path / "bad.csv").write_text("path,verdict\nx.png,perhaps\n")
    cases = [
        (["--format", "yaml"], "--format"),
        (["--fail-on-drift"], "--fail-on-drift needs --rows"),
        (["--rows", tmp_path / "nope.csv"], "not found"),
    ]
    for extra, says in cases:
        outcome = review("stats", verdicts, *extra)
        assert outcome.code == 2 and says in outcome.stderr, outcome.stderr
        assert outcome.stderr.count("\n") == 1
    bad = review("stats", tmp_path / "bad.csv")
    assert bad.code == 2 and "bad.csv: line 2: field 'verdict'" in bad.stderr
    alone = review("stats", verdicts)  # verdicts alone: the alarm figures
    assert alone.code == 0 and "images reviewed" in alone.stdout
    assert "observed" not in alone.stdout


def test_a_calibrated_run_then_stats_and_apply_with_the_calibrations_own_model(
    tmp_path, model, monkeypatch
):
    """Runs with a calibration write manifests that name the rate; stats reads them; apply
    loads the model the calibration names when no model option is given."""
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "good", 24, seed=1)
    made = run_runner(["calibrate", "good", "--class", "screw", "-o", "zero.cal", *model])
    assert made.code == 0, made.stderr
    make_odd_images(tmp_path / "cand")
    args = ["score", "cand", "--calibration", "zero.cal", "--false-alarm-rate", "0.05"]
    scored = run_runner([*args, "-o", "day.csv", *model])
    assert scored.code == 0, scored.stderr
    rows = read_csv((tmp_path / "day.csv").read_text())[1]
    flagged = [r["path"] for r in rows if r["label"] == "anomalous"]
    verdicts = write_verdicts(tmp_path / "v.csv", *((p, "false_alarm") for p in flagged))
    stats = review("stats", verdicts, "--rows", "day.csv", "--calibration", "zero.cal")
    assert stats.code == 0, stats.stderr
    assert "false-alarm rate promised   0.05 (5%), from a calibration of n = 24" in stats.stdout
    assert f"{len(flagged)} of 8" in stats.stdout

    applied = review(
        "apply", verdicts, "--calibration", "zero.cal", "-o", "new.cal", "--workers", 0
    )
    assert applied.code == 0, applied.stderr
    assert "added to the reference bank" in applied.stderr and "WinCLIP+" in applied.stderr
    assert load_calibration("new.cal").settings["mode"] == "few-shot"
    for extra, says in [
        (["--false-alarm-rate", "0.1"], "--false-alarm-rate applies to --into calibration"),
        (["--root", "nope"], "--root nope: no such folder"),
        (["--into", "both"], "--into 'both': use bank or calibration"),
        (["-o", "zero.cal"], "would overwrite an input: the --calibration file zero.cal"),
    ]:
        args = ["apply", verdicts, "--calibration", "zero.cal", "-o", "x.cal", *extra]
        outcome = review(*args)
        assert outcome.code == 2 and says in outcome.stderr, outcome.stderr
    assert not Path("x.cal").exists()
