"""`--help` of the `winclip` commands lists the options users look for (DESIGN.md)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from winclip_cli.cli import app

SHARED = [
    "--class",
    "--ref",
    "--k",
    "--seed",
    "--model",
    "--pretrained",
    "--weights",
    "--device",
    "--precision",
    "--batch-size",
    "--workers",
    "-o",
    "--output",
    "--format",
    "--threshold",
    "--fail-on-anomaly",
    "--prompts",
    "--temperature",
    "--quiet",
    "--shard",
    "--engine",
    "--ray-address",
    "--ray-workers",
    "--ray-gpus-per-worker",
]
IMAGE_OPTIONS = ["--out", "--save-maps"]


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def options_in(text: str) -> set[str]:
    """Option names that appear as whole tokens ('--out' is not found in '--output')."""
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)(?![\w-])", text))


@pytest.mark.parametrize("command", ["score", "segment", "fewshot"])
def test_scoring_commands_list_the_shared_options(command):
    found = options_in(help_text(command))
    missing = [o for o in SHARED if o not in found]
    assert not missing, f"{command} --help lacks {missing}"


@pytest.mark.parametrize("command", ["segment", "fewshot"])
def test_image_commands_list_the_image_options(command):
    found = options_in(help_text(command))
    assert set(IMAGE_OPTIONS) <= found
    assert "--save-bank" in found


def test_score_help_has_no_image_options():
    text = help_text("score")
    found = options_in(text)
    assert not set(IMAGE_OPTIONS) & found, text
    assert "--output" in found  # the token check does not hide this one


def test_help_names_the_choices():
    text = help_text("segment")
    for word in ("auto", "cpu", "cuda", "mps", "csv", "jsonl", "fp32"):
        assert re.search(rf"\b{word}\b", text), word


def test_top_level_help_lists_the_commands_and_version():
    text = help_text()
    for command in ("score", "segment", "fewshot", "download"):
        assert re.search(rf"^\W*{command}\s", text, re.MULTILINE), command
    assert "--version" in options_in(text)


def test_short_help_option():
    result = CliRunner().invoke(app, ["score", "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--threshold" in result.stdout


def test_download_help():
    found = options_in(help_text("download"))
    assert {"--model", "--pretrained"} <= found
