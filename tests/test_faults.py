"""Nothing lost, nothing hung (issue 21): full disks, workers that outlive their parent,
outputs that overwrite inputs, damaged sidecars, files that break their schema, a cache
under a home folder that does not exist.

The full disk is real where the tests run as root and may mount a tmpfs of a few pages;
elsewhere the one write path (atomic._write_all) fails the same way once a byte budget
for the folder is spent.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import SLOW_START, env_for, invoke, run_runner
from winclip_cli import atomic
from winclip_cli.atomic import atomic_write
from winclip_cli.bank import ReferenceBank, load_bank, save_bank
from winclip_cli.cache import default_cache_dir
from winclip_cli.conformal import Calibration, load_calibration, save_calibration
from winclip_cli.data import InputImage, batches
from winclip_cli.errors import (
    BankFileError,
    CalibrationError,
    DamagedFileError,
    ExitCode,
    OutputError,
    OverlapError,
    WriteFailedError,
)
from winclip_cli.manifest import (
    ManifestDamagedError,
    RunManifest,
    manifest_path,
    read_manifest,
    rebuilt_manifest,
)
from winclip_cli.overlaps import FileUse, refuse_overlaps
from winclip_cli.prompts import load_prompt_file
from winclip_cli.resume_rows import check_rows, gone_error_rows, one_row_per_input
from winclip_cli.rows import Row, RowWriter
from winclip_cli.rows_file import RowsFile

COLS = ["path", "score", "status", "error"]


# ----- a small filesystem -------------------------------------------------------------


def _can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def _no_tmpfs() -> None:
    # CI runs as root on a machine that mounts: there a skip would hide a failure.
    if os.environ.get("CI") == "true":
        pytest.fail("CI cannot mount a tmpfs: the full-disk tests would not run")
    pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")


@contextlib.contextmanager
def _tmpfs(folder: Path, size: int) -> Iterator[bool]:
    folder.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


@pytest.fixture()
def small_disk(tmp_path, monkeypatch) -> Iterator[tuple[Path, bool]]:
    """A folder that holds about 8 KiB: (the folder, whether it is a real filesystem).

    Without a real one, writes of files under the folder fail with ENOSPC once 8 KiB
    went through the one write path (in this process only)."""
    folder = tmp_path / "small"
    with _tmpfs(folder, 8192) if _can_mount() else contextlib.nullcontext(False) as real:
        if not real:
            folder.mkdir(exist_ok=True)
            budget = {"left": 8192}
            original = atomic._write_all

            def write_all(fd: int, data: bytes | memoryview) -> None:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if not target.startswith(str(folder)):
                    original(fd, data)
                    return
                view = memoryview(data).cast("B")
                fits = min(len(view), budget["left"])
                original(fd, view[:fits])
                budget["left"] -= fits
                if fits < len(view):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(atomic, "_write_all", write_all)
        yield folder, bool(real)


def row(i: int) -> Row:
    return Row(f"/data/line-{i:05d}/a rather long name, with a comma {i}.png", score=i / 1e5)


def whole_csv_rows(text: str) -> list[list[str]]:
    """Every record of a CSV text; fails on a torn one."""
    assert text == "" or text.endswith("\n"), f"ends in a torn row: {text[-60:]!r}"
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(r) == len(COLS) for r in records), "a torn row"
    return records


# ----- 1. a full disk ----------------------------------------------------------------


def test_a_row_that_does_not_fit_is_cut_back_to_the_last_whole_row(small_disk):
    folder, _ = small_disk
    held = RowsFile(folder / "rows.csv")
    writer = RowWriter(held.stream(append=False), "csv", COLS)
    written = 0
    with pytest.raises(WriteFailedError) as info:
        for i in range(10_000):
            writer.write(row(i))
            written += 1
    held.release()
    assert info.value.errno == errno.ENOSPC and info.value.exit_code == ExitCode.USAGE
    records = whole_csv_rows((folder / "rows.csv").read_text())
    assert records[0] == COLS and len(records) == written + 1 and written > 10


def test_rows_on_a_redirected_stdout_are_cut_back_and_never_written_again(small_disk):
    """`winclip score ... > full/rows.csv`: the stream the shell opened, as a TextIOWrapper."""
    folder, _ = small_disk
    stream = open(folder / "rows.csv", "w", encoding="utf-8", newline="")  # noqa: SIM115
    writer = RowWriter(stream, "csv", COLS)
    with pytest.raises(OSError):
        for i in range(10_000):
            writer.write(row(i))
    stream.close()  # nothing of the failed row is left in a buffer to fail again
    whole_csv_rows((folder / "rows.csv").read_text())


def test_a_whole_file_on_a_full_disk_is_exit_2_naming_it_and_leaves_nothing(small_disk):
    folder, _ = small_disk
    with pytest.raises(WriteFailedError) as info:
        atomic_write(folder / "big.bin", lambda f: f.write(os.urandom(64 * 1024)))
    assert info.value.exit_code == ExitCode.USAGE and isinstance(info.value, OutputError)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"cannot write {folder / 'big.bin'}: ")
    assert list(folder.iterdir()) == []


def test_a_manifest_on_a_full_disk_is_an_output_error(small_disk):
    folder, _ = small_disk
    identity = {"size": 1, "mtime_ns": 1, "sha256": "0" * 64}
    manifest = RunManifest(
        {"--class": "screw"}, None, {f"/x/{i}.png": identity for i in range(999)}
    )
    with pytest.raises(OutputError, match=r"manifest\.json"):
        manifest.write(folder / "rows.csv")


def test_images_go_through_the_one_write_path(small_disk):
    """PIL would write to a descriptor in C, around the write path, if it had one."""
    folder, _ = small_disk
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    with pytest.raises(WriteFailedError):
        atomic_write(folder / "o.png", lambda f: Image.fromarray(noise).save(f, format="PNG"))


# ----- 1. workers: they die with their parent and never hold the lock -----------------


def test_a_forked_child_never_holds_the_rows_lock(tmp_path):
    held = RowsFile(tmp_path / "rows.csv")
    ready, tell = os.pipe()
    child = os.fork()
    if child == 0:  # a DataLoader worker, say: it lives on after the parent lets go
        os.write(tell, b"up")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 2) == b"up"  # running (a child holds a copy until then)
        held.keep()  # else the empty file it created is removed: a new file, unlocked
        held.release()
        with open(tmp_path / "rows.csv", "a") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if held
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(tell)


class _StuckOnLarge:
    """A preprocess that never ends on the larger images (a decoder stuck on a file)."""

    size = (4, 4)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.width > 8:
            time.sleep(600)
        return torch.zeros(3, 4, 4)


def test_a_run_that_stops_stops_its_workers_even_stuck_ones(tmp_path):
    """A run whose output failed abandons its batches: the workers, busy and ignoring
    SIGTERM, must not be left running (Python would wait for them at exit)."""
    inputs = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8) if i == 0 else (16, 16)).save(path)
        inputs.append(InputImage(path, str(path), path.name))
    before = set(multiprocessing.active_children())
    stream = batches(inputs, _StuckOnLarge(), batch_size=1, workers=2)
    assert next(stream).indices == [0]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    stream.close()  # what the pipeline's error does to the engine's generator
    assert not any(w.is_alive() for w in workers)


# ----- the whole run: a full --out, and a SIGKILL of the parent ------------------------


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "parts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"p{i:03d}.png"
        )
    return folder


def lock_is_free(path: Path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs")
def test_a_full_out_folder_ends_the_run_with_exit_2_and_frees_the_lock(parts, model_dir, tmp_path):
    with _tmpfs(tmp_path / "full", 16384) as real:
        if not real:
            _no_tmpfs()
        rows = tmp_path / "rows.csv"
        args = ["segment", str(parts), "--model", model_dir, "--out", str(tmp_path / "full")]
        args += ["-o", str(rows), "--workers", "2", "--batch-size", "2", "--settle", "0"]
        proc = subprocess.run(
            [sys.executable, "-m", "winclip_cli", *args],
            env=env_for(tmp_path / "cache"),
            capture_output=True,
            timeout=120,  # today it never ends: a worker that ignores SIGTERM is waited on
        )
        stderr = proc.stderr.decode()
        assert proc.returncode == 2, stderr
        assert "No space left on device" in stderr and "Traceback" not in stderr
        text = rows.read_text()
        records = list(csv.reader(io.StringIO(text, newline="")))
        assert text.endswith("\n") and all(len(r) == len(records[0]) for r in records)
        assert lock_is_free(rows)


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs")
def test_rows_redirected_to_a_full_disk_are_whole_and_the_run_exits_2(parts, model_dir, tmp_path):
    with _tmpfs(tmp_path / "full", 4096) as real:
        if not real:
            _no_tmpfs()
        target = tmp_path / "full" / "rows.csv"
        long_name = tmp_path / ("a-long-folder-name-" * 5)  # 60 rows need about 10 KiB
        long_name.symlink_to(parts)
        args = ["score", str(long_name), "--model", model_dir, "--settle", "0", "--workers", "0"]
        with open(target, "w") as stdout:
            proc = subprocess.run(
                [sys.executable, "-m", "winclip_cli", *args],
                env=env_for(tmp_path / "cache"),
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        stderr = proc.stderr.decode()
        assert proc.returncode == 2, stderr
        assert "No space left on device" in stderr and "Traceback" not in stderr
        text = target.read_text()
        records = list(csv.reader(io.StringIO(text, newline="")))
        assert text.endswith("\n") and all(len(r) == len(records[0]) for r in records)
        assert len(records) > 10


def _workers_of(pid: int) -> list[int]:
    """The forked children of ``pid`` (DataLoader workers share its command line)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/cmdline").read_bytes() == cmdline:
                    found.append(int(child))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie holds nothing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_after_a_sigkill_of_the_run_the_lock_is_free_within_a_second(parts, model_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    args = ["segment", str(parts), "--model", model_dir, "--out", str(tmp_path / "out")]
    args += ["-o", str(rows), "--workers", "2", "--batch-size", "1", "--settle", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_START, *args],
        env=env_for(tmp_path / "cache"),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (rows.exists() and rows.read_text().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
        workers = _workers_of(proc.pid)
        assert workers, "the run has no worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Polled, not timed: the lock must be free within a second, the workers gone.
        free_by = time.monotonic() + 1.0
        while not (lock_is_free(rows) and all(_gone(w) for w in workers)):
            assert time.monotonic() < free_by, "a worker outlived its parent, or holds the lock"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----- 2. outputs that overwrite inputs ------------------------------------------------


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    (tmp_path / "in").mkdir()
    names = {"cal": "screw.cal", "photo": "in/photo.jpg", "rows": "rows.csv", "model": "m"}
    found = {key: tmp_path / name for key, name in names.items()}
    found["cal"].write_bytes(b"cal")
    found["photo"].write_bytes(b"jpg")
    found["rows"].write_text("path,score\n")
    found["model"].mkdir()
    (found["model"] / "open_clip_config.json").write_text("{}")
    return found


def reads(files: dict[str, Path]) -> list[FileUse]:
    return [
        FileUse("the --calibration file", files["cal"]),
        FileUse("an image named in rows.csv", files["photo"]),
        FileUse("the rows", files["rows"]),
        FileUse("the model folder", files["model"]),
    ]


@pytest.mark.parametrize(
    ("write", "named"),
    [
        ("screw.cal", "--calibration"),  # -o on the calibration file
        ("in/photo.jpg", "image named"),  # report -o on a photo the rows name
        ("in/../screw.cal", "--calibration"),  # `..`
        ("link-to-cal", "--calibration"),  # a symbolic link
        ("hard-link", "--calibration"),  # a hard link (another path, the same inode)
        ("via-link/photo.jpg", "image named"),  # through a linked folder
        ("m/open_clip_config.json", "model folder"),  # an existing file in a folder read
    ],
)
def test_an_output_that_is_a_read_file_is_refused_naming_both(files, tmp_path, write, named):
    (tmp_path / "link-to-cal").symlink_to(files["cal"])
    os.link(files["cal"], tmp_path / "hard-link")
    (tmp_path / "via-link").symlink_to(tmp_path / "in")
    target = tmp_path / write
    with pytest.raises(OverlapError) as info:
        refuse_overlaps(reads(files), [FileUse("-o", target)])
    message = str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert f"-o {target}" in message and named in message
    if write == "hard-link":
        assert "hard link" in message


def test_two_outputs_that_are_one_file_are_refused(files, tmp_path):
    manifest = manifest_path(tmp_path / "out.csv")
    writes = [FileUse("-o", tmp_path / "out.csv"), FileUse("the run manifest", manifest)]
    with pytest.raises(OverlapError, match=r"the run manifest and --report name the same file"):
        refuse_overlaps(reads(files), [*writes, FileUse("--report", manifest)])


def test_outputs_apart_from_the_reads_pass(files, tmp_path):
    writes = [
        FileUse("-o", tmp_path / "new.csv"),
        FileUse("the run manifest", manifest_path(tmp_path / "new.csv")),
        FileUse("--report", tmp_path / "report.html"),
        FileUse("--out", tmp_path / "m" / "new-file.png"),  # a new file in a folder read
        *(FileUse("--out", tmp_path / "out" / f"{i}.png") for i in range(3)),
    ]
    refuse_overlaps(reads(files), writes)


def test_a_file_read_and_written_under_one_role_is_what_the_command_means(files):
    """--resume reads -o and its manifest, and writes them."""
    rows = files["rows"]
    refuse_overlaps(
        [FileUse("-o", rows), FileUse("the run manifest", manifest_path(rows))],
        [FileUse("-o", rows), FileUse("the run manifest", manifest_path(rows))],
    )


# ----- 3. a damaged manifest -----------------------------------------------------------


def a_manifest(rows: Path) -> bytes:
    identity = {"size": 3, "mtime_ns": 5, "sha256": "a" * 64}
    RunManifest({"--class": "screw"}, "w1", {"/in/a.png": identity}).write(rows)
    return manifest_path(rows).read_bytes()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda b: b[: len(b) // 2], "not JSON"),  # cut off mid-JSON
        (lambda b: b.replace(b"screw", b"scr\xffw"), "not text"),  # a stray byte
        (lambda b: b.replace(b'"size": 3', b'"size": "3"'), "inputs./in/a.png.size"),
        (lambda b: json.dumps({**json.loads(b), "inputs": {"/in/a.png": 7}}).encode(), "inputs"),
        (lambda b: json.dumps({**json.loads(b), "settings": []}).encode(), "settings"),
        (lambda b: json.dumps([1]).encode(), "not a winclip run manifest"),
        (lambda b: json.dumps({**json.loads(b), "version": "1"}).encode(), "version"),
        (lambda b: b"", "not JSON"),
    ],
)
def test_a_damaged_manifest_is_refused_with_how_to_recover(tmp_path, damage, said):
    rows = tmp_path / "rows.csv"
    manifest_path(rows).write_bytes(damage(a_manifest(rows)))
    with pytest.raises(ManifestDamagedError) as info:
        read_manifest(rows)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert said in message and "--rebuild-manifest" in message and str(rows) in message


def test_an_older_manifest_is_told_from_a_damaged_one(tmp_path):
    rows = tmp_path / "rows.csv"
    data = json.loads(a_manifest(rows))
    manifest_path(rows).write_text(json.dumps({**data, "version": 0}))
    assert read_manifest(rows) is None  # an older winclip's: resumed as before manifests
    manifest_path(rows).write_text(json.dumps({**data, "version": 2}))
    with pytest.raises(Exception, match="newer winclip") as info:
        read_manifest(rows)
    assert info.value.exit_code == ExitCode.USAGE  # type: ignore[attr-defined]
    manifest_path(rows).write_text(json.dumps(data))
    assert read_manifest(rows).inputs["/in/a.png"]["size"] == 3


def test_a_rebuilt_manifest_hashes_what_the_rows_name(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"abc")
    manifest, unreadable = rebuilt_manifest(
        {"--class": "screw"}, {"/k/a.png": image, "/k/gone.png": tmp_path / "gone.png"}
    )
    assert unreadable == ["/k/gone.png"]
    assert manifest.inputs["/k/a.png"]["size"] == 3 and manifest.settings == {"--class": "screw"}


def test_resume_with_a_damaged_manifest_exits_2_and_keeps_the_rows(parts, model_dir, tmp_path):

    rows = tmp_path / "rows.csv"
    args = ["score", str(parts), "--model", model_dir, "-o", str(rows)]
    code, stderr = invoke(args, tmp_path / "cache")
    assert code == 0, stderr
    path = manifest_path(rows)
    path.write_bytes(path.read_bytes()[:100])  # cut mid-JSON
    before = rows.read_bytes()
    code, stderr = invoke([*args, "--resume", "--class", "nut"], tmp_path / "cache")
    assert code == 2, stderr
    assert "damaged" in stderr and "--rebuild-manifest" in stderr
    assert rows.read_bytes() == before


# ----- 4. every file read is checked against its schema --------------------------------


def tiny_bank(**meta: object) -> ReferenceBank:
    windows = {2: torch.randn(8, 6), 3: torch.randn(2, 6)}
    return ReferenceBank(torch.randn(18, 8), windows, {"num_images": 2, "model": "t", **meta})


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"num_images": "two"}, "meta.num_images"),  # a string where a count belongs
        ({"num_images": 2.0}, "meta.num_images"),
        ({"references": None}, "meta.references"),  # null references
        ({"scales": [2, "3"]}, "meta.scales[1]"),
        ({"input_size": [48]}, "meta.input_size"),
        ({"tile_overlap": "a quarter"}, "meta.tile_overlap"),
    ],
)
def test_a_bank_that_breaks_its_schema_is_exit_2_naming_the_field(tmp_path, meta, field):
    path = tmp_path / "bank.pt"
    save_bank(tiny_bank(**meta), path)
    with pytest.raises(BankFileError) as info:
        load_bank(path)
    assert info.value.exit_code == ExitCode.USAGE
    assert str(path) in str(info.value) and f"field {field}" in str(info.value)


