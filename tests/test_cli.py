"""End-to-end tests of the `winclip` command line against DESIGN.md (commands, output
contract, exit codes): through the installed console script in a subprocess, and
through Typer's CliRunner in this process, always with the tiny random open_clip model.

A subprocess costs a few seconds of imports, so it is used where it adds something
(signals, the real environment, stdout/stderr of a real process); the rest runs in
CliRunner.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import winclip_cli
from tests.helpers import (
    GOOD,
    PARTS,
    SAMPLE,
    WINCLIP,
    Outcome,
    Runner,
    is_stage,
    process_env,
    read_csv,
    run_process,
    run_runner,
)

SCORE_COLS = ["path", "score", "status", "error"]
SCORE_RE = re.compile(r"^\d\.\d{6}$")  # 6 decimals, enough to rank


def map_cols(label: bool = False, saved: bool = False) -> list[str]:
    """Column order of segment / fewshot rows."""
    return [
        "path",
        "score",
        *(["label"] if label else []),
        "map_max",
        "overlay",
        *(["map"] if saved else []),
        "status",
        "error",
    ]


# ----- running the command line ------------------------------------------------------


@pytest.fixture(params=["subprocess", "clirunner"])
def cli(request) -> Runner:
    """The same test through the console script and through CliRunner."""
    return run_process if request.param == "subprocess" else run_runner


def scores(rows: list[dict[str, str]]) -> list[float]:
    return [float(r["score"]) for r in rows]


def assert_no_traceback(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stdout, outcome.stdout


# ----- test images -------------------------------------------------------------------


def make_image(
    path: Path, size: tuple[int, int], fmt: str = "JPEG", orientation: int | None = None
) -> Path:
    """A real picture (a sample image resized to ``size`` = (width, height))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLE) as src:
        img = src.convert("RGB").resize(size)
    kwargs = {}
    if orientation is not None:
        exif = img.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    img.save(path, format=fmt, **kwargs)
    return path


# relative path -> size as displayed (width, height); walked in this order
TREE_SIZES = {
    "a/x.jpg": (96, 64),
    "b/sub/y.JPG": (50, 70),
    "b/x.jpg": (120, 80),
    "b/x.png": (70, 50),
    "c.Png": (33, 47),
    "d.png/z.jpg": (64, 64),  # a folder named like an image is still a folder
    "rotated.jpg": (80, 120),  # stored 120 x 80 with EXIF orientation 6 (90 degrees)
}


@pytest.fixture()
def tree(tmp_path) -> Path:
    """imgs/ with nested folders, same names in different folders, x.jpg beside x.png,
    upper-case extensions, an EXIF-rotated JPEG and files that are not images."""
    root = tmp_path / "imgs"
    for rel, size in TREE_SIZES.items():
        fmt = "PNG" if rel.lower().endswith(".png") else "JPEG"
        if rel == "rotated.jpg":
            make_image(root / rel, (size[1], size[0]), fmt, orientation=6)
        else:
            make_image(root / rel, size, fmt)
    (root / "notes.txt").write_text("not an image\n")
    (root / "b" / "table.csv").write_text("a,b\n1,2\n")
    (root / "a" / "x.jpg.json").write_text("{}")
    return root


@pytest.fixture()
def broken(tmp_path) -> Path:
    """A folder of two good images and three that can't be read."""
    root = tmp_path / "broken"
    root.mkdir()
    (root / "empty.png").write_bytes(b"")
    data = SAMPLE.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "text.png").write_text("this is a text file\nwith two lines\n")
    make_image(root / "ok1.jpg", (60, 40))
    make_image(root / "ok2.png", (40, 60), "PNG")
    return root


BROKEN = ["empty.png", "ok1.jpg", "ok2.png", "text.png", "truncated.jpg"]
BROKEN_BAD = {"empty.png", "text.png", "truncated.jpg"}


# ----- rows, columns, maps, overlays ---------------------------------------------------


