"""Interrupted runs leave a valid file, and --resume completes it.

Real processes get real signals: SIGINT (Ctrl-C) -> exit 130, SIGTERM -> exit 143, with
every row in the file complete. ``--resume`` then scores only what is missing, and the
result equals an uninterrupted run's. A row torn by a crash is repaired on resume.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import COUNT, WEIRD, command, count_rows, env_for, invoke, is_stage
from winclip_cli.rows import Row, RowWriter, columns, read_finished_rows
from winclip_cli.rows_file import RowsFile
from winclip_cli.runinfo import start_run

COLUMNS = ["path", "score", "map_max", "overlay", "status", "error"]


def parse(path: Path, fmt: str) -> list[dict]:
    """Rows of a finished file, each complete; fails on any torn or malformed row."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    assert text.endswith("\n"), "the file must end with a complete row"
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.split("\n")[:-1]]
        assert all(set(r) == set(COLUMNS) for r in rows)
        return rows
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert records[0] == COLUMNS
    assert all(len(r) == len(COLUMNS) for r in records[1:]), "a torn CSV row"
    return [dict(zip(COLUMNS, r, strict=True)) for r in records[1:]]


def normalised(rows: list[dict], out: Path) -> set[tuple]:
    """Rows comparable across formats and output folders."""
    result = set()
    for r in rows:
        score = "" if r["score"] in (None, "") else f"{float(r['score']):.6f}"
        map_max = "" if r["map_max"] in (None, "") else f"{float(r['map_max']):.6f}"
        overlay = os.path.relpath(r["overlay"], out) if r["overlay"] else ""
        result.add((r["path"], score, map_max, overlay, r["status"], r["error"]))
    return result


@dataclass
class Reference:
    rows: set[tuple]  # normalised
    parsed: list[dict[str, str]]  # as in the CSV file
    out: Path


@pytest.fixture(scope="module")
def reference(dataset, model_dir, tmp_path_factory):
    """An uninterrupted run: the rows a resumed run must end up with."""
    work = tmp_path_factory.mktemp("reference")
    out, rows = work / "out", work / "rows.csv"
    proc = subprocess.run(
        command(dataset, model_dir, out, rows, "csv"),
        capture_output=True,
        env=env_for(work / "cache"),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr.decode()
    parsed = parse(rows, "csv")
    assert len(parsed) == COUNT + 2
    return Reference(normalised(parsed, out), parsed, out)


def interrupt(args: list[str], rows: Path, fmt: str, signum: int, cache: Path, after: int = 5):
    """Start a run, wait until ``after`` rows are in the file, send ``signum``."""
    log = rows.with_suffix(".stderr")
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=env_for(cache))
        deadline = time.monotonic() + 240
        try:
            while count_rows(rows, fmt) < after:
                assert proc.poll() is None, "the run ended before it could be interrupted"
                assert time.monotonic() < deadline, "no rows appeared"
                time.sleep(0.01)
            proc.send_signal(signum)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text(errors="replace")


@pytest.mark.parametrize(
    ("fmt", "signum", "expected"),
    [("csv", signal.SIGINT, 130), ("jsonl", signal.SIGTERM, 143)],
    ids=["csv-SIGINT", "jsonl-SIGTERM"],
)
def test_interrupt_then_resume(dataset, model_dir, reference, tmp_path, fmt, signum, expected):
    out, rows = tmp_path / "out", tmp_path / f"rows.{fmt}"
    args = command(dataset, model_dir, out, rows, fmt)
    slow_args = command(dataset, model_dir, out, rows, fmt, slow=True)
    code, stderr = interrupt(slow_args, rows, fmt, signum, tmp_path / "cache")
    assert code == expected, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "--resume" in stderr

    # The interrupted file is valid: complete rows only, each ok row's overlay on disk.
    partial = parse(rows, fmt)
    assert 5 <= len(partial) < COUNT + 2
    assert len({r["path"] for r in partial}) == len(partial)
    for row in partial:
        if row["status"] == "ok":
            with Image.open(row["overlay"]) as overlay:
                overlay.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "half-written images"
    assert normalised(partial, out) <= reference.rows

    # --resume scores the rest: no duplicates, same rows as an uninterrupted run.
    resumed = subprocess.run(
        [*args, "--resume", "--settle", "0"],
        capture_output=True,
        env=env_for(tmp_path / "cache"),
        timeout=300,
    )
    assert resumed.returncode == 3, resumed.stderr.decode()  # the broken file still counts
    final = parse(rows, fmt)
    paths = [r["path"] for r in final]
    assert len(paths) == len(set(paths)) == COUNT + 2
    assert final[: len(partial)] == partial, "rows already written must stay as they were"
    assert normalised(final, out) == reference.rows