def test_a_bank_with_null_tensors_is_refused(tmp_path):
    path = tmp_path / "bank.pt"
    save_bank(tiny_bank(), path)
    payload = torch.load(path, weights_only=True)
    payload["windows"]["2"] = None
    torch.save(payload, path)
    with pytest.raises(BankFileError, match=r"field windows\.2"):
        load_bank(path)


SETTINGS = {
    "class": "screw",
    "temperature": 0.07,
    "prompts": {"normal": ["{}"], "anomalous": ["damaged {}"], "templates": ["a {}."]},
    "k": 0,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"class": ""}, "class"),  # an empty class
        ({"class": " _ "}, "class"),
        ({"temperature": 0.0}, "temperature"),  # zero
        ({"temperature": -0.07}, "temperature"),  # negative
        ({"temperature": "0.07"}, "temperature"),
        ({"prompts": {"normal": [], "anomalous": ["x {}"]}}, "prompts.normal"),  # empty list
        ({"prompts": {"normal": ["{}"], "colour": ["{}"]}}, "prompts.colour"),
        ({"k": -1}, "k"),
    ],
)
def test_a_calibration_that_breaks_its_schema_is_exit_2_naming_the_field(tmp_path, change, field):
    path = tmp_path / "screw.cal"
    save_calibration(Calibration({**SETTINGS, **change}, [0.1, 0.2], None, None, ["a", "b"]), path)
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    assert info.value.exit_code == ExitCode.USAGE
    assert str(path) in str(info.value) and f"field {field}:" in str(info.value)


