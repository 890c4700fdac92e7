"""`winclip report ROWS...` reads the manifest beside each rows file (issue 17): the same
header, threshold and calibration scores as --report on the run; shards merge; other
settings are named in a note."""

from __future__ import annotations

from pathlib import Path

from winclip_cli.manifest import RunManifest, read_manifest
from winclip_cli.report_context import context_of, run_context

INFO = {"command": "score", "model": "ViT-B-16-plus-240", "class": "screw"}


def write(rows: Path, settings: dict, threshold=0.62, scores=(0.1, 0.2, 0.3)) -> Path:
    rows.write_text("path,score,status,error\n")
    context = run_context(INFO, threshold, list(scores) if scores is not None else None)
    RunManifest(settings, "w1", {}, context).write(rows)
    return rows


def test_the_context_round_trips_through_the_manifest(tmp_path):
    rows = write(tmp_path / "rows.csv", {"--class": "screw"})
    manifest = read_manifest(rows)
    assert manifest is not None and manifest.context is not None
    got = context_of([rows])
    assert got.run_info == INFO and got.threshold == 0.62
    assert got.calibration_scores == [0.1, 0.2, 0.3] and got.notes == []


def test_shards_with_the_same_settings_merge_into_one_header(tmp_path):
    a = write(tmp_path / "a.csv", {"--class": "screw", "--shard": "1/2"})
    b = write(tmp_path / "b.csv", {"--class": "screw", "--shard": "2/2"})
    got = context_of([a, b])
    assert got.run_info == {**INFO, "shards": "1/2, 2/2"} and got.notes == []
    assert got.threshold == 0.62


def test_other_settings_are_reported_with_a_note_naming_them(tmp_path):
    a = write(tmp_path / "a.csv", {"--class": "screw", "--threshold": 0.5}, threshold=0.5)
    b = write(tmp_path / "b.csv", {"--class": "nut", "--threshold": 0.7}, threshold=0.7)
    got = context_of([a, b])
    assert got.notes and got.notes[0].startswith("the rows files were made with different")
    assert "--class (screw in a.csv, nut in b.csv)" in got.notes[0]
    assert "--threshold (0.5 in a.csv, 0.7 in b.csv)" in got.notes[0]
    assert got.run_info is not None
    assert got.run_info["settings that differ"] == "--class, --threshold"
    assert got.threshold is None  # no one line fits both


def test_rows_without_a_manifest_are_a_note(tmp_path):
    bare = tmp_path / "stdout.csv"
    bare.write_text("path,score,status,error\n")
    got = context_of([bare])
    assert got.run_info is None and "no run manifest beside it" in got.notes[0]
