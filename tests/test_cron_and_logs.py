"""Cron and CI logs, end to end (issue 17): an -o file held by another run is exit 75
naming the holder (or --wait), README's cron recipe run twice at once mails nobody, a
log's lines carry the time and the run id with a first and a last line, -o may name a
new folder, and Ray's own lines and a port that is not Ray stay out of the way."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import GOOD, PARTS, REPO, WINCLIP, process_env, read_csv, run_runner
from winclip_cli import __version__
from winclip_cli.rows_lock import holder_path, read_holder

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \[([0-9a-f]{6})\] ")


def start(args: list[object], log, cwd: Path | None = None) -> subprocess.Popen:
    """`winclip ARGS` with stderr into ``log`` (a file: not a terminal)."""
    return subprocess.Popen(
        [str(WINCLIP), *(str(a) for a in args)],
        cwd=cwd,
        env=process_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def wait_for_holder(rows: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of the run that holds ``rows`` once it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        holder = read_holder(rows)
        if holder is not None:
            return holder.pid
        time.sleep(0.01)
    raise AssertionError(f"no run took {rows} (exit {proc.poll()})")


@pytest.fixture()
def many(tmp_path) -> Path:
    """36 images: a run that lasts a while."""
    root = tmp_path / "many"
    for i in range(4):
        shutil.copytree(PARTS, root / f"copy{i}")
    return root


def test_a_held_rows_file_is_exit_75_naming_the_run_and_wait_gets_it(many, model, tmp_path):
    rows = tmp_path / "rows.csv"
    with open(tmp_path / "first.log", "wb") as log:
        first = start(["score", many, *model, "-o", rows], log)
        pid = wait_for_holder(rows, first)
        os.kill(pid, signal.SIGSTOP)  # holds the file for as long as the test needs
        try:
            second = run_runner(["score", PARTS, *model, "-o", rows])
            assert second.code == 75, second.stderr
            holder = read_holder(rows)
            assert holder is not None and holder.pid == pid
            assert f"run {holder.run_id} (pid {pid}" in second.stderr
            assert holder.started in second.stderr and "--wait" in second.stderr
        finally:
            os.kill(pid, signal.SIGCONT)
        waited = run_runner(["score", many, *model, "-o", rows, "--wait", "300"])
        assert first.wait(300) == 0
    assert waited.code == 0, waited.stderr
    assert len(read_csv(rows.read_text())[1]) == 36
    assert not holder_path(rows).exists()


def cron_line(folder: Path, model: list[str], bin_dir: Path) -> str:
    """README's cron recipe as sh would run it here: the schedule dropped, the tiny model."""
    line = next(x for x in (REPO / "README.md").read_text().splitlines() if x.startswith("*/10 "))
    command = line.split(None, 5)[5]
    command = command.replace("cd /line", f"cd {shlex.quote(str(folder))}")
    opts = " ".join(shlex.quote(o) for o in model)
    command = command.replace("winclip score", f"{shlex.quote(str(WINCLIP))} score {opts}")
    return f"PATH={shlex.quote(str(bin_dir))}:$PATH; {command}"


def test_the_cron_recipe_run_twice_at_once_mails_nobody(model, tmp_path):
    line = tmp_path / "line"
    for i in range(4):
        shutil.copytree(PARTS, line / "today" / f"cam{i}")
    bank = run_runner(
        ["fewshot", PARTS / "local", "--ref", GOOD, "--k", "2", "--save-bank",
         line / "good.bank", "--out", tmp_path / "out", *model]
    )  # fmt: skip
    assert bank.code == 0, bank.stderr
    bin_dir, mailed = tmp_path / "bin", tmp_path / "mailed"
    bin_dir.mkdir()
    (bin_dir / "mail").write_text(f"#!/bin/sh\ncat >> {shlex.quote(str(mailed))}\n")
    (bin_dir / "mail").chmod(0o755)
    recipe = cron_line(line, model, bin_dir)
    first = subprocess.Popen(["sh", "-c", recipe], env=process_env(), stdin=subprocess.DEVNULL)
    pid = wait_for_holder(line / "today.csv", first)
    os.kill(pid, signal.SIGSTOP)
    try:
        second = subprocess.run(["sh", "-c", recipe], env=process_env(), timeout=300)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first.wait(300) == 0 and second.returncode == 0
    assert not mailed.exists(), mailed.read_text()
    log = (line / "winclip.log").read_text()
    assert "being written by run" in log and "exit 75" in log, log
    assert len(read_csv((line / "today.csv").read_text())[1]) == 36


def test_a_log_stamps_every_line_names_the_run_and_ends_with_its_outcome(model, tmp_path):
    log = tmp_path / "winclip.log"
    with open(log, "ab") as f:
        runs = [start(["score", PARTS, *model, "-o", tmp_path / f"rows{i}.csv"], f) for i in (1, 2)]
        assert [r.wait(300) for r in runs] == [0, 0]
    lines = log.read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines
    ids = {STAMP.match(line).group(1) for line in lines}
    assert len(ids) == 2  # two overlapping runs, told apart
    for run_id in ids:
        own = [STAMP.sub("", x) for x in lines if STAMP.match(x).group(1) == run_id]
        assert own[0].startswith(f"winclip {__version__} score "), own[0]
        assert f"run {run_id}" in own[0] and "--model" in own[0]
        assert re.fullmatch(r"finished: 9 rows: 9 ok; \d+\.\d s; exit 0", own[-1]), own[-1]


def test_o_into_a_folder_that_does_not_exist_creates_it(model, tmp_path):
    rows = tmp_path / "new" / "day" / "rows.csv"
    out = run_runner(["score", PARTS / "good", *model, "-o", rows])
    assert out.code == 0, out.stderr
    assert len(read_csv(rows.read_text())[1]) == 3


def test_calibrate_shows_a_real_rate(model, tmp_path):
    log = tmp_path / "cal.log"
    with open(log, "wb") as f:
        args = ["calibrate", PARTS, *model, "--batch-size", "1", "-o", tmp_path / "x.cal"]
        assert start(args, f).wait(300) == 0
    progress = [x for x in log.read_text().splitlines() if "calibrating: 9/9" in x]
    assert progress and re.search(r"\d+\.\d\d img/s", progress[-1]), log.read_text()
    assert " 0.00 img/s" not in log.read_text()


def test_a_port_that_answers_but_is_not_ray_fails_within_seconds(model):
    """A plain TCP server on 127.0.0.1 that accepts and says nothing (never another
    address): exit 4 and a message that says so, not a minute of ray.init."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "winclip_cli", "score", str(PARTS), *model, "--engine",
             "ray", "--ray-address", f"127.0.0.1:{port}"],
            env={**process_env(), "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for conn in held:
            conn.close()
        server.close()
    assert out.returncode == 4, out.stderr
    assert "does not answer as Ray does" in out.stderr
    assert time.monotonic() - started < 60  # imports included; the probe is 5 s at most


def test_rays_own_lines_stay_out_of_the_log(model, tmp_path):
    pytest.importorskip("ray")
    out = subprocess.run(
        [sys.executable, "-m", "winclip_cli", "score", str(PARTS), *model, "--engine", "ray",
         "--ray-workers", "1"],
        env={**process_env(), "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines and all(STAMP.match(line) for line in lines), out.stderr
