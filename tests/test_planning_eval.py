"""planning_eval.plan_eval: `winclip eval`'s checks before the model loads, the runs' own
(check_numbers, engine_spec), and the EvalPlan it hands to the loop."""

from __future__ import annotations

import os

import pytest

from tests.helpers import make_mvtec
from winclip_cli.errors import DatasetError, UsageError
from winclip_cli.options import EvalOptions, RunOptions
from winclip_cli.planning import engine_spec
from winclip_cli.planning_eval import plan_eval
from winclip_cli.prompts import PromptSet

pytestmark = pytest.mark.usefixtures("no_model")  # planning never loads the model


def test_the_plan_has_the_categories_and_a_runs_engine(tmp_path):
    root = make_mvtec(tmp_path / "data")
    p = plan_eval(EvalOptions(root=root, shots=[0, 2, 2], seeds=2, tiles="2x1", workers=0))
    assert [c.name for c in p.categories] == ["bottle", "metal_nut"]
    assert p.shots == [0, 2] and p.seeds == [0, 1]
    run = RunOptions(inputs=[root], tiles="2x1", workers=0, maps=True, output=os.devnull)
    same = engine_spec(run, PromptSet())
    assert (p.engine.grid, p.engine.workers) == (same.grid, same.workers)
    assert (p.engine.grid.rows, p.engine.grid.cols) == (2, 1)  # RxC


def test_too_few_training_normals_for_a_k_is_refused_before_the_model(tmp_path):
    root = make_mvtec(tmp_path / "data", train=3)
    with pytest.raises(DatasetError, match="4-shot needs 4 training normal"):
        plan_eval(EvalOptions(root=root, shots=[4]))


def test_a_runs_checks_apply_to_eval(tmp_path):
    root = make_mvtec(tmp_path / "data")
    with pytest.raises(UsageError, match="--batch-size"):
        plan_eval(EvalOptions(root=root, batch_size=0))
    with pytest.raises(UsageError, match="--tiles"):
        plan_eval(EvalOptions(root=root, tiles="0x2"))


def test_results_written_over_a_dataset_file_are_refused(tmp_path):
    root = make_mvtec(tmp_path / "data")
    image = next((root / "bottle" / "test" / "good").iterdir())
    with pytest.raises(UsageError, match="--json"):
        plan_eval(EvalOptions(root=root, json_path=image))


def test_mutual_scoring_takes_no_references(tmp_path):
    root = make_mvtec(tmp_path / "data")
    with pytest.raises(UsageError, match="--k must be 0"):
        plan_eval(EvalOptions(root=root, mutual=True, shots=[2]))
    assert plan_eval(EvalOptions(root=root, mutual=True)).mutual