# A DataLoader worker hands each batch's shared memory to the main process through a
# socket handshake (multiprocessing's resource sharer). Ctrl-C can stop the main process
# in the middle of it; the worker must not then print a traceback. This cuts the
# handshake on purpose, in a process set up as a worker and in a plain one (the control).
CUT_HANDSHAKE = """
import os, socket, sys
from multiprocessing import resource_sharer
from winclip_cli.workers import init_worker
if sys.argv[1] == "worker":
    init_worker(0)
read_end, _ = os.pipe()
resource_sharer.DupFd(read_end)  # starts the sharer's listening thread
peer = socket.socket(socket.AF_UNIX)
peer.connect(resource_sharer._resource_sharer._address)
peer.close()  # as an interrupted main process does
# A whole hand-over after it: the listener serves one connection at a time, so when this
# returns it has dealt with the cut one (no sleeping and hoping).
os.close(resource_sharer.DupFd(read_end).detach())
"""


@pytest.mark.parametrize("kind", ["worker", "plain"])
def test_a_cut_batch_handover_prints_nothing_in_a_worker(kind):
    proc = subprocess.run(
        [sys.executable, "-c", CUT_HANDSHAKE, kind], capture_output=True, timeout=60, check=True
    )
    stderr = proc.stderr.decode()
    if kind == "worker":
        assert stderr == ""
    else:  # the control: without the worker set-up, the same cut prints a traceback
        assert "Traceback" in stderr and "Error" in stderr


# ----- a row torn by a crash ------------------------------------------------------------


def written(fmt: str, rows: list[Row]) -> tuple[bytes, list[dict]]:
    """The bytes a run writes for ``rows``, and each row as read back from a file."""
    cols = columns(True, False, False)
    buffer = io.StringIO()
    writer = RowWriter(buffer, fmt, cols)
    for row in rows:
        writer.write(row)
    data = buffer.getvalue().encode("utf-8")
    if fmt == "jsonl":
        records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    else:
        records = [
            dict(zip(cols, r, strict=True))
            for r in list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))[1:]
        ]
    return data, records