def test_a_good_calibration_still_loads(tmp_path):
    path = tmp_path / "screw.cal"
    save_calibration(Calibration(SETTINGS, [0.1, 0.2], None, tiny_bank(), ["a", "b"]), path)
    # Saved without a precision, it reads as an older file does: fp32.
    assert load_calibration(path).settings == {**SETTINGS, "precision": "fp32"}


def test_a_prompt_file_names_the_field(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"normal": ["ok {}"], "anomalous": ["bad {}", 3]}))
    with pytest.raises(Exception, match=r"p\.json: field anomalous: every entry") as info:
        load_prompt_file(path)
    assert info.value.exit_code == ExitCode.USAGE  # type: ignore[attr-defined]


# ----- the cache folder ----------------------------------------------------------------


def test_a_home_that_does_not_exist_gets_no_cache_and_a_warning(tmp_path, monkeypatch):
    home = tmp_path / "nonexistent"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("WINCLIP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    with pytest.warns(UserWarning, match="does not exist") as caught:
        folder = default_cache_dir()
    assert not folder.is_relative_to(home) and str(folder) in str(caught[0].message)
    assert not home.exists()


def test_the_cache_folder_follows_the_environment_and_the_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WINCLIP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == tmp_path / ".cache" / "winclip"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "winclip"
    name = uuid.uuid4().hex
    monkeypatch.setenv("WINCLIP_CACHE_DIR", str(tmp_path / name))
    assert default_cache_dir() == tmp_path / name


# ----- 4. rows read for --resume; 5. one row per input ----------------------------------


def csv_record(**change: str) -> dict[str, str]:
    base = {"path": "a.png", "score": "0.5", "label": "", "status": "ok", "error": ""}
    return {**base, **change}


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (csv_record(score="abc"), "score"),
        (csv_record(score="nan"), "score"),
        (csv_record(score="1.5"), "score"),
        (csv_record(score=""), "score"),  # an ok row without its score
        (csv_record(status="fine"), "status"),
        (csv_record(label="bad"), "label"),
        (csv_record(path=""), "path"),
    ],
)
def test_a_csv_row_that_breaks_the_schema_names_the_row_and_field(record, field):
    rows = [csv_record(), record]
    with pytest.raises(DamagedFileError) as info:
        check_rows(rows, "csv", "rows.csv")
    assert info.value.exit_code == ExitCode.USAGE
    assert f"rows.csv, row 2: field {field}" in str(info.value)


