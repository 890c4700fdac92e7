"""Helpers every test module may use: where the sample data lives, the CLI run in this
process (CliRunner) or as the installed console script, CSV rows read back, small
datasets built on disk. Fixtures (the tiny model, its options) are in conftest.py."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from winclip_cli.cli import app

SIZE = 40  # generated images are 40x40; the tiny model's input is 48x48
REPO = Path(__file__).resolve().parent.parent


SAMPLES = REPO / "sample_data"


PARTS = SAMPLES / "parts"  # good/, local/, global/: 3 images each


GOOD = SAMPLES / "good"  # 4 reference images


SAMPLE = PARTS / "good" / "textile_0901.jpg"


WINCLIP = Path(sys.executable).with_name("winclip")  # the console script of this venv


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_runner(
    args: Sequence[object],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
) -> Outcome:
    """`winclip ARGS` in this process, through Typer's CliRunner (``stdin``: its input,
    read by `-`; without a descriptor it is never taken for a piped list)."""
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(
            app, [str(a) for a in args], input=stdin, env={"COLUMNS": "200", **(env or {})}
        )
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash inside the command, not an exit code
    return Outcome(result.exit_code, result.stdout, result.stderr)


def process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **(env or {})}


def run_process(
    args: Sequence[object],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Outcome:
    """`winclip ARGS` as a real process: the installed console script."""
    proc = subprocess.run(
        [str(WINCLIP), *(str(a) for a in args)],
        cwd=cwd,
        env=process_env(env),
        stdin=subprocess.DEVNULL,  # not the test runner's: a piped one is a list of paths
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


Runner = Callable[..., Outcome]


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows; every row must have exactly the header's fields."""
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert records, f"no CSV header in {text!r}"
    header, body = records[0], records[1:]
    for record in body:
        assert len(record) == len(header), f"incomplete row {record} for {header}"
    return header, [dict(zip(header, r, strict=True)) for r in body]


COUNT = 120  # images: enough that a run is still going when the signal arrives


WEIRD = 'zz, "quoted"\nname ü.png'  # last in sort order: a torn row would tear it


