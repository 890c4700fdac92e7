"""The run manifest: --resume refuses other settings, scores error rows and changed files
again (one row per input, in input order, crash-safe), leaves files still being written
for the next run, and a CI log shows each stage (issue 14)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import env_for, invoke, is_stage
from tests.tiny_model import make_tiny_model
from winclip_cli.manifest import manifest_path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> dict:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-manifest"))


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> str:
    return str(tiny_model["local_dir"])


def picture(path: Path, seed: int, size: tuple[int, int] = (24, 32)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def truncated(path: Path, seed: int) -> None:
    """A PNG cut in the middle, as a camera still writing it leaves it."""
    picture(path, seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def folder(tmp_path) -> Path:
    images = tmp_path / "in"
    images.mkdir()
    for i in range(4):
        picture(images / f"m{i}.png", i)
    return images


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def old(path: Path) -> None:
    """Set a file's modification time well in the past: settled."""
    past = time.time() - 60
    os.utime(path, (past, past))


def settle_all(folder: Path) -> None:
    for path in folder.iterdir():
        old(path)


def score(folder: Path, model_dir: str, rows: Path, *extra: str) -> list[str]:
    return ["score", str(folder), "--model", model_dir, "-o", str(rows), *extra]


# ----- the manifest -----------------------------------------------------------------------


def test_a_run_with_o_writes_a_manifest_of_settings_and_inputs(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(score(folder, model_dir, rows, "--threshold", "0.52"), tmp_path)
    assert code == 0, stderr
    manifest = json.loads(manifest_path(rows).read_text())
    assert manifest_path(rows).name == "rows.csv.manifest.json"
    settings = manifest["settings"]
    assert settings["--threshold"] == 0.52 and settings["--class"] == "object"
    assert settings["command"] == "score" and settings["--format"] == "csv"
    assert manifest["weights"] and manifest["winclip"]
    assert len(manifest["inputs"]) == 4
    for identity in manifest["inputs"].values():
        assert set(identity) == {"size", "mtime_ns", "sha256"} and len(identity["sha256"]) == 64


@pytest.mark.parametrize(
    ("first", "then", "named"),
    [
        (["--threshold", "0.52"], ["--threshold", "0.6"], "--threshold: 0.52 there, 0.6 now"),
        ([], ["--threshold", "0.6"], "--threshold: none there, 0.6 now"),
        ([], ["--class", "screw"], "--class: object there, screw now"),
        ([], ["--prompts", "clip-ac"], "--prompts"),
        ([], ["--temperature", "0.05"], "--temperature: none there, 0.05 now"),
        ([], ["--format", "jsonl"], "--format: csv there, jsonl now"),
        ([], ["--ref", "REF", "--k", "2"], "--k: none there, 2 now"),
        (["--ref", "REF", "--k", "1"], ["--ref", "REF", "--k", "2"], "--k: 1 there, 2 now"),
    ],
    ids=["threshold", "no-threshold", "class", "prompts", "temperature", "format", "ref", "k"],
)
def test_resume_with_other_settings_is_refused(folder, model_dir, tmp_path, first, then, named):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        picture(refs / f"r{i}.png", 10 + i)
    first = [str(refs) if a == "REF" else a for a in first]
    then = [str(refs) if a == "REF" else a for a in then]
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(score(folder, model_dir, rows, *first), tmp_path)
    assert code == 0, stderr
    before = rows.read_bytes()
    code, stderr = invoke(score(folder, model_dir, rows, *then, "--resume"), tmp_path)
    assert code == 2 and named in stderr, stderr
    assert len([line for line in stderr.splitlines() if not is_stage(line)]) == 1, stderr
    assert rows.read_bytes() == before


def test_resume_as_another_command_or_model_is_refused(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 0, stderr
    other = make_tiny_model(tmp_path / "other-model", seed=1)["local_dir"]
    code, stderr = invoke(score(folder, str(other), rows, "--resume"), tmp_path)
    assert code == 2 and "another --model" in stderr, stderr
    args = ["segment", str(folder), "--model", model_dir, "-o", str(rows), "--resume"]
    code, stderr = invoke([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert code == 2 and "another command: score there, segment now" in stderr, stderr


def test_resume_with_other_weights_is_refused_once_they_are_loaded(folder, tiny_model, tmp_path):
    """The fingerprint is known only after loading: checked then, before any row."""
    other = make_tiny_model(tmp_path / "other-weights", seed=3)["weights"]
    rows = tmp_path / "rows.csv"
    args = ["score", str(folder), "--model", tiny_model["name"], "-o", str(rows)]
    code, stderr = invoke([*args, "--weights", str(tiny_model["weights"])], tmp_path)
    assert code == 0, stderr
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:3]))  # two rows
    before = rows.read_bytes()
    code, stderr = invoke([*args, "--weights", str(other), "--resume"], tmp_path)
    assert code == 2 and "other weights" in stderr, stderr
    assert rows.read_bytes() == before


def test_a_rows_file_without_manifest_resumes_as_before_with_one_warning(
    folder, model_dir, tmp_path
):
    rows = tmp_path / "rows.csv"
    truncated(folder / "m1.png", 1)
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 3, stderr
    manifest_path(rows).unlink()  # as an older version left it
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:3]))
    picture(folder / "m1.png", 1)  # fixed: but an older file's error rows stay
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 3, stderr
    assert stderr.count("no run manifest") == 1
    assert [r["status"] for r in csv_rows(rows)] == ["ok", "error", "ok", "ok"]