def test_good_rows_pass_as_they_are():
    rows = [csv_record(), csv_record(path="b.png", score="", status="error", error="broken")]
    assert check_rows(rows, "csv", "rows.csv") == rows
    jsonl = [{"path": "a.png", "score": 0.25, "status": "ok", "error": "", "map_max": 1}]
    assert check_rows(jsonl, "jsonl", "rows.jsonl") == jsonl
    with pytest.raises(DamagedFileError, match="field score"):
        check_rows([{**jsonl[0], "score": "0.25"}], "jsonl", "rows.jsonl")  # JSON: a number


def test_one_row_per_input_keeps_the_last_whole_row_in_its_place():
    rows = [
        csv_record(path="a.png", score="0.1"),
        csv_record(path="b.png"),
        csv_record(path="./a.png", score="0.3"),  # the same input by another name
        csv_record(path="c.png"),
    ]
    result = one_row_per_input(rows, os.path.abspath)
    assert [r["path"] for r in result.rows.values()] == ["b.png", "./a.png", "c.png"]
    assert result.dropped == 1 and "one row per input" in (result.note or "")
    assert one_row_per_input(rows[:2], os.path.abspath).note is None


def test_error_rows_of_files_that_are_gone_are_found_once(tmp_path):
    (tmp_path / "here.png").write_bytes(b"x")
    rows = {
        str(tmp_path / "here.png"): csv_record(status="error", score=""),
        str(tmp_path / "gone.png"): csv_record(status="error", score=""),
        str(tmp_path / "gone-ok.png"): csv_record(),
    }
    assert gone_error_rows(rows, os.path.exists) == [str(tmp_path / "gone.png")]


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs")
@pytest.mark.parametrize("where", ["--report", "-o"])
def test_a_full_disk_for_the_report_or_the_manifest_is_exit_2(parts, model_dir, tmp_path, where):

    with _tmpfs(tmp_path / "full", 4096) as real:
        if not real:
            _no_tmpfs()
        (tmp_path / "full" / "filler").write_bytes(b"x" * 4096)
        args = ["score", str(parts), "--model", model_dir]
        if where == "--report":
            args += [
                "-o",
                str(tmp_path / "rows.csv"),
                "--report",
                str(tmp_path / "full" / "r.html"),
            ]
        else:  # the manifest beside the rows is written before the first row
            args += ["-o", str(tmp_path / "full" / "rows.csv")]
        code, stderr = invoke(args, tmp_path / "cache")
        assert code == 2, stderr
        assert "cannot write" in stderr and "No space left on device" in stderr
        assert not [p for p in (tmp_path / "full").iterdir() if p.name.startswith(".winclip-")]


