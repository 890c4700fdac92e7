"""`--engine ray`: the same rows, files and exit codes as the local engine, on a local
Ray (2 CPUs) shared by the tests of this module; faults through the engine's test hooks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import GOOD, PARTS, REPO, check_maps_anomalous, process_env, run_runner

if os.environ.get("CI") == "true":  # CI installs the test extra, Ray included: never skip
    import ray
else:
    ray = pytest.importorskip("ray")

RAY = ["--engine", "ray", "--ray-workers", "2"]


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the session (the engine uses an existing connection as it is)."""
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """9 images in three folders, plus an unreadable file."""
    root = tmp_path / "in"
    shutil.copytree(PARTS, root)
    (root / "local" / "zz_broken.png").write_bytes(b"not a png")
    return root


def files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def both(args: list[object], tmp_path: Path, ray_args: list[str] = RAY) -> tuple[str, str]:
    """Rows of the local and the Ray engine, each run with the same --out folder (so the
    overlay column is the same text); their overlays are compared on the way."""
    out, rows = tmp_path / "out", []
    images = []
    for engine in ([], ray_args):
        shutil.rmtree(out, ignore_errors=True)
        target = tmp_path / "rows.csv"
        where = [] if args[0] == "score" else ["--out", out]
        result = run_runner([*args, *engine, *where, "-o", target])
        assert result.code == 3, result.stderr  # 3: the broken file's error row
        rows.append(target.read_bytes().decode())
        images.append(files(out) if out.exists() else {})
    assert images[0] == images[1]
    return rows[0], rows[1]


def test_segment_and_score_match_local(ray_address, inputs, model, tmp_path):
    local, remote = both(["segment", inputs, *model, "--batch-size", "3", "--save-maps"], tmp_path)
    assert local == remote
    assert "not an image" in remote and len(remote.splitlines()) == 11
    local, remote = both(["score", inputs, *model, "--format", "jsonl"], tmp_path)
    assert local == remote


def test_fewshot_with_a_saved_bank_matches_local(ray_address, inputs, model, tmp_path):
    bank_local, bank_ray = tmp_path / "local.bank", tmp_path / "ray.bank"
    args = ["fewshot", inputs, *model, "--ref", GOOD, "--k", "2", "--batch-size", "4"]
    out = tmp_path / "out"
    a = run_runner([*args, "--save-bank", bank_local, "--out", out, "-o", tmp_path / "a.csv"])
    shutil.rmtree(out)
    b = run_runner([*args, *RAY, "--save-bank", bank_ray, "--out", out, "-o", tmp_path / "b.csv"])
    assert a.code == b.code == 3, b.stderr
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert bank_local.is_file() and bank_ray.is_file()
    by_bank = ["fewshot", inputs, *model, "--ref", bank_ray, "--batch-size", "4"]
    local, remote = both(by_bank, tmp_path)
    assert local == remote == (tmp_path / "a.csv").read_text()


def test_a_killed_actor_loses_and_duplicates_nothing(
    ray_address, inputs, model, tmp_path, monkeypatch
):
    marker = tmp_path / "killed"
    monkeypatch.setenv("WINCLIP_TEST_KILL_ACTOR_AT", f"1:{marker}")
    local, remote = both(["score", inputs, *model, "--batch-size", "2"], tmp_path)
    assert marker.exists()  # an actor did die on batch 1
    assert local == remote
    paths = [line.split(",")[0] for line in remote.splitlines()[1:]]
    assert len(paths) == len(set(paths)) == 10


def test_a_worker_that_cannot_load_the_model_is_exit_4(ray_address, inputs, model, monkeypatch):
    monkeypatch.setenv("WINCLIP_TEST_ACTOR_LOAD_FAIL", "1")
    started = time.monotonic()
    out = run_runner(["score", inputs, *model, *RAY])
    assert out.code == 4
    assert time.monotonic() - started < 120
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot load the model" in errors[0], out.stderr


def test_ray_not_installed_says_how_to_install(inputs, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = run_runner(["score", inputs, *model, "--engine", "ray"])
    assert out.code == 2
    assert "pip install 'winclip[ray]'" in out.stderr


def test_ray_options_need_the_ray_engine(inputs, model):
    out = run_runner(["score", inputs, *model, "--ray-workers", "3"])
    assert out.code == 2 and "--ray-workers needs --engine ray" in out.stderr
    out = run_runner(["score", inputs, *model, "--engine", "spark"])
    assert out.code == 2 and "--engine" in out.stderr


def winclip(args: list[object], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m winclip_cli ARGS` as a process of its own (this worktree's code)."""
    env = {**process_env(env), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "winclip_cli", *(str(a) for a in args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_unreachable_cluster_is_exit_4_within_seconds(inputs, model):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = winclip(
        ["score", inputs, *model, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err
    assert time.monotonic() - started < 60  # imports included; the probe itself is 5 s at most


def test_ctrl_c_of_the_driver_then_resume_completes(ray_address, tmp_path, model):
    root = tmp_path / "in"
    for i in range(4):  # 12 images, one per batch
        shutil.copytree(PARTS, root / f"copy{i}")
    rows = tmp_path / "rows.csv"
    args = ["score", root, *model, "--batch-size", "1", "-o", rows]
    proc = winclip(
        [*args, *RAY, "--ray-address", ray_address],
        env={"WINCLIP_TEST_BATCH_DELAY_S": "0.5", "RAY_ADDRESS": ray_address},
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if rows.exists() and len(rows.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    written = rows.read_text().splitlines()
    assert 3 <= len(written) < 13, err  # the header, some rows, not all
    assert "--resume" in err
    resumed = run_runner([*args, *RAY, "--resume"])
    assert resumed.code == 0, resumed.stderr
    whole = tmp_path / "whole.csv"
    assert run_runner(["score", root, *model, "--batch-size", "1", "-o", whole]).code == 0
    assert rows.read_text() == whole.read_text()


def test_a_calibrated_segment_matches_local(ray_address, inputs, model, tmp_path):
    """Calibrate once, then segment with it on both engines: the same rows (p_value,
    label, anomalous_pixels), overlays with regions and masks."""
    cal = tmp_path / "good.cal"
    made = run_runner(["calibrate", GOOD, *model, "-o", cal])
    assert made.code == 0, made.stderr
    args = ["segment", inputs, *model, "--calibration", cal, "--false-alarm-rate", "0.25"]
    local, remote = both([*args, "--save-masks"], tmp_path)
    assert local == remote
    assert "p_value" in remote.splitlines()[0] and "anomalous_pixels" in remote.splitlines()[0]


def test_a_tiled_segment_matches_local(ray_address, inputs, model, tmp_path):
    """Tiles are cut and scored in the actors; the driver stitches the same overlays."""
    args = ["segment", inputs, *model, "--tiles", "2x2", "--batch-size", "5", "--save-maps"]
    local, remote = both(args, tmp_path)
    assert local == remote


def test_maps_anomalous_on_ray_maps_exactly_as_maps_all(ray_address, model, tmp_path):
    """--maps anomalous wraps the Ray engine (it was refused with Ray), tiled too."""
    # fp32: Ray Data forms its own batches, and at bf16 (auto on AMX) a map's last bits
    # follow the batch it was computed in, so overlay bytes could differ.
    fp32 = ["--precision", "fp32"]
    check_maps_anomalous([PARTS, *model, *RAY, *fp32, "--batch-size", "3"], tmp_path / "whole")
    check_maps_anomalous([PARTS, *model, *RAY, *fp32, "--tiles", "2x2"], tmp_path / "tiled")
