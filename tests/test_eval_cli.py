"""`winclip eval` through the command line: a generated MVTec-AD tree, the tiny model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.helpers import make_mvtec, make_visa
from winclip_cli.cli import app

runner = CliRunner()


def test_eval_writes_json_scores_and_table(tmp_path, tiny, cache_dir):
    root = make_mvtec(tmp_path / "mvtec")
    out_json, scores = tmp_path / "r.json", tmp_path / "s.csv"
    args = ["eval", str(root), "--model", tiny["local_dir"], "--k", "0", "--k", "1"]
    args += ["--seeds", "2", "--json", str(out_json), "--scores", str(scores)]
    result = runner.invoke(app, [*args, "--compare", "paper"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out_json.read_text())
    assert set(figures["categories"]) == {"bottle", "metal_nut"}
    assert set(figures["mean"]) == {"0", "1"}
    assert 0.0 <= figures["mean"]["1"]["mean"]["pixel_pro"] <= 1.0
    assert "metal_nut" in result.output and "paper" in result.output.lower()
    rows = scores.read_text().splitlines()
    assert rows[0] == "category,k,seed,path,label,score"
    # 2 categories x 4 test images x (k=0 once + k=1 twice)
    assert len(rows) - 1 == 2 * 4 * 3


def test_eval_usage_errors_exit_2_before_the_model(tmp_path, tiny):
    result = runner.invoke(app, ["eval", str(tmp_path / "missing"), "--model", "no-such-model"])
    assert result.exit_code == 2
    root = make_mvtec(tmp_path / "mvtec")
    result = runner.invoke(app, ["eval", str(root), "--category", "nope", "--model", "x"])
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(app, ["eval", str(root), "--compare", "blog"])
    assert result.exit_code == 2


def test_eval_bad_values_are_usage_errors_before_the_model(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    model = ["--model", "local-dir:/nowhere"]  # never loaded: every case fails before
    cases = [
        ["--seeds", "0"],
        ["--k", "-1"],
        ["--batch-size", "0"],
        ["--temperature", "0"],
        ["--class", " "],
        ["--json", str(tmp_path / "missing" / "r.json")],
        ["--scores", str(tmp_path / "missing" / "s.csv")],
        ["--weights", str(tmp_path / "missing.pt")],
        ["--json", str(tmp_path / "same"), "--scores", str(tmp_path / "same")],
        ["--temperature", "nan"],
    ]
    for extra in cases:
        result = runner.invoke(app, ["eval", str(root), *model, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "internal error" not in result.output


def test_eval_scores_to_stdout_and_the_table_to_stderr(tmp_path, tiny, cache_dir):
    root = make_mvtec(tmp_path / "mvtec")
    args = ["eval", str(root), "--model", tiny["local_dir"], "--category", "bottle"]
    result = runner.invoke(app, [*args, "--scores", "-", "--compare", "paper"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0] == "category,k,seed,path,label,score" and len(rows) == 1 + 4
    assert "image_auroc" not in result.stdout.lower() and "auroc" in result.stderr.lower()
    assert "over 1 category," in " ".join(result.stderr.split())
    assert not (tmp_path / "-").exists()


def test_eval_on_a_file_says_it_is_not_a_folder(tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    result = runner.invoke(app, ["eval", str(image)])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_eval_outputs_may_not_overwrite_the_dataset(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    image = next((root / "bottle" / "test" / "good").iterdir())
    before = image.read_bytes()
    for option in ("--scores", "--json"):
        result = runner.invoke(app, ["eval", str(root), "--model", "x", option, str(image)])
        assert result.exit_code == 2 and "would overwrite an input" in result.stderr
    assert image.read_bytes() == before
    # An earlier eval's results kept in the dataset folder are outputs, not data.
    (root / "results.json").write_text("{}")
    args = [
        "eval",
        str(root),
        "--model",
        "local-dir:/nowhere",
        "--json",
        str(root / "results.json"),
    ]
    result = runner.invoke(app, args)
    assert "would overwrite" not in result.stderr and result.exit_code == 4, result.stderr


def test_eval_json_to_stdout(tmp_path, tiny, cache_dir):
    root = make_mvtec(tmp_path / "mvtec")
    args = ["eval", str(root), "--model", tiny["local_dir"], "--category", "bottle"]
    result = runner.invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert set(figures["categories"]) == {"bottle"}
    assert not (tmp_path / "-").exists()


def test_eval_json_may_not_replace_the_visa_split(tmp_path):

    root = make_visa(tmp_path / "visa")
    split = root / "split_csv" / "1cls.csv"
    before = split.read_bytes()
    result = runner.invoke(app, ["eval", str(root), "--model", "x", "--json", str(split)])
    assert result.exit_code == 2 and "would overwrite an input" in result.stderr
    assert split.read_bytes() == before