# ----- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["a_first.png", "z_last.png"])
def test_resume_after_a_fix_replaces_the_error_row(folder, model_dir, tmp_path, broken):
    rows = tmp_path / "rows.csv"
    truncated(folder / broken, 7)
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 3, stderr
    first = csv_rows(rows)
    assert [r["status"] for r in first].count("error") == 1
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 3, stderr  # still broken: scored again, still an error, still one row
    assert csv_rows(rows) == first
    picture(folder / broken, 7)  # the camera finished the file
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 0, stderr
    final = csv_rows(rows)
    assert [r["path"] for r in final] == [r["path"] for r in first], "one row, in input order"
    assert all(r["status"] == "ok" for r in final)
    kept = [r for r in first if not r["path"].endswith(broken)]
    assert [r for r in final if not r["path"].endswith(broken)] == kept
    assert not list(tmp_path.glob(".rows.csv*")), "no replacement left behind"


def test_no_retry_errors_keeps_error_rows(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    (folder / "bad.png").write_bytes(b"not a picture")
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 3, stderr
    before = rows.read_bytes()
    code, stderr = invoke(score(folder, model_dir, rows, "--resume", "--no-retry-errors"), tmp_path)
    assert code == 3 and "0 to go" in stderr, stderr
    assert rows.read_bytes() == before


def test_a_rewritten_file_is_scored_again_a_touched_one_is_not(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 0, stderr
    first = csv_rows(rows)
    os.utime(folder / "m0.png")  # touched: same bytes, new mtime
    picture(folder / "m2.png", 99)  # rewritten under the same name
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 0, stderr
    assert "1 changed file(s)" in stderr, stderr
    final = csv_rows(rows)
    assert [r["path"] for r in final] == [r["path"] for r in first]
    assert final[0] == first[0] and final[1] == first[1] and final[3] == first[3]
    assert final[2]["score"] != first[2]["score"]
    # The manifest now knows both new identities: nothing more to do.
    before = rows.read_bytes()
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 0 and "0 to go" in stderr, stderr
    assert rows.read_bytes() == before


def test_a_new_input_before_kept_rows_goes_in_input_order(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    settle_all(folder)
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 0, stderr
    picture(folder / "a_new.png", 5)
    old(folder / "a_new.png")
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 0, stderr
    names = [Path(r["path"]).name for r in csv_rows(rows)]
    assert names == ["a_new.png", "m0.png", "m1.png", "m2.png", "m3.png"]


# A SIGKILL in the middle of a replacement: the slow start makes the run last, and
# "at-rename" kills the process just as it would rename the new file over the old one.
KILL_START = """
import os, signal, sys, time
import winclip_cli.model as m
predict = m.WinClip.predict
def slow(*args, **kwargs):
    time.sleep(0.05)
    return predict(*args, **kwargs)
m.WinClip.predict = slow
if os.environ.get("KILL_AT_RENAME"):
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if str(src).endswith(".winclip-new"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from winclip_cli.cli import app
app()
"""


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("moment", ["mid-rows", "at-rename"])
def test_a_crash_while_replacing_rows_loses_nothing(model_dir, tmp_path, moment):
    images = tmp_path / "in"
    images.mkdir()
    count = 30
    for i in range(count):
        truncated(images / f"p{i:02d}.png", i)
    settle_all(images)
    rows = tmp_path / "rows.csv"
    base = ["score", str(images), "--model", model_dir, "-o", str(rows), "--batch-size", "1"]
    code, stderr = invoke(base, tmp_path)
    assert code == 3, stderr
    errors = rows.read_bytes()
    for i in range(count):  # the camera finished every file: all to be scored again
        picture(images / f"p{i:02d}.png", i)
    settle_all(images)
    env = {**env_for(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    if moment == "at-rename":
        env["KILL_AT_RENAME"] = "1"
    args = [sys.executable, "-c", KILL_START, *base, "--resume", "--workers", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    new = rows.with_name(".rows.csv.winclip-new")
    try:
        if moment == "mid-rows":
            deadline = time.monotonic() + 120
            while count_lines(new) < 8:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == -signal.SIGKILL
    assert rows.read_bytes() == errors, "the file at the path is the old one, whole"
    code, stderr = invoke([*base, "--resume"], tmp_path)
    assert code == 0, stderr
    final = csv_rows(rows)
    assert [Path(r["path"]).name for r in final] == [f"p{i:02d}.png" for i in range(count)]
    assert all(r["status"] == "ok" for r in final)
    assert not new.exists()


# ----- files still being written ----------------------------------------------------------


def test_a_file_still_growing_is_left_for_the_next_run(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    settle_all(folder)
    picture(tmp_path / "whole.png", 42, size=(60, 80))
    data = (tmp_path / "whole.png").read_bytes()
    growing = folder / "m9_growing.png"
    growing.write_bytes(data[:100])
    stop = threading.Event()

    def camera() -> None:  # appends a piece every 50 ms while the run starts
        written = 100
        while not stop.is_set() and written < len(data):
            time.sleep(0.05)
            with open(growing, "ab") as handle:
                handle.write(data[written : written + 20])
            written += 20

    writer = threading.Thread(target=camera)
    writer.start()
    try:
        time.sleep(0.2)
        code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path, settle=None)
    finally:
        stop.set()
        writer.join()
    assert code == 75, stderr
    assert "1 file(s) modified within the last 2 s" in stderr and "m9_growing.png" in stderr
    assert [Path(r["path"]).name for r in csv_rows(rows)] == [f"m{i}.png" for i in range(4)]
    growing.write_bytes(data)  # finished
    old(growing)
    code, stderr = invoke(score(folder, model_dir, rows, "--resume"), tmp_path)
    assert code == 0, stderr
    final = csv_rows(rows)
    assert Path(final[-1]["path"]).name == "m9_growing.png" and final[-1]["status"] == "ok"


def test_a_plain_run_and_settle_0_read_every_file(folder, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    picture(folder / "fresh.png", 8)  # just copied
    code, stderr = invoke(score(folder, model_dir, rows), tmp_path)
    assert code == 0, stderr
    assert len(csv_rows(rows)) == 5
    rows.unlink()
    code, stderr = invoke(score(folder, model_dir, rows, "--resume", "--settle", "0"), tmp_path)
    assert code == 0, stderr
    assert len(csv_rows(rows)) == 5


# ----- logs -------------------------------------------------------------------------------


def test_a_log_gets_stage_and_progress_lines(folder, model_dir, tmp_path):
    refs = tmp_path / "refs"
    shutil.copytree(folder, refs)
    rows = tmp_path / "rows.csv"
    args = [sys.executable, "-m", "winclip_cli", *score(folder, model_dir, rows)]
    env = {**env_for(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [*args, "--ref", str(refs), "--k", "2"], capture_output=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    log = proc.stderr.decode()
    assert "model loaded: local-dir:" in log and "open_clip_pytorch_model.bin" in log
    assert "text embeddings for 'object': encoded" in log
    assert "reference bank built from 2 image(s)" in log
    assert "scoring: 4/4 (100%)" in log and "img/s" in log
    rows.unlink()
    proc = subprocess.run(args, capture_output=True, env=env, timeout=300)
    assert "text embeddings for 'object': cached" in proc.stderr.decode()
    rows.unlink()
    quiet = subprocess.run([*args, "--quiet"], capture_output=True, env=env, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_a_fifo_input_is_never_opened_for_its_identity(tmp_path):
    """Hashing a named pipe would block the run forever (the corpus has one)."""
    import os

    from winclip_cli.manifest import file_identity

    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        file_identity(fifo)