SAMPLE_ROWS = [
    Row("/in/a.png", 0.5, map_max=0.625, overlay="/out/a.png.png"),
    Row("/in/broken.png", status="error", error="damaged image: image file is truncated"),
    Row(f"/in/{WEIRD}", 0.25, map_max=0.375, overlay=f"/out/{WEIRD}.png"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_cut_through_the_last_row_is_repaired(tmp_path, fmt):
    """Cut the file at every byte of its last row: the finished rows are kept exactly,
    the torn one dropped, and the file rewritten so that appending makes a valid file."""
    cols = columns(True, False, False)
    data, records = written(fmt, SAMPLE_ROWS)
    last_row = data.rindex(b"\n", 0, data.rindex(b"/in/zz")) + 1
    path = tmp_path / f"rows.{fmt}"
    for cut in range(last_row, len(data) + 1):
        path.write_bytes(data[:cut])
        kept = read_finished_rows(path, fmt, cols)
        # A last row whose fields are all there may be kept; anything less is dropped.
        assert kept in (records[:2], records), cut
        with open(path, "a", encoding="utf-8", newline="") as stream:
            RowWriter(stream, fmt, cols, header=False).write(SAMPLE_ROWS[2])
        repaired = parse(path, fmt)
        assert [r["path"] for r in repaired][-1] == f"/in/{WEIRD}", cut
        assert len(repaired) == len(kept) + 1, cut


def finished_file(reference: Reference, fmt: str, path: Path) -> None:
    """The rows file an uninterrupted run writes, in ``fmt``."""
    cols = columns(True, False, False)
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = RowWriter(stream, fmt, cols)
        for r in reference.parsed:
            score = float(r["score"]) if r["score"] else None
            map_max = float(r["map_max"]) if r["map_max"] else None
            writer.write(Row(r["path"], score, r["status"], r["error"], map_max, r["overlay"]))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_repairs_a_torn_last_row(dataset, model_dir, reference, tmp_path, fmt):
    rows = tmp_path / f"rows.{fmt}"
    finished_file(reference, fmt, rows)
    assert normalised(parse(rows, fmt), reference.out) == reference.rows
    data = rows.read_bytes()
    last = data.rindex(b"zz, ")  # the weird name is the last row: cut inside its path
    rows.write_bytes(data[: last + 12])
    args = ["segment", str(dataset), "--model", model_dir, "--out", str(reference.out)]
    code, stderr = invoke([*args, "-o", str(rows), "--format", fmt, "--resume"], tmp_path)
    assert code == 3, stderr
    final = parse(rows, fmt)
    assert len(final) == len({r["path"] for r in final}) == COUNT + 2
    assert normalised(final, reference.out) == reference.rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_of_a_finished_run_changes_nothing(dataset, model_dir, reference, tmp_path, fmt):
    rows = tmp_path / f"rows.{fmt}"
    finished_file(reference, fmt, rows)
    before = rows.read_bytes()
    args = ["segment", str(dataset), "--model", model_dir, "--out", str(tmp_path / "out")]
    code, stderr = invoke([*args, "-o", str(rows), "--format", fmt, "--resume"], tmp_path)
    assert code == 3, stderr  # the broken file's error row still counts
    assert rows.read_bytes() == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def overlays_failing_at_the_third(folder: Path, monkeypatch, error: OSError) -> None:
    """Six inputs in ``folder``; writing the third one's overlay (p2.png) fails half way
    with ``error``, leaving a partial temporary file for the writer to clean up."""
    from winclip_cli import outputs
    from winclip_cli.atomic import atomic_write

    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    real_save = outputs.save_png

    def save_failing_third(image, path):
        if path.name != "p2.png.png":
            return real_save(image, path)

        def half_then_fail(handle):
            handle.write(b"\x89PNG\r\n\x1a\n half an image")
            raise error

        atomic_write(path, half_then_fail)

    monkeypatch.setattr(outputs, "save_png", save_failing_third)


def test_a_failed_overlay_write_leaves_no_partial_file(model_dir, tmp_path, monkeypatch):
    """Overlays are written under a temporary name and renamed: a write that fails half
    way leaves neither a partial PNG under the final name nor a temp file. An error of
    that one file (here a name too long) makes an error row, and the run goes on."""
    folder = tmp_path / "in"
    overlays_failing_at_the_third(folder, monkeypatch, OSError(36, "File name too long"))
    out, rows = tmp_path / "out", tmp_path / "rows.csv"
    args = ["segment", str(folder), "--model", model_dir, "--out", str(out), "-o", str(rows)]
    code, stderr = invoke(args, tmp_path / "cache")
    monkeypatch.undo()
    assert code == 3, stderr
    parsed = parse(rows, "csv")
    failed = [r for r in parsed if r["status"] == "error"]
    assert len(failed) == 1 and "overlay not written" in failed[0]["error"]
    assert "File name too long" in failed[0]["error"] and failed[0]["path"].endswith("p2.png")
    lost = out / (Path(failed[0]["path"]).name + ".png")
    assert not lost.exists(), "a half-written overlay under its final name"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"p{i}.png.png" for i in range(6) if f"p{i}.png" != Path(failed[0]["path"]).name
    )
    for r in parsed:
        if r["status"] == "ok":
            with Image.open(r["overlay"]) as overlay:
                overlay.load()


def test_a_full_disk_stops_the_run_and_resume_finishes_it(model_dir, tmp_path, monkeypatch):
    """No space left: every later overlay would fail too. The run stops (exit 2, one
    line), the rows written so far are complete, and --resume later finishes the job."""
    folder = tmp_path / "in"
    overlays_failing_at_the_third(folder, monkeypatch, OSError(28, "No space left on device"))
    out, rows = tmp_path / "out", tmp_path / "rows.csv"
    args = ["segment", str(folder), "--model", model_dir, "--out", str(out), "-o", str(rows)]
    code, stderr = invoke(args, tmp_path / "cache")
    monkeypatch.undo()
    assert code == 2, stderr
    assert "No space left" in stderr and "--resume" in stderr
    messages = [line for line in stderr.splitlines() if not is_stage(line)]
    assert len(messages) == 1 and "No space left" in messages[0], stderr
    partial = parse(rows, "csv")  # the rows before the failed overlay, in input order
    assert [Path(r["path"]).name for r in partial] == ["p0.png", "p1.png"]
    assert all(r["status"] == "ok" for r in partial)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary file left"
    code, stderr = invoke([*args, "--resume"], tmp_path / "cache")
    assert code == 0, stderr
    final = parse(rows, "csv")
    assert final[: len(partial)] == partial and [r["status"] for r in final] == ["ok"] * 6
    assert len(list(out.iterdir())) == 6


# ----- resuming with other options --------------------------------------------------------


@pytest.fixture()
def few(tmp_path) -> Path:
    folder = tmp_path / "few"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_resume_with_another_threshold_is_refused(few, model_dir, tmp_path):
    """The file's labels would contradict each other: refuse, and leave it as it was."""
    rows = tmp_path / "rows.csv"
    args = ["score", str(few), "--model", model_dir, "-o", str(rows)]
    code, stderr = invoke([*args, "--threshold", "0"], tmp_path)  # everything anomalous
    assert code == 0, stderr
    lines = rows.read_text().splitlines(keepends=True)
    rows.write_text("".join(lines[:3]))  # as if interrupted after two rows
    before = rows.read_bytes()
    code, stderr = invoke([*args, "--threshold", "1", "--resume"], tmp_path)
    assert code == 2 and "another --threshold" in stderr, stderr
    assert rows.read_bytes() == before
    code, stderr = invoke([*args, "--threshold", "0", "--resume"], tmp_path)
    assert code == 0, stderr
    resumed = [r["label"] for r in csv_rows(rows)]
    assert resumed == ["anomalous"] * 4


def test_resume_matches_rows_by_the_absolute_path(few, model_dir, tmp_path, monkeypatch):
    """`few/0.png` written first, resumed as `./few/` or an absolute path: no duplicates."""
    monkeypatch.chdir(few.parent)
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(["score", "few", "--model", model_dir, "-o", str(rows)], tmp_path)
    assert code == 0, stderr
    finished = rows.read_text()
    rows.write_text("".join(finished.splitlines(keepends=True)[:3]))
    for spelling in ("./few/", str(few)):
        args = ["score", spelling, "--model", model_dir, "-o", str(rows), "--resume"]
        code, stderr = invoke(args, tmp_path)
        assert code == 0, stderr
        paths = [r["path"] for r in csv_rows(rows)]
        assert len(paths) == 4 and len({os.path.realpath(p) for p in paths}) == 4


def test_resume_with_nothing_left_still_saves_the_bank(few, model_dir, tmp_path):
    rows, bank = tmp_path / "rows.csv", tmp_path / "refs.bank"
    parts = few.parent / "parts"
    parts.mkdir()
    shutil.copy(few / "0.png", parts / "x.png")
    args = ["score", str(parts), "--model", model_dir, "-o", str(rows), "--ref", str(few)]
    code, stderr = invoke(args, tmp_path)
    assert code == 0, stderr
    code, stderr = invoke([*args, "--resume", "--save-bank", str(bank)], tmp_path)
    assert code == 0, stderr
    assert bank.is_file() and "0 to go" in stderr


def test_resume_from_another_folder_is_refused_not_duplicated(
    few, model_dir, tmp_path, monkeypatch
):
    """Relative paths written from one folder match nothing from another: every image
    would be scored again and the file would hold each twice."""
    monkeypatch.chdir(few.parent)
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(["score", "few", "--model", model_dir, "-o", str(rows)], tmp_path)
    assert code == 0, stderr
    before = rows.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `few/0.png` in the file now means elsewhere/few/0.png
    args = ["score", str(few), "--model", model_dir, "-o", str(rows), "--resume"]
    code, stderr = invoke(args, tmp_path)
    assert code == 2 and "none of the 4 row(s)" in stderr, stderr
    assert rows.read_bytes() == before


# ----- two runs on one rows file (an overlapping cron job) ---------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX; Windows runs are not locked")
@pytest.mark.parametrize("resume", [False, True])
def test_a_rows_file_in_use_by_another_run_is_left_alone(few, model_dir, tmp_path, resume):
    """Two runs appending to one file interleave and duplicate rows: the second is refused
    while the first holds the file (exit 75, "try again later", naming the holder), and
    the file is not touched."""
    rows = tmp_path / "rows.csv"
    args = ["score", str(few), "--model", model_dir, "-o", str(rows)]
    code, stderr = invoke(args, tmp_path)
    assert code == 0, stderr
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:2]) + "torn,0.")
    before = rows.read_bytes()
    holder = start_run()
    held = RowsFile(rows)  # what the first run holds while it writes
    try:
        code, stderr = invoke([*args, *(["--resume"] if resume else [])], tmp_path)
        assert code == 75 and f"being written by run {holder.run_id}" in stderr, stderr
        assert f"pid {holder.pid}" in stderr and holder.started in stderr
        assert rows.read_bytes() == before, "not truncated, not repaired, not appended"
    finally:
        held.release()
    code, stderr = invoke([*args, "--resume"], tmp_path)  # free again: resume finishes it
    assert code == 0, stderr
    assert len(csv_rows(rows)) == 4