def test_segment_rows_columns_maps_and_overlays(cli, tree, model, tmp_path):
    """Every image in the tree, in sorted order, with overlays and maps at display size."""
    options = ["--out", "out", "--threshold", "0", "--save-maps"]
    result = cli(["segment", "imgs", "--class", "textile", *options, *model], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert_no_traceback(result)
    header, rows = read_csv(result.stdout)
    assert header == map_cols(label=True, saved=True)
    assert [r["path"] for r in rows] == [f"imgs/{rel}" for rel in TREE_SIZES]
    for row in rows:
        assert row["status"] == "ok" and row["error"] == ""
        assert SCORE_RE.match(row["score"]) and 0 <= float(row["score"]) <= 1, row
        assert SCORE_RE.match(row["map_max"]), row
        assert row["label"] == "anomalous"  # threshold 0: everything is at or above
    overlays = [tmp_path / r["overlay"] for r in rows]
    maps = [tmp_path / r["map"] for r in rows]
    assert len(set(overlays)) == len(rows) and len(set(maps)) == len(rows)
    for rel, overlay, saved in zip(TREE_SIZES, overlays, maps, strict=True):
        width, height = TREE_SIZES[rel]
        assert overlay.suffix == ".png" and (tmp_path / "out") in overlay.parents
        with Image.open(overlay) as img:
            assert img.format == "PNG"
            assert img.size == (width, height), f"overlay of {rel}"
        array = np.load(saved)
        assert array.shape == (height, width), f"map of {rel}"
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
    files = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*"))
    files = [f for f in files if (tmp_path / "out" / f).is_file()]
    assert len([f for f in files if f.suffix == ".png"]) == len(rows)
    assert len([f for f in files if f.suffix == ".npy"]) == len(rows)
    assert len(files) == 2 * len(rows), f"stray files (temporaries?) in out/: {files}"
    # progress and the summary go to stderr, never a row
    assert result.stderr.strip()
    assert "path,score" not in result.stderr and "imgs/" not in result.stderr


def test_exif_rotated_overlay_has_displayed_size(tmp_path, model):
    make_image(tmp_path / "phone.jpg", (120, 80), orientation=6)
    with Image.open(tmp_path / "phone.jpg") as img:
        assert img.size == (120, 80)  # stored size; displayed is 80 x 120
        assert ImageOps.exif_transpose(img).size == (80, 120)
    result = run_runner(
        ["segment", tmp_path / "phone.jpg", "--out", tmp_path / "out", "--save-maps", *model]
    )
    assert result.code == 0, result.stderr
    _, rows = read_csv(result.stdout)
    with Image.open(rows[0]["overlay"]) as overlay:
        assert overlay.size == (80, 120)
    assert np.load(rows[0]["map"]).shape == (120, 80)


def test_same_names_in_different_folders_do_not_collide(tmp_path, model):
    a = make_image(tmp_path / "a" / "x.jpg", (40, 30))
    b = make_image(tmp_path / "b" / "x.jpg", (30, 40))
    png = make_image(tmp_path / "a" / "x.png", (50, 20), "PNG")
    out = tmp_path / "out"
    result = run_runner(["segment", a, b, png, "--out", out, *model])
    assert result.code == 0, result.stderr
    _, rows = read_csv(result.stdout)
    assert [r["path"] for r in rows] == [str(a), str(b), str(png)]
    overlays = [Path(r["overlay"]) for r in rows]
    assert len(set(overlays)) == 3
    sizes = []
    for overlay in overlays:
        with Image.open(overlay) as img:
            sizes.append(img.size)
    assert sizes == [(40, 30), (30, 40), (50, 20)]  # each overlay belongs to its own input
    assert len(list(out.rglob("*.png"))) == 3


@pytest.mark.parametrize(
    ("command", "extra", "cols"),
    [
        ("score", [], SCORE_COLS),
        ("score", ["--threshold", "0.5"], ["path", "score", "label", "status", "error"]),
        ("segment", [], map_cols()),
        ("segment", ["--save-maps"], map_cols(saved=True)),
        ("fewshot", ["--ref", str(GOOD), "--threshold", "0.5"], map_cols(label=True)),
    ],
)
def test_column_order_and_row_count(command, extra, cols, model, tmp_path):
    result = run_runner(
        [command, PARTS, "--class", "textile", *extra, *model]
        + (["--out", tmp_path / "out"] if command != "score" else [])
    )
    assert result.code == 0, result.stderr
    header, rows = read_csv(result.stdout)
    assert header == cols
    expected = sorted(str(p) for p in PARTS.rglob("*.jpg"))
    assert [r["path"] for r in rows] == expected
    assert len(rows) == 9
    if "label" in cols:
        for row in rows:
            assert row["label"] == ("anomalous" if float(row["score"]) >= 0.5 else "normal")


def test_threshold_labels_at_or_above(model, tmp_path):
    """A row whose printed score equals --threshold is anomalous; the label agrees with the
    printed score for every row."""
    base = run_runner(["score", PARTS, "--class", "textile", *model])
    assert base.code == 0, base.stderr
    printed = sorted({r["score"] for r in read_csv(base.stdout)[1]})
    assert len(printed) >= 3
    for threshold in printed[1:-1]:
        result = run_runner(
            ["score", PARTS, "--class", "textile", "--threshold", threshold, *model]
        )
        assert result.code == 0, result.stderr
        _, rows = read_csv(result.stdout)
        for row in rows:
            expected = "anomalous" if float(row["score"]) >= float(threshold) else "normal"
            assert row["label"] == expected, (threshold, row)
        assert "anomalous" in {r["label"] for r in rows}
        assert "normal" in {r["label"] for r in rows}


# ----- inputs ------------------------------------------------------------------------


def test_default_path_is_the_current_folder_and_out_is_not_walked(tmp_path, model):
    """`winclip segment` with no PATH, twice in the same folder: the second run does not
    score the first run's overlays (winclip-out/)."""
    make_image(tmp_path / "b.jpg", (40, 40))
    make_image(tmp_path / "a.PNG", (30, 50), "PNG")
    make_image(tmp_path / "sub" / "c.jpeg", (50, 30))
    (tmp_path / "readme.md").write_text("# hi\n")
    first = run_process(["segment", *model], cwd=tmp_path)
    assert first.code == 0, first.stderr
    _, rows = read_csv(first.stdout)
    assert [r["path"] for r in rows] == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert len(list((tmp_path / "winclip-out").rglob("*.png"))) == 3
    second = run_runner(["segment", *model], cwd=tmp_path)
    assert second.code == 0, second.stderr
    assert [r["path"] for r in read_csv(second.stdout)[1]] == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert len(list((tmp_path / "winclip-out").rglob("*.png"))) == 3


def test_score_does_not_walk_the_overlays_of_an_earlier_segment_run(tmp_path, model):
    """DESIGN: 'The walk never picks up the tool's own output folder'."""
    make_image(tmp_path / "a.jpg", (40, 40))
    make_image(tmp_path / "b.jpg", (40, 40))
    assert run_runner(["segment", *model], cwd=tmp_path).code == 0
    assert len(list((tmp_path / "winclip-out").rglob("*.png"))) == 2
    result = run_runner(["score", *model], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert [r["path"] for r in read_csv(result.stdout)[1]] == ["a.jpg", "b.jpg"]


def test_out_folder_inside_the_inputs_is_not_walked(tree, model, tmp_path):
    args = ["segment", "imgs", "--out", "imgs/overlays", *model]
    first = run_runner(args, cwd=tmp_path)
    second = run_runner(args, cwd=tmp_path)
    assert first.code == second.code == 0, second.stderr
    assert first.stdout.count("\n") == second.stdout.count("\n") == len(TREE_SIZES) + 1
    assert "overlays" not in "".join(r["path"] for r in read_csv(second.stdout)[1])


def test_ref_folder_is_not_walked(tmp_path, model):
    shutil.copytree(GOOD, tmp_path / "good")
    make_image(tmp_path / "test" / "t1.jpg", (40, 40))
    make_image(tmp_path / "test" / "t2.jpg", (40, 40))
    result = run_runner(["fewshot", "--ref", "good", "--k", "2", *model], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert [r["path"] for r in read_csv(result.stdout)[1]] == ["test/t1.jpg", "test/t2.jpg"]


def test_each_input_once_in_input_order(model):
    """A file also reached through its folder, or a folder given twice, is scored once."""
    single = PARTS / "local" / "textile_0002.jpg"
    result = run_runner(["score", PARTS / "local", single, PARTS / "good", PARTS / "local", *model])
    assert result.code == 0, result.stderr
    paths = [r["path"] for r in read_csv(result.stdout)[1]]
    local = sorted(str(p) for p in (PARTS / "local").glob("*.jpg"))
    good = sorted(str(p) for p in (PARTS / "good").glob("*.jpg"))
    assert paths == local + good


def test_unreadable_inputs_get_error_rows_and_exit_3(cli, broken, model, tmp_path):
    result = cli(["segment", broken, "--out", tmp_path / "out", *model])
    assert result.code == 3, result.stderr
    assert_no_traceback(result)
    assert result.stdout.count("\n") == len(BROKEN) + 1  # one line per row: errors too
    header, rows = read_csv(result.stdout)
    assert header == map_cols()
    assert [Path(r["path"]).name for r in rows] == BROKEN
    for row in rows:
        if Path(row["path"]).name in BROKEN_BAD:
            assert row["status"] == "error", row
            assert row["error"] and "\n" not in row["error"], row
            assert row["score"] == row["map_max"] == row["overlay"] == "", row
        else:
            assert row["status"] == "ok" and row["error"] == "", row
            assert SCORE_RE.match(row["score"]), row
            assert Path(row["overlay"]).is_file()
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


def test_jsonl_rows_carry_the_csv_fields(broken, model, tmp_path):
    csv_run = run_runner(
        ["segment", broken, "--out", tmp_path / "o1", "--threshold", "0.3", *model]
    )
    jsonl = ["--format", "jsonl"]
    json_run = run_runner(
        ["segment", broken, "--out", tmp_path / "o2", "--threshold", "0.3", *jsonl, *model]
    )
    assert csv_run.code == json_run.code == 3
    header, rows = read_csv(csv_run.stdout)
    lines = json_run.stdout.splitlines()
    assert len(lines) == len(rows) == len(BROKEN)
    for line, row in zip(lines, rows, strict=True):
        record = json.loads(line)
        assert list(record) == header
        assert record["path"] == row["path"]
        assert record["status"] == row["status"] and record["label"] == row["label"]
        if row["status"] == "error":
            assert record["score"] is None and record["map_max"] is None
            assert record["error"] == row["error"]
        else:
            assert isinstance(record["score"], float)
            assert f"{record['score']:.6f}" == row["score"]
            assert isinstance(record["map_max"], float)


def test_jsonl_to_file(model, tmp_path):
    target = tmp_path / "rows.jsonl"
    result = run_runner(["score", PARTS, "--format", "jsonl", "-o", target, *model])
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 9
    assert all(list(r) == SCORE_COLS for r in records)
    assert all(isinstance(r["score"], float) and r["status"] == "ok" for r in records)


# ----- exit codes ----------------------------------------------------------------------


def test_fail_on_anomaly(model):
    hit = run_runner(["score", PARTS, "--threshold", "0", "--fail-on-anomaly", *model])
    assert hit.code == 1, hit.stderr
    _, rows = read_csv(hit.stdout)
    assert len(rows) == 9 and {r["label"] for r in rows} == {"anomalous"}
    miss = run_runner(["score", PARTS, "--threshold", "1", "--fail-on-anomaly", *model])
    assert miss.code == 0, miss.stderr
    assert {r["label"] for r in read_csv(miss.stdout)[1]} == {"normal"}


USAGE_CASES = {  # "{tmp}" is the test's tmp_path, with empty/ and texts/ (no images)
    "unknown option": ["score", PARTS, "--no-such-option"],
    "unknown format": ["score", PARTS, "--format", "xml"],
    "not a number": ["score", PARTS, "--batch-size", "zero"],
    "batch size 0": ["score", PARTS, "--batch-size", "0"],
    "unknown device": ["score", PARTS, "--device", "tpu"],
    "score has no --out": ["score", PARTS, "--out", "{tmp}/out"],
    "score has no --save-maps": ["score", PARTS, "--save-maps"],
    "missing file": ["score", "{tmp}/missing.jpg"],
    "missing folder": ["score", PARTS, "{tmp}/missing"],
    "empty folder": ["score", "{tmp}/empty"],
    "no images in folder": ["score", "{tmp}/texts"],
    "fail-on-anomaly without threshold": ["score", PARTS, "--fail-on-anomaly"],
    "fewshot without ref": ["fewshot", PARTS],
    "fewshot k > refs": ["fewshot", PARTS, "--ref", GOOD, "--k", "5"],
    "segment k > refs": ["segment", PARTS, "--ref", GOOD, "--k", "5"],
    "k 0": ["score", PARTS, "--ref", GOOD, "--k", "0"],
    "missing ref": ["fewshot", PARTS, "--ref", "{tmp}/no-such-ref"],
    # A missing folder is made (as --out's is); one under a file cannot be.
    "output folder under a file": ["score", PARTS, "-o", "{tmp}/texts/b.jpg.bak/x/rows.csv"],
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors_exit_2(case, model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "texts" / "b.jpg.bak").write_text("x")
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in USAGE_CASES[case]]
    result = run_runner([*args, *model])
    assert result.code == 2, (args, result.stderr)
    assert result.stdout == "", args  # nothing scored, no header
    assert result.stderr.strip(), args
    assert_no_traceback(result)
    assert not (tmp_path / "nowhere").exists()


def test_usage_error_exit_2_from_the_console_script(model, tmp_path):
    result = run_process(["fewshot", PARTS, *model], cwd=tmp_path)
    assert result.code == 2
    assert result.stdout == ""
    assert "--ref" in result.stderr
    assert_no_traceback(result)


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable-hub"])
def test_default_model_offline_and_not_cached_exits_4_fast(offline, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "WINCLIP_CACHE_DIR": str(tmp_path / "c")}
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # no flag, but nothing listens where the hub should be
        env["HF_HUB_OFFLINE"] = "0"
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    (tmp_path / "hf-home").mkdir()
    proc = subprocess.run(
        [str(WINCLIP), "score", str(SAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=40,  # the hub client alone retries for ~50 s
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == ""
    assert "--weights" in proc.stderr
    assert "winclip download" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "hf-home").rglob("*.bin"))


def test_unloadable_weights_exit_4(tiny, model, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    cases = [
        ["--weights", garbage],  # default model, a file that is no checkpoint
        ["--model", tiny["local_dir"], "--weights", garbage],
        ["--weights", tiny["weights"]],  # a real checkpoint of another model
        ["--model", "no-such-model-name"],
    ]
    for case in cases:
        result = run_runner(["score", SAMPLE, "--workers", "0", *case])
        assert result.code == 4, (case, result.stderr)
        assert result.stdout == "", case
        assert result.stderr.strip(), case
        assert_no_traceback(result)


def test_weights_that_give_nan_make_error_rows_not_a_crash(tiny, tmp_path):
    """Damaged weights (NaN) load, but give no number: every row says so, and no NaN
    reaches a label, a JSON line or an overlay's colours."""
    import torch

    folder = tmp_path / "nan-model"
    shutil.copytree(tiny["local_dir"].removeprefix("local-dir:"), folder)
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    args = ["segment", PARTS / "good", "--model", f"local-dir:{folder}", "--workers", "0"]
    result = run_runner([*args, "--out", tmp_path / "out", "--format", "jsonl"])
    assert result.code == 3, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(r["status"] == "error" for r in rows)
    assert all("no finite score" in r["error"] and r["score"] is None for r in rows)
    assert_no_traceback(result)


def test_a_damaged_logit_scale_exits_4_and_temperature_gets_round_it(tiny, tmp_path):
    import torch

    folder = tmp_path / "bad-scale"
    shutil.copytree(tiny["local_dir"].removeprefix("local-dir:"), folder)
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    state["logit_scale"] = torch.tensor(float("nan"))
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    args = ["score", PARTS / "good", "--model", f"local-dir:{folder}", "--workers", "0"]
    result = run_runner(args)
    assert result.code == 4 and "--temperature" in result.stderr, result.stderr
    assert_no_traceback(result)
    assert run_runner([*args, "--temperature", "0.07"]).code == 0


def _wait_for_rows(path: Path, count: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().count("\n") - 1 if path.exists() else 0
        if lines >= count:
            return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no rows written in time"
        time.sleep(0.01)


INTERRUPTIONS = {  # how the run is stopped: signal, exit code, whole process group, workers
    "SIGINT": (signal.SIGINT, 130, False, "0"),
    "SIGTERM": (signal.SIGTERM, 143, False, "0"),
    # a terminal's Ctrl-C, or a job runner's stop, reaches the decoding workers too
    "SIGINT to the group, with workers": (signal.SIGINT, 130, True, "2"),
    "SIGTERM to the group, with workers": (signal.SIGTERM, 143, True, "2"),
}


@pytest.mark.parametrize("how", list(INTERRUPTIONS))
def test_interrupted_run_leaves_complete_rows(how, model, tmp_path):
    signum, code, group, workers = INTERRUPTIONS[how]
    src = tmp_path / "src"
    first = make_image(src / "img_000.jpg", (1000, 1000))
    total = 60
    for i in range(1, total):
        shutil.copy(first, src / f"img_{i:03d}.jpg")
    target, out = tmp_path / "rows.csv", tmp_path / "out"
    args = ["segment", src, "--out", out, "-o", target, "--batch-size", "1", *model]
    proc = subprocess.Popen(
        [str(WINCLIP), *(str(a) for a in args), "--workers", workers],
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    try:
        _wait_for_rows(target, 2, proc, timeout=120)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert stdout == ""
    assert "interrupted" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    text = target.read_text()
    assert text.endswith("\n")
    header, rows = read_csv(text)
    assert header == map_cols()
    assert 2 <= len(rows) < total
    assert [r["path"] for r in rows] == [str(src / f"img_{i:03d}.jpg") for i in range(len(rows))]
    for row in rows:
        assert row["status"] == "ok" and SCORE_RE.match(row["score"]), row
        with Image.open(row["overlay"]) as img:
            img.verify()
    for path in out.rglob("*"):  # no half-written image under its final (or any) name
        assert path.suffix == ".png" and not path.name.startswith("."), path
        with Image.open(path) as img:
            img.load()
            assert img.size == (1000, 1000)


# ----- reference banks -----------------------------------------------------------------


def test_saved_bank_gives_the_same_scores(model, tmp_path):
    bank = tmp_path / "textile.bank"
    common = [PARTS, "--class", "textile", *model]
    built = run_runner(["fewshot", *common, "--ref", GOOD, "--save-bank", bank, "--out", tmp_path])
    assert built.code == 0, built.stderr
    assert bank.is_file()
    reused = run_runner(["fewshot", *common, "--ref", bank, "--out", tmp_path / "o2"])
    assert reused.code == 0, reused.stderr
    _, rows_built = read_csv(built.stdout)
    _, rows_reused = read_csv(reused.stdout)
    assert len(rows_built) == 9
    assert [r["score"] for r in rows_built] == [r["score"] for r in rows_reused]
    assert [r["map_max"] for r in rows_built] == [r["map_max"] for r in rows_reused]
    # the bank is a WinCLIP+ bank: different from zero-shot
    zero = run_runner(["score", *common])
    assert scores(read_csv(zero.stdout)[1]) != scores(rows_built)
    # score --ref BANK: the same WinCLIP+ image score, no images
    scored = run_runner(["score", *common, "--ref", bank])
    assert scored.code == 0, scored.stderr
    header, rows_scored = read_csv(scored.stdout)
    assert header == SCORE_COLS
    assert scores(rows_scored) == pytest.approx(scores(rows_built), abs=2e-6)


def test_corrupt_bank_exits_2(model, tmp_path):
    garbage = tmp_path / "garbage.bank"
    garbage.write_bytes(b"this is no reference bank\n" * 10)
    good_bank = tmp_path / "good.bank"
    assert run_runner(["score", SAMPLE, "--ref", GOOD, "--save-bank", good_bank, *model]).code == 0
    torn = tmp_path / "torn.bank"
    torn.write_bytes(good_bank.read_bytes()[: good_bank.stat().st_size // 2])
    for bank in (garbage, torn):
        result = run_runner(["fewshot", SAMPLE, "--ref", bank, "--out", tmp_path / "o", *model])
        assert result.code == 2, (bank, result.stderr)
        assert result.stdout == ""
        assert_no_traceback(result)


def test_seed_picks_a_repeatable_random_subset(model):
    def run(*extra: object) -> list[float]:
        result = run_runner(["score", PARTS, "--ref", GOOD, "--k", "1", *extra, *model])
        assert result.code == 0, result.stderr
        return scores(read_csv(result.stdout)[1])

    first_k = run()
    seeded = {seed: run("--seed", seed) for seed in range(4)}
    assert run("--seed", 2) == seeded[2]
    # with 4 references and K = 1, some seed picks another image than the first
    assert any(s != first_k for s in seeded.values())
    assert len({tuple(s) for s in seeded.values()}) >= 2


# ----- stdout / stderr -------------------------------------------------------------------


def test_output_file_keeps_stdout_clean_and_quiet_keeps_stderr_empty(model, tmp_path):
    target = tmp_path / "rows.csv"
    result = run_process(["score", PARTS, "-o", target, "--quiet", *model], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""
    header, rows = read_csv(target.read_text())
    assert header == SCORE_COLS and len(rows) == 9


def test_output_dash_is_stdout_and_messages_go_to_stderr(model, tmp_path):
    result = run_runner(["score", PARTS, "-o", "-", *model])
    assert result.code == 0
    assert len(read_csv(result.stdout)[1]) == 9
    assert result.stderr.strip()  # the summary
    assert "textile_" not in result.stderr and "path,score" not in result.stderr
    quiet = run_runner(["score", PARTS, "-q", *model])
    assert quiet.code == 0 and quiet.stderr == ""
    assert quiet.stdout == result.stdout


# ----- standard streams that are closed or full ---------------------------------------


def run_with_streams(args: Sequence[object], stdout: object, stderr: object) -> tuple[int, bytes]:
    """`winclip ARGS` with the given stdout / stderr: a file object, a path, or "closed"
    (the descriptor is closed, as `>&-` does). Returns the exit code and stderr if piped."""

    closed = [fd for fd, how in ((1, stdout), (2, stderr)) if how == "closed"]

    def close_them() -> None:
        for fd in closed:
            os.close(fd)

    with contextlib.ExitStack() as files:

        def target(how: object) -> object:
            if how == "closed":
                return subprocess.DEVNULL  # then closed in the child, before it starts
            if isinstance(how, (str, Path)):
                return files.enter_context(open(how, "wb"))
            return how

        proc = subprocess.run(
            [str(WINCLIP), *(str(a) for a in args)],
            stdout=target(stdout),
            stderr=target(stderr),
            env=process_env(),
            preexec_fn=close_them,
            timeout=120,
        )
    return proc.returncode, proc.stderr or b""


NO_DEV_FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux /dev/full")


@NO_DEV_FULL
def test_rows_that_cannot_be_written_stop_the_run_with_exit_2(model):
    """stdout on a full disk (/dev/full): one line saying so, exit 2 (unusable output),
    not an 'internal error', and no second complaint when Python exits."""
    code, stderr = run_with_streams(["score", PARTS, *model], "/dev/full", subprocess.PIPE)
    message = stderr.decode()
    assert code == 2, message
    lines = [line for line in message.splitlines() if not is_stage(line)]
    assert len(lines) == 1 and "cannot write rows to stdout" in message
    assert "No space left" in message and "Exception ignored" not in message


def test_closed_stdout_is_a_usage_error(model, tmp_path):
    code, stderr = run_with_streams(["score", PARTS, *model], "closed", subprocess.PIPE)
    assert code == 2 and b"stdout is closed" in stderr, stderr
    rows = tmp_path / "rows.csv"
    code, stderr = run_with_streams(["score", PARTS, *model, "-o", rows], "closed", subprocess.PIPE)
    assert code == 0, stderr
    assert len(read_csv(rows.read_text())[1]) == 9


@NO_DEV_FULL
@pytest.mark.parametrize("stderr", ["closed", "/dev/full"])
def test_messages_that_cannot_be_shown_change_nothing(model, tmp_path, stderr):
    """With stderr closed (`2>&-`) or full, the rows are the same, nothing but rows
    reaches stdout or the rows file, and the exit code still tells the outcome."""
    expected = run_runner(["score", PARTS, *model]).stdout
    out = tmp_path / "stdout.csv"
    code, _ = run_with_streams(["score", PARTS, *model], out, stderr)
    assert code == 0 and out.read_text() == expected
    rows = tmp_path / "rows.csv"
    code, _ = run_with_streams(["score", PARTS, *model, "-o", rows], out, stderr)
    assert code == 0 and rows.read_text() == expected and out.read_text() == ""
    code, _ = run_with_streams(["score", tmp_path / "missing", *model], out, stderr)
    assert code == 2 and out.read_text() == ""


# ----- version, download -----------------------------------------------------------------


def test_version():
    for command in ([str(WINCLIP)], [sys.executable, "-m", "winclip_cli"]):
        proc = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=60, env=process_env()
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"winclip {winclip_cli.__version__}"
    assert run_runner(["--version"]).stdout.strip() == f"winclip {winclip_cli.__version__}"


def test_download_prints_the_path(monkeypatch, tmp_path):
    import winclip_cli.backbone as backbone

    calls = []

    def fake(model, pretrained, cache_dir=None, allow_download=True, downloading=False):
        calls.append((model, pretrained))
        return tmp_path / "weights.bin"

    monkeypatch.setattr(backbone, "fetch_pretrained", fake)
    result = run_runner(["download"])
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "weights.bin")
    result = run_runner(["download", "--model", "ViT-B-32", "--pretrained", "openai"])
    assert result.code == 0
    assert calls == [("ViT-B-16-plus-240", "laion400m_e31"), ("ViT-B-32", "openai")]


def test_download_of_a_local_folder_is_a_usage_error():
    result = run_runner(["download", "--model", "local-dir:/some/folder"])
    assert result.code == 2 and "nothing to download" in result.stderr
    assert_no_traceback(result)


def test_download_failure_exits_4(monkeypatch):
    import winclip_cli.backbone as backbone

    def fake(model, pretrained, cache_dir=None, allow_download=True, downloading=False):
        raise backbone.WeightsUnavailableError("the model hub cannot be reached")

    monkeypatch.setattr(backbone, "fetch_pretrained", fake)
    result = run_runner(["download"])
    assert result.code == 4
    assert result.stdout == ""
    assert "the model hub cannot be reached" in result.stderr
    assert_no_traceback(result)