# ----- phase 2: through the command line -------------------------------------------------


def scored(parts: Path, model_dir: str, rows: Path, *extra: str) -> list[str]:
    return ["score", str(parts), "--model", model_dir, "-o", str(rows), *extra]


@pytest.fixture()
def few(tmp_path) -> Path:
    """Four small parts of our own: tests below delete and break them."""
    folder = tmp_path / "few"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_rebuild_manifest_resumes_a_damaged_one_with_a_warning_and_checks_again(
    few, model_dir, tmp_path
):
    rows, cache = tmp_path / "rows.csv", tmp_path / "cache"
    assert invoke(scored(few, model_dir, rows), cache)[0] == 0
    path = manifest_path(rows)
    path.write_bytes(path.read_bytes()[:50])
    code, stderr = invoke(scored(few, model_dir, rows, "--resume", "--rebuild-manifest"), cache)
    assert code == 0, stderr
    assert "damaged" in stderr and "taken on trust" in stderr
    assert read_manifest(rows) is not None  # whole again
    code, stderr = invoke(scored(few, model_dir, rows, "--resume", "--class", "nut"), cache)
    assert code == 2 and "--class" in stderr, stderr  # the settings check is on again


def test_rebuild_manifest_needs_resume(few, model_dir, tmp_path):
    code, stderr = invoke(
        scored(few, model_dir, tmp_path / "r.csv", "--rebuild-manifest"), tmp_path
    )
    assert code == 2 and "--rebuild-manifest goes with --resume" in stderr