def test_a_run_that_fails_before_any_row_leaves_no_rows_file(few, tmp_path):
    rows = tmp_path / "rows.csv"
    args = ["score", str(few), "--model", "local-dir:/nonexistent/model", "-o", str(rows)]
    code, stderr = invoke(args, tmp_path)
    assert code == 4, stderr
    assert not rows.exists()


def test_resume_of_a_file_rewritten_whole_keeps_every_new_row(few, model_dir, tmp_path):
    """A CSV with CRLF line ends (saved by another program) is rewritten whole when it
    is repaired; the rows of the resumed run must go into the new file, not the old one."""
    rows = tmp_path / "rows.csv"
    args = ["score", str(few), "--model", model_dir, "-o", str(rows)]
    code, stderr = invoke(args, tmp_path)
    assert code == 0, stderr
    lines = rows.read_text().splitlines()
    rows.write_bytes(("\r\n".join(lines[:3]) + "\r\n").encode())
    code, stderr = invoke([*args, "--resume"], tmp_path)
    assert code == 0, stderr
    assert [r["path"] for r in csv_rows(rows)] == [str(few / f"{i}.png") for i in range(4)]


def test_two_names_of_one_file_are_two_inputs_on_resume(model_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 16), (len(name), 40, 90)).save(folder / name)
    (folder / "c.png").symlink_to(folder / "a.png")
    rows = tmp_path / "rows.csv"
    args = ["score", str(folder), "--model", model_dir, "-o", str(rows)]
    code, stderr = invoke(args, tmp_path)
    assert code == 0, stderr
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:3]))  # a, b
    code, stderr = invoke([*args, "--resume"], tmp_path)
    assert code == 0, stderr
    assert [Path(r["path"]).name for r in csv_rows(rows)] == ["a.png", "b.png", "c.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_rows_into_a_fifo(few, model_dir, tmp_path):
    """-o to a FIFO (or /dev/stdout): written in place, nothing to lock or truncate."""
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    received: list[str] = []

    def read() -> None:
        with open(fifo, encoding="utf-8") as stream:
            received.append(stream.read())

    import threading

    reader = threading.Thread(target=read)
    reader.start()
    code, stderr = invoke(["score", str(few), "--model", model_dir, "-o", str(fifo)], tmp_path)
    reader.join(timeout=60)
    assert code == 0, stderr
    assert received[0].count("\n") == 5  # header + 4 rows


def test_a_filesystem_without_locks_still_gets_its_rows(few, model_dir, tmp_path, monkeypatch):
    """NFS without lockd says ENOLCK: that is not "another run", the run goes on."""
    import errno

    from winclip_cli import rows_file

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rows_file.fcntl, "flock", no_locks)
    rows = tmp_path / "rows.csv"
    code, stderr = invoke(["score", str(few), "--model", model_dir, "-o", str(rows)], tmp_path)
    assert code == 0, stderr
    assert len(csv_rows(rows)) == 4