def env_for(cache: Path) -> dict[str, str]:
    return {**os.environ, "WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}


# The tiny model scores hundreds of images a second: a loaded machine could finish the
# run before the signal lands. This start-up makes each forward pass take as long as a
# small real model's (and changes nothing else), so the run is still going.
SLOW_START = (
    "import time\n"
    "import winclip_cli.model as m\n"
    "predict = m.WinClip.predict\n"
    "def slow(*args, **kwargs):\n"
    "    time.sleep(0.02)\n"
    "    return predict(*args, **kwargs)\n"
    "m.WinClip.predict = slow\n"
    "from winclip_cli.cli import app\n"
    "app()\n"
)


def command(
    dataset: Path, model: str, out: Path, rows: Path, fmt: str, slow: bool = False
) -> list[str]:
    start = ["-c", SLOW_START] if slow else ["-m", "winclip_cli"]
    return [
        sys.executable,
        *start,
        "segment",
        str(dataset),
        "--model",
        model,
        "--out",
        str(out),
        "-o",
        str(rows),
        "--format",
        fmt,
        "--batch-size",
        "1",
    ]


def count_rows(path: Path, fmt: str) -> int:
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if fmt == "jsonl":
        return text.count("\n")
    return max(0, len(list(csv.reader(io.StringIO(text, newline="")))) - 1)


STAGES = ("model loaded: ", "text embeddings for ", "reference bank ", "scoring: ")


# A log's lines start with the time and the run id (progress.Reporter with a run).
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \[[0-9a-f]{6}\] ")


def unstamped(line: str) -> str:
    """A log line without its time and run id."""
    return LOG_STAMP.sub("", line, count=1)


def is_stage(line: str) -> bool:
    """A line a log (stderr not a terminal) gets besides the run's messages: its first
    (version, command, settings) and last (counts, exit code), stages and progress."""
    text = unstamped(line)
    return text.startswith((*STAGES, "winclip ", "finished: "))


def invoke(args: list[str], cache: Path, settle: str | None = "0"):
    """The CLI in this process (no interpreter start-up): exit code and stderr.

    ``settle``: --settle for the run; "0" by default, since test images are seconds old
    (None: the command's default)."""
    env = {"WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    extra = ["--settle", settle] if settle is not None else []
    result = CliRunner().invoke(app, [*args, "--workers", "0", *extra], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def make_mvtec(root: Path, categories=("bottle", "metal_nut"), train=3, good=2, bad=2) -> Path:
    rng = np.random.default_rng(0)
    for cat in categories:
        for i in range(train):
            save(root / cat / "train" / "good" / f"{i:03d}.png", normal_image(rng))
        for i in range(good):
            save(root / cat / "test" / "good" / f"{i:03d}.png", normal_image(rng))
        for i in range(bad):
            image, mask = defect_image(rng)
            save(root / cat / "test" / "crack" / f"{i:03d}.png", image)
            save(root / cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    (root / "readme.txt").write_text("not a category")
    return root


def make_visa(root: Path, objects=("pcb1", "candle"), train=3, good=2, bad=2) -> Path:
    rng = np.random.default_rng(1)
    rows = [["object", "split", "label", "image", "mask"]]
    for obj in objects:
        for i in range(train + good):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save(root / rel, normal_image(rng))
            rows.append([obj, "train" if i < train else "test", "normal", rel, ""])
        for i in range(bad):
            image, mask = defect_image(rng, mask_value=1)  # raw VisA masks are 0/1
            rel, mrel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/{i:03d}.png"
            save(root / rel, image)
            save(root / mrel, mask)
            rows.append([obj, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def normal_image(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(90, 130, size=(1, 1, 3))
    return (base + rng.integers(0, 20, size=(SIZE, SIZE, 3))).astype(np.uint8)


def defect_image(rng: np.random.Generator, mask_value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with a bright square, and its mask (``mask_value`` inside)."""
    image = normal_image(rng)
    y, x = rng.integers(2, SIZE - 14, 2)
    image[y : y + 12, x : x + 12] = 250
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y : y + 12, x : x + 12] = mask_value
    return image, mask


def check_maps_anomalous(args: Sequence[object], tmp_path: Path) -> list[dict[str, str]]:
    """`segment ARGS --maps anomalous` against `segment ARGS --maps all` (the same engine
    and tiles): every image it maps has the same row and overlay bytes, every other image
    the same score, no map and no overlay. Returns the --maps anomalous rows."""
    full_out, part_out = tmp_path / "full", tmp_path / "part"
    full = run_runner(["segment", *args, "--out", full_out])
    assert full.code in (0, 3), full.stderr
    full_rows = read_csv(full.stdout)[1]
    scores = sorted(float(r["score"]) for r in full_rows if r["score"])
    cut = scores[len(scores) // 2]  # about half at or above it
    decided = ["--threshold", f"{cut:.6f}"]
    full = run_runner(["segment", *args, *decided, "--out", full_out])
    part = run_runner(["segment", *args, *decided, "--maps", "anomalous", "--out", part_out])
    assert part.code == full.code, part.stderr
    full_rows, part_rows = read_csv(full.stdout)[1], read_csv(part.stdout)[1]
    assert [r["path"] for r in part_rows] == [r["path"] for r in full_rows]
    mapped = 0
    for mine, theirs in zip(part_rows, full_rows, strict=True):
        assert mine["score"] == theirs["score"] and mine["status"] == theirs["status"]
        if mine["label"] == "anomalous":
            mapped += 1
            same = {k: v.replace(str(part_out), str(full_out)) for k, v in mine.items()}
            assert same == theirs
            assert Path(mine["overlay"]).read_bytes() == Path(theirs["overlay"]).read_bytes()
        else:
            assert mine["map_max"] == "" and mine["overlay"] == ""
    assert 0 < mapped < len(part_rows)
    return part_rows
