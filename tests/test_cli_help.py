"""`--help` of the `winclip` commands lists the options users look for (DESIGN.md)."""

from __future__ import annotations

import re
from pathlib import Path

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


# ----- README's command reference and --help agree -----------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
SCORING = ("score", "segment", "fewshot")


def readme_options() -> dict[str, set[str]]:
    """Options in README's tables, per command ("Options of `x`, `y`:" headed tables,
    and the `download` sentence); a row marked "(segment, fewshot only)" skips score."""
    text = README.read_text()
    found: dict[str, set[str]] = {c: set() for c in (*SCORING, "eval", "download")}
    for block in re.split(r"\nOptions of ", text)[1:]:
        heading, _, body = block.partition("\n")
        commands = re.findall(r"`(\w+)`", heading.split(":")[0])
        if not body.strip().startswith("|"):
            body = heading  # a sentence, not a table
            rows = [body]
        else:
            rows = [r for r in body.split("\n\n")[0].splitlines() if r.startswith("| `")]
        for row in rows:
            first = row.split(" | ")[0] if row.startswith("|") else heading
            names = set(re.findall(r"(?<![\w-])(--?[a-zA-Z0-9][\w-]*)", first))
            for command in commands:
                if command == "score" and "(segment, fewshot only)" in row:
                    continue
                found[command] |= names
    return found


def help_options(command: str) -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    names = {n for p in params for n in (*p.opts, *p.secondary_opts) if n.startswith("-")}
    return names - {"-h", "--help"}


@pytest.mark.parametrize("command", [*SCORING, "eval", "download"])
def test_readme_and_help_list_the_same_options(command):
    readme, helped = readme_options()[command], help_options(command)
    assert helped - readme == set(), f"in `{command} --help`, not in README"
    assert readme - helped == set(), f"in README's `{command}` table, not in its --help"


def test_help_states_the_cost_and_the_exit_codes():
    score = help_text("score")
    assert "one forward pass" in score and "With --ref it runs the windows" in score
    assert "windowed passes" in help_text("segment")
    top = help_text()
    for code in ("0", "1", "2", "3", "4", "75", "130"):
        assert re.search(rf"\b{code}\b", top), code