def test_a_resume_repairs_the_file_to_one_row_per_input(few, model_dir, tmp_path):
    rows, cache = tmp_path / "rows.csv", tmp_path / "cache"
    assert invoke(scored(few, model_dir, rows), cache)[0] == 0
    lines = rows.read_text().splitlines(keepends=True)
    rows.write_text("".join([*lines, lines[2]]))  # a row duplicated by hand
    code, stderr = invoke(scored(few, model_dir, rows, "--resume"), cache)
    assert code == 0, stderr
    assert "one row per input" in stderr
    records = list(csv.DictReader(io.StringIO(rows.read_text())))
    assert len(records) == 4 and len({r["path"] for r in records}) == 4


def test_an_error_row_of_a_file_now_gone_is_reported_once_and_no_longer_exit_3(
    few, model_dir, tmp_path
):
    rows, cache = tmp_path / "rows.csv", tmp_path / "cache"
    (few / "9-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert invoke(scored(few, model_dir, rows), cache)[0] == 3
    (few / "9-broken.png").unlink()
    code, stderr = invoke(scored(few, model_dir, rows, "--resume"), cache)
    assert code == 0, stderr
    assert "gone" in stderr and "9-broken.png" in stderr
    assert "9-broken.png" not in rows.read_text()
    code, stderr = invoke(scored(few, model_dir, rows, "--resume"), cache)
    assert code == 0 and "gone" not in stderr, stderr


@pytest.mark.parametrize(
    ("cell", "field"), [("abc", "score"), ("0.5x", "score"), ("maybe", "status")]
)
def test_a_resumed_row_that_breaks_the_schema_is_exit_2(few, model_dir, tmp_path, cell, field):
    rows, cache = tmp_path / "rows.csv", tmp_path / "cache"
    assert invoke(scored(few, model_dir, rows, "--threshold", "0.5"), cache)[0] == 0
    records = list(csv.reader(io.StringIO(rows.read_text())))
    column = records[0].index(field)
    records[2][column] = cell
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    rows.write_text(buffer.getvalue())
    code, stderr = invoke(scored(few, model_dir, rows, "--resume", "--threshold", "0.5"), cache)
    assert code == 2 and f"row 2: field {field}" in stderr and str(rows) in stderr, stderr


def test_no_output_of_a_run_may_be_its_calibration_or_manifest(few, model_dir, tmp_path):
    cache, cal = tmp_path / "cache", tmp_path / "screw.cal"
    outcome = run_runner(
        ["calibrate", few, "--model", model_dir, "-o", cal], env={"WINCLIP_CACHE_DIR": str(cache)}
    )
    assert outcome.code == 0, outcome.stderr
    before = cal.read_bytes()
    base = ["score", str(few), "--model", model_dir, "--calibration", str(cal)]
    for extra in (["-o", str(cal)], ["--report", str(cal)]):
        code, stderr = invoke([*base, *extra], cache)
        assert code == 2 and "--calibration file" in stderr and str(cal) in stderr, stderr
    assert cal.read_bytes() == before
    rows = tmp_path / "rows.csv"
    code, stderr = invoke([*base, "-o", str(rows), "--report", str(manifest_path(rows))], cache)
    assert code == 2 and "the run manifest and --report name the same file" in stderr, stderr


def test_a_report_never_overwrites_an_image_its_rows_name(few, model_dir, tmp_path):
    rows, cache = tmp_path / "rows.csv", tmp_path / "cache"
    assert invoke(scored(few, model_dir, rows), cache)[0] == 0
    photo = few / "0.png"
    before = photo.read_bytes()
    outcome = run_runner(["report", rows, "-o", photo])
    assert outcome.code == 2 and str(photo) in outcome.stderr and "row names" in outcome.stderr
    assert photo.read_bytes() == before
