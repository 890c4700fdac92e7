"""winclip on a CUDA machine: precisions, batch sizes, memory and Ray (by hand, not a test).

    python benchmarks/gpu.py                      # default architecture, random weights
    python benchmarks/gpu.py --weights ckpt.pt    # a checkpoint you have
    python benchmarks/gpu.py --dry-run            # the same code on the CPU, tiny model

For fp32, fp16 and bf16 and each batch size of the sweep: score and segment images/s
(model loaded, batches from pinned host memory, synchronised), segment ms/image, peak
GPU memory, and the largest score/map difference against fp32. Then whole segment runs
from JPEG files on the Ray engine with one GPU per actor (one actor per GPU) at fp16.
Prints one Markdown table, and the verdict on the target (segment <= 5 ms/image at fp16).

--dry-run runs every step on the CPU with the tiny test model (fp32 and bf16: the CPU
has no fp16) and Ray actors without GPUs, so the script is known to work before a GPU
machine is booked; tests/test_gpu_benchmark.py runs it. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.ray_engine import make_inputs, timed  # noqa: E402
from benchmarks.run import make_checkpoint  # noqa: E402

TARGET_MS = 5.0  # segment at fp16 on one H200


@dataclass
class Setup:
    """Where and what the benchmark runs: the real thing, or its dry run."""

    device: str
    precisions: tuple[str, ...]
    batches: tuple[int, ...]
    repeat: int
    model_args: list[str]  # CLI options naming the model (for the Ray runs)
    load: dict  # WinClip.load keyword arguments
    ray_images: int
    ray_gpus: int  # actors, one GPU each (0: CPU actors, dry run)


def setup(args: argparse.Namespace, work: Path) -> Setup:
    if args.dry_run:
        from tests.tiny_model import TINY_NAME, make_tiny_model

        tiny = make_tiny_model(work / "tiny")
        return Setup(
            "cpu", ("fp32", "bf16"), (1, 2), 1, ["--model", str(tiny["local_dir"])],
            {"model": TINY_NAME, "weights": tiny["weights"]}, 4, 0,
        )  # fmt: skip
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the script on a CPU")
    weights = args.weights or make_checkpoint(work)
    batches = tuple(int(b) for b in args.batches.split(","))
    return Setup(
        "cuda", ("fp32", "fp16", "bf16"), batches, args.repeat, ["--weights", str(weights)],
        {"weights": weights}, args.ray_images, torch.cuda.device_count(),
    )  # fmt: skip


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_image(fn, images: int, repeat: int, device: str) -> float:
    """Seconds per image of ``fn`` (best of ``repeat`` after a warm-up)."""
    fn()
    synchronise(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return best / images


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def batch_rows(s: Setup, wc, precision: str, diff: float) -> list[dict]:
    """One row per batch size at one precision; a batch that runs out of memory ends the
    sweep with an 'out of memory' row."""
    text = wc.text_embeddings("object")
    rows = []
    for batch in s.batches:
        x = torch.randn(batch, 3, *wc.input_size)
        x = x.pin_memory() if s.device == "cuda" else x
        row = {"precision": precision, "batch": batch, "diff": diff}
        try:
            reset_peak(s.device)
            segment = lambda x=x: wc.predict(x, text=text, maps=True)  # noqa: E731
            row["segment"] = per_image(segment, batch, s.repeat, s.device)
            row["memory"] = peak_memory_gb(s.device)
            score = lambda x=x: wc.predict(x, text=text, maps=False)  # noqa: E731
            row["score"] = per_image(score, batch, s.repeat, s.device)
        except torch.OutOfMemoryError:
            rows.append({**row, "oom": True})
            break
        rows.append(row)
    return rows


def sweep(s: Setup, cache: Path) -> list[dict]:
    """Every precision's batch rows, with its largest score/map difference to fp32."""
    from winclip_cli import WinClip

    rows: list[dict] = []
    base = None
    for precision in s.precisions:
        wc = WinClip.load(device=s.device, precision=precision, cache_dir=cache, **s.load)
        probe = torch.randn(2, 3, *wc.input_size, generator=torch.Generator().manual_seed(0))
        out = wc.predict(probe, text=wc.text_embeddings("object"))
        base = base or out
        diff = max(
            (out.image_scores - base.image_scores).abs().max().item(),
            (out.grid_maps - base.grid_maps).abs().max().item(),
        )
        rows += batch_rows(s, wc, precision, diff)
        reset_peak(s.device)
    return rows


def ray_rows(s: Setup, work: Path) -> list[dict]:
    """Whole `segment` runs from JPEG files on the Ray engine, one GPU per actor."""
    actors = max(1, s.ray_gpus)
    precision = "fp16" if s.device == "cuda" else "fp32"
    folder = work / "ray-in"
    folder.mkdir()
    inputs = make_inputs(folder, s.ray_images)
    rows = []
    for batch in s.batches[-2:] if s.ray_gpus else s.batches[-1:]:
        out = work / f"ray-{batch}"
        gpus = ["--ray-gpus-per-worker", "1"] if s.ray_gpus else []
        args = ["segment", str(inputs), *s.model_args, "--batch-size", str(batch),
                "--precision", precision, "--device", s.device, "--engine", "ray",
                "--ray-workers", str(actors), *gpus,
                "--out", str(out), "-o", str(out.with_suffix(".csv"))]  # fmt: skip
        wall, _, steady = timed(args, os.cpu_count() or 1, out.with_suffix(".csv"), s.ray_images)
        label = f"{precision}, Ray {actors} actor(s) x {'1 GPU' if s.ray_gpus else 'CPU'}"
        rows.append({"precision": label, "batch": batch, "segment": 1 / steady, "wall": wall})
    return rows


def cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def print_table(s: Setup, rows: list[dict]) -> None:
    name = torch.cuda.get_device_name() if s.device == "cuda" else f"CPU ({platform.machine()})"
    print(f"Device: {name}; torch {torch.__version__}" + ("; DRY RUN" if s.device == "cpu" else ""))
    print("\n| precision | batch | score images/s | segment images/s | segment ms/image "
          "| peak GPU GB | max diff vs fp32 |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        if r.get("oom"):
            print(f"| {r['precision']} | {r['batch']} | out of memory | | | | |")
            continue
        score = 1 / r["score"] if "score" in r else None
        print(f"| {r['precision']} | {r['batch']} | {cell(score, '.1f')} | "
              f"{1 / r['segment']:.1f} | {1000 * r['segment']:.2f} | "
              f"{cell(r.get('memory'), '.2f')} | {cell(r.get('diff'), '.1e')} |")  # fmt: skip
    fp16 = [r["segment"] for r in rows if r["precision"] == "fp16" and "segment" in r]
    if fp16:
        best = 1000 * min(fp16)
        verdict = "met" if best <= TARGET_MS else "missed"
        print(f"\nTarget segment <= {TARGET_MS} ms/image at fp16: {best:.2f} ms, {verdict}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint of ViT-B-16-plus-240")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray-images", type=int, default=2048)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="winclip-gpu-") as tmp:
        work = Path(tmp)
        s = setup(args, work)
        rows = sweep(s, work / "cache")
        if not args.no_ray:
            rows += ray_rows(s, work)
        print_table(s, rows)


if __name__ == "__main__":
    main()
