"""planning.plan: everything decided once, before the model loads (the Plan), and the
settings table that a manifest and a calibration record."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from winclip_cli import settings
from winclip_cli.decision import ThresholdRule
from winclip_cli.errors import UsageError
from winclip_cli.options import (
    CalibrateOptions,
    ModelOptions,
    RayOptions,
    RunOptions,
    default_workers,
)
from winclip_cli.planning import plan, plan_calibration
from winclip_cli.prompts import resolve_prompts
from winclip_cli.rows_file import RowsFile
from winclip_cli.settings import SETTINGS, RunFacts, Setting, run_settings
from winclip_cli.tiling import TileGrid

pytestmark = pytest.mark.usefixtures("no_model")  # planning never loads the model


def images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def options(tmp_path: Path, **changes) -> RunOptions:
    base = RunOptions(inputs=[images(tmp_path / "in")], out_dir=tmp_path / "out")
    return dataclasses.replace(base, **changes)


def test_the_plan_holds_the_parsed_grid_the_workers_and_the_engine(tmp_path):
    opts = options(tmp_path, maps=True, tiles="2x3", tile_overlap=0.5, batch_size=5)
    with plan(opts) as p:
        assert p.grid == TileGrid(2, 3, 0.5) and p.engine.grid is p.grid
        assert p.engine.workers == default_workers()  # worked out once, here
        assert (p.engine.name, p.engine.batch_size) == ("local", 5)
        assert not p.engine.maps_only_anomalous and p.rule is None
        assert [im.path.name for im in p.todo] == ["0.png", "1.png", "2.png"]
    with plan(options(tmp_path, workers=0)) as p:
        assert p.engine.workers == 0


def test_the_decision_rule_and_maps_anomalous_are_decided_in_the_plan(tmp_path):
    opts = options(tmp_path, maps=True, threshold=0.4, maps_mode="anomalous")
    with plan(opts) as p:
        assert isinstance(p.rule, ThresholdRule) and p.rule.threshold == 0.4
        assert p.engine.maps_only_anomalous and p.engine.rule is p.rule
        assert "label" in p.cols


def test_ray_options_reach_the_engine_spec_not_the_local_engine(tmp_path):
    ray = RayOptions(workers=3)
    with pytest.raises(UsageError, match="--ray-workers needs --engine ray"):
        plan(options(tmp_path, ray=ray))


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"tiles": "0x2"}, "--tiles"),
        ({"batch_size": 0}, "--batch-size"),
        ({"engine": "gpu-farm"}, "--engine 'gpu-farm'"),
        ({"maps_mode": "some"}, "--maps 'some'"),
        ({"maps": True, "maps_mode": "anomalous"}, "needs a decision"),
        ({"resume": True}, "--resume needs -o FILE"),
    ],
)
def test_bad_options_are_refused_before_the_model(tmp_path, changes, says):
    with pytest.raises(UsageError, match=says):
        plan(options(tmp_path, **changes))


def test_resume_of_a_file_without_manifest_keeps_its_rows_and_scores_the_rest(tmp_path):
    rows = tmp_path / "rows.csv"
    folder = images(tmp_path / "in")
    (folder / "3.png").write_bytes(b"broken")
    kept = f"{folder / '0.png'},0.500000,ok,\n"
    error = f"{folder / '3.png'},,error,not an image\n"
    opts = options(tmp_path, output=str(rows), resume=True, settle=0.0)
    with plan(dataclasses.replace(opts, resume=False)) as first:  # writes the header
        assert first.rows_file is not None and isinstance(first.rows_file, RowsFile)
        first.rows_file.keep()
    rows.write_text("path,score,status,error\n" + kept + error)
    with plan(opts) as p:
        # An older version's file (no manifest): its rows, error rows too, are kept.
        assert p.resume.legacy and not p.resume.again
        assert sorted(im.path.name for im in p.todo) == ["1.png", "2.png"]
        kept_paths = [r["path"] for r in p.kept.values()]
        assert kept_paths == [str(folder / "0.png"), str(folder / "3.png")]


def test_calibrate_plans_like_a_run(tmp_path):
    good = images(tmp_path / "good", 4)
    (good / "copy.png").write_bytes((good / "0.png").read_bytes())
    cal = CalibrateOptions(inputs=[good], output=tmp_path / "x.cal", tiles="2x2")
    p, left_out = plan_calibration(cal)
    assert p.opts.maps and p.grid == TileGrid(2, 2) and p.engine.workers == default_workers()
    assert len(p.todo) == 4 and len(left_out) == 1 and "duplicate" in left_out[0]


def test_a_setting_is_one_entry_in_the_table(tmp_path, monkeypatch):
    opts = options(tmp_path)
    facts = RunFacts(opts, resolve_prompts(None), None, [], ["path", "score"], None)
    recorded = run_settings(facts)
    assert list(recorded) == [s.option for s in SETTINGS if s.in_manifest is not None]
    extra = Setting("--precision", lambda r: r.opts.model.precision, "precision", None)
    monkeypatch.setattr(settings, "SETTINGS", (*SETTINGS, extra))
    assert run_settings(facts)["--precision"] == ModelOptions().precision


def test_every_calibration_key_names_the_option_that_sets_it():
    keys = [s.calibration_key for s in SETTINGS if s.calibration_key is not None]
    assert len(keys) == len(set(keys))
    for s in SETTINGS:
        assert s.option.startswith("--") or s.option in {"command", "scales", "columns"}
        assert (s.calibration_key is None) == (s.in_calibration is None)
