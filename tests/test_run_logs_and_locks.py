"""Cron and CI (issue 17): the -o file's lock names its holder and is exit 75 (or waited
for), -o may name a new folder, a log's lines carry the time and the run id, the rate
counts from the first image, and Ray's address is probed on loopback only."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from winclip_cli.decision import WHOLE_IMAGE, is_whole_image
from winclip_cli.errors import ClusterError, ExitCode, FileBusyError, WinclipError
from winclip_cli.outputs import CONTOUR_COLOUR, Caption, write_image_outputs
from winclip_cli.progress import Reporter, _LogProgress, _Rate
from winclip_cli.rows_file import RowsFile
from winclip_cli.rows_lock import LockWait, holder_path, read_holder
from winclip_cli.runinfo import RunInfo, current_run, start_run

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \[([0-9a-f]{6})\] ")

# ----- the -o file's lock -----------------------------------------------------------------


def test_a_locked_rows_file_is_exit_75_naming_the_holder(tmp_path):
    rows = tmp_path / "rows.csv"
    holder = start_run()
    first = RowsFile(rows)
    assert read_holder(rows) == holder
    start_run()  # a second run (the same process stands in for another one)
    with pytest.raises(FileBusyError) as caught:
        RowsFile(rows)
    error = caught.value
    assert isinstance(error, WinclipError) and error.exit_code == ExitCode.PENDING == 75
    message = str(error)
    assert f"run {holder.run_id}" in message and f"pid {holder.pid}" in message
    assert holder.started in message and "--wait" in message
    first.release()
    assert not holder_path(rows).exists()  # released: nobody holds it


def test_wait_takes_the_lock_once_the_holder_lets_go(tmp_path):
    rows = tmp_path / "rows.csv"
    start_run()
    first = RowsFile(rows)
    first.stream(append=False).write("path\n")
    releaser = threading.Timer(0.5, first.release)
    told: list[str] = []
    releaser.start()
    try:
        second_run = start_run()
        second = RowsFile(rows, LockWait(30, told.append))
    finally:
        releaser.join()
    assert told and "waiting up to 30 s" in told[0]
    assert read_holder(rows) == second_run
    second.release()
    start_run()
    holding = RowsFile(rows)
    with pytest.raises(FileBusyError):  # a wait that runs out: exit 75 after all
        RowsFile(rows, LockWait(0.3))
    holding.release()


def test_o_into_a_new_folder_creates_it_and_an_unused_one_goes_again(tmp_path):
    rows = tmp_path / "new" / "deeper" / "rows.csv"
    kept = RowsFile(rows)
    kept.stream(append=False).write("path\n")
    assert kept.release() is False and rows.read_text() == "path\n"
    unused = tmp_path / "other" / "rows.csv"
    RowsFile(unused).release()  # a run that wrote nothing leaves nothing behind
    assert not (tmp_path / "other").exists()


# ----- logs -------------------------------------------------------------------------------


def test_a_log_stamps_every_line_with_the_time_and_the_run_id():
    stream = io.StringIO()  # not a terminal
    run = RunInfo.new()
    reporter = Reporter(stream=stream, run=run)
    reporter.begin("0.1.0", "score", "PATH=- --class screw -o rows.csv")
    reporter.info("two\nlines")
    reporter.warn("careful")
    reporter.stream.write("a table row written directly\n")
    reporter.counts = "10 rows: 9 ok, 1 error"
    reporter.finish(3)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6
    assert all(STAMP.match(line) and STAMP.match(line).group(1) == run.run_id for line in lines)
    bare = [STAMP.sub("", line) for line in lines]
    assert bare[0].startswith("winclip 0.1.0 score PATH=- --class screw -o rows.csv")
    assert f"run {run.run_id}" in bare[0]
    assert re.fullmatch(r"finished: 10 rows: 9 ok, 1 error; \d+\.\d s; exit 3", bare[-1])


def test_two_runs_in_one_log_are_told_apart():
    log = io.StringIO()
    first, second = Reporter(stream=log, run=RunInfo.new()), Reporter(stream=log, run=RunInfo.new())
    first.info("from the first")
    second.info("from the second")
    ids = [STAMP.match(line).group(1) for line in log.getvalue().splitlines()]
    assert ids == [first.run.run_id, second.run.run_id] and ids[0] != ids[1]


def test_a_terminal_and_a_reporter_without_a_run_get_no_stamps():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    Reporter(stream=screen, run=RunInfo.new()).error("plain")
    assert "error:" in screen.getvalue() and not STAMP.match(screen.getvalue())
    plain = io.StringIO()
    Reporter(stream=plain).info("as before")
    assert plain.getvalue() == "as before\n"


def test_the_rate_counts_from_the_first_image_not_start_up(monkeypatch):
    clock = iter([100.0, 100.01, 102.0, 104.0])  # start-up before 100 is not counted
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    rate = _Rate()
    assert rate.update(8) is None  # the first batch: no speed yet
    assert rate.update(8) is None  # still the first batch's burst
    assert rate.update(16) == pytest.approx(8 / 2.0)
    assert rate.update(24) == pytest.approx(16 / 4.0)
    line = _LogProgress(24, "calibrating").line(24, 4.0)
    assert line == "calibrating: 24/24 (100%), 4.00 img/s, ETA 0 s"
    assert _LogProgress(24, "scoring").line(24, None) == "scoring: 24/24 (100%)"


def test_a_run_quicker_than_the_burst_still_ends_with_its_rate(monkeypatch):
    """Nine images in 40 ms (a small folder at bf16): the last line says the speed."""
    clock = iter([100.0, 100.01, 100.02, 100.04])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    rate = _Rate()
    assert rate.update(1) is None and rate.update(2) is None and rate.update(4) is None
    assert rate.update(9, final=True) == pytest.approx(8 / 0.04)


def test_the_reporter_keeps_its_own_clock_for_the_rate(monkeypatch):
    """Callers pass counts only: the rate comes from the reporter's own clock."""
    log = io.StringIO()
    reporter = Reporter(stream=log)
    clock = iter([10.0, 11.0, 12.0, 13.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    reporter.start(3, "calibrating")
    for done in (1, 2, 3):
        reporter.advance(1, done)
    assert "1.00 img/s" in log.getvalue().splitlines()[-1]


def test_current_run_is_the_started_one():
    run = start_run()
    assert current_run() is run and re.fullmatch(r"[0-9a-f]{6}", run.run_id)
    assert RunInfo.from_json(run.to_json()) == run and RunInfo.from_json({"pid": 1}) is None


# ----- Ray's address, on loopback only ----------------------------------------------------


def test_a_closed_port_is_a_cluster_error():
    from winclip_cli.engines.ray import check_reachable

    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")


@pytest.mark.parametrize("answer", [b"", b"SSH-2.0-OpenSSH_9.6\r\n", None])
def test_something_that_is_not_ray_on_the_port_fails_within_the_timeout(answer):
    """A plain TCP server on 127.0.0.1: silent, a banner, or one that hangs up."""
    from winclip_cli.engines.ray import CONNECT_TIMEOUT_S, check_reachable

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        if answer is None:
            conn.close()
        elif answer:
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(ClusterError, match="cannot reach the Ray cluster") as caught:
            check_reachable(f"ray://127.0.0.1:{port}", timeout=1.0)
    finally:
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()
    if answer is not None:  # it listens, but is no Ray: the message says so
        assert "does not answer as Ray does" in str(caught.value)
    # A hang guard, not a speed test: ray.init itself waits a minute on such a port.
    assert time.monotonic() - started < 30 and CONNECT_TIMEOUT_S <= 5


def test_ray_lines_are_told_from_ours():
    from winclip_cli.engines.ray_logs import is_ray_line

    assert is_ray_line(b"[2026-12-02 13:20:53,847 E 10635 10635] core_worker.cc:2465: Actor")
    assert is_ray_line(b"2026-12-02 13:20:48,918\tWARNING authentication_token_setup.py:85 -- x")
    assert is_ray_line(b"(raylet) [2026-12-02 13:20:53,847 I 1 1] x")
    assert not is_ray_line(b"2026-12-02T13:20:48.918+00:00 [1a2b3c] scoring: 9/9 (100%)")
    assert not is_ray_line(b"error: cannot reach the Ray cluster at 127.0.0.1:1")


# ----- a whole-image anomaly ----------------------------------------------------------------


def test_an_anomalous_image_without_a_region_says_so_and_marks_the_hottest_point(tmp_path):
    from winclip_cli.data import InputImage

    picture = tmp_path / "part.png"
    Image.new("RGB", (120, 90), (128, 128, 128)).save(picture)
    grid = torch.zeros(6, 8)
    grid[4, 1] = 0.5  # the hottest cell: bottom left, far from the caption
    image = InputImage(picture, str(picture), "part.png")
    caption = Caption(0.93, "anomalous", 0.01)
    written = write_image_outputs(
        image, grid, tmp_path / "out", False, pixel_threshold=0.9, caption=caption
    )
    assert written.anomalous_pixels == 0 and is_whole_image("anomalous", 0)
    assert not is_whole_image("normal", 0) and not is_whole_image("anomalous", "12")
    assert WHOLE_IMAGE in Caption(0.93, "anomalous", 0.01, whole_image=True).text()
    with Image.open(written.overlay) as overlay:
        pixels = np.asarray(overlay.convert("RGB"))
    red = np.all(pixels == CONTOUR_COLOUR, axis=-1)
    assert red[55:90, 0:45].any(), "no mark at the hottest point (bottom left)"
    calm = Caption(0.2, "normal", 0.5)
    normal = write_image_outputs(
        image, grid, tmp_path / "out2", False, pixel_threshold=0.9, caption=calm
    )
    with Image.open(normal.overlay) as overlay:
        unmarked = np.all(np.asarray(overlay.convert("RGB")) == CONTOUR_COLOUR, axis=-1)
    assert not unmarked[55:90, 0:45].any(), "a normal image got a mark"


def test_region_rows_are_not_whole_image(tmp_path):
    assert not is_whole_image("anomalous", None) and not is_whole_image("", "0")
    assert Path  # the path column is unchanged


def test_rows_and_files_are_counted_apart():
    from winclip_cli.progress import rows_and_files

    assert rows_and_files(10, 1) == "10 rows (9 files present, 1 no longer on disk)"
    assert rows_and_files(2, 1) == "2 rows (1 file present, 1 no longer on disk)"
    assert rows_and_files(1, 0) == "1 row" and rows_and_files(3, 0) == "3 rows"


def test_the_settings_line_reads_as_a_command():
    from winclip_cli.runinfo import settings_line

    line = settings_line(
        [
            ("", ["a b.jpg", "c.jpg", "d.jpg", "e.jpg"]),
            ("--class", "screw"),
            ("--ref", None),
            ("--resume", True),
            ("--quiet", False),
            ("--threshold", 0.5),
        ]
    )
    assert line == "'a b.jpg' c.jpg d.jpg (+1 more) --class screw --resume --threshold 0.5"
