"""The Ray engine against the local engine on one machine (by hand, not a test).

    python benchmarks/ray_engine.py                 # tiny random ViT (fast; measures overhead)
    python benchmarks/ray_engine.py --default-model # ViT-B-16-plus-240, random weights (slow)

`segment` over 64 images (copies of the sample JPEGs) three ways, each a fresh process:
the local engine (torch with --threads threads), and the Ray engine with --ray-workers
actors of 1 thread each on a local Ray the run starts and stops. Prints a Markdown table:
wall time, scoring time (the run's own summary line, which for Ray includes starting
the actors), images/s from the first row to the last, and the start-up overhead (wall
minus the time the rows took at that rate).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_data" / "parts").rglob("*.jpg"))
SUMMARY = re.compile(r"(\d+) image\(s\) in ([\d.]+) s")


def make_inputs(folder: Path, count: int) -> Path:
    for i in range(count):
        source = SAMPLES[i % len(SAMPLES)]
        shutil.copy(source, folder / f"{i:04d}_{source.name}")
    return folder


def model_args(folder: Path, default: bool) -> list[str]:
    if default:
        import open_clip
        import torch

        path = folder / "random.pt"
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-16-plus-240").state_dict(), path)
        return ["--weights", str(path)]
    sys.path.insert(0, str(ROOT))
    from tests.tiny_model import make_tiny_model

    return ["--model", str(make_tiny_model(folder / "tiny")["local_dir"])]


def timed(args: list[str], threads: int, rows: Path, count: int) -> tuple[float, float, float]:
    """(wall s, scoring s, steady images/s) of `winclip ARGS` in a fresh process; the
    steady rate is from the first row in ``rows`` to the last (start-up excluded)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "winclip_cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = None
    while proc.poll() is None:
        if first is None and rows.exists() and len(rows.read_text().splitlines()) >= 2:
            first = time.perf_counter()
        time.sleep(0.02)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    match = SUMMARY.search(stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"winclip {' '.join(args)} failed ({proc.returncode}):\n{stderr}")
    first = first or started + wall
    steady = (count - 1) / max(started + wall - first, 1e-9)
    return wall, float(match.group(2)), steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, local engine")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--default-model", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        inputs = make_inputs(folder / "in", opts.images)
        model = model_args(folder, opts.default_model)
        base = ["segment", str(inputs), *model, "--batch-size", str(opts.batch_size)]
        ray = ["--engine", "ray", "--ray-workers", str(opts.ray_workers)]
        runs = {
            f"local, {opts.threads} threads": (
                [*base, "--out", str(folder / "o1"), "-o", str(folder / "a.csv")],
                opts.threads,
            ),
            f"ray, {opts.ray_workers} workers x 1 thread": (
                [*base, *ray, "--out", str(folder / "o2"), "-o", str(folder / "b.csv")],
                1,
            ),
        }
        results = {
            name: timed(args, threads, Path(args[-1]), opts.images)
            for name, (args, threads) in runs.items()
        }
        same = (folder / "a.csv").read_text().replace("/o1/", "/o2/") == (
            folder / "b.csv"
        ).read_text()
    name = "ViT-B-16-plus-240 (random weights)" if opts.default_model else "tiny random ViT"
    print(f"segment, {opts.images} images, batch {opts.batch_size}, {name}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print("| engine | wall s | scoring s | images/s, first to last row | start-up s |")
    print("|---|---|---|---|---|")
    local_rate = None
    for label, (wall, scoring, steady) in results.items():
        local_rate = local_rate or steady
        print(
            f"| {label} | {wall:.1f} | {scoring:.1f} | {steady:.2f} ({steady / local_rate:.2f}x) "
            f"| {wall - (opts.images - 1) / steady:.1f} |"
        )
    print(f"\nrows identical: {same}")


if __name__ == "__main__":
    main()
