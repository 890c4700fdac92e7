"""Speed and memory of winclip, measured side by side in one run (by hand, not a test).

    python benchmarks/run.py                       # default architecture, random weights
    python benchmarks/run.py --weights ckpt.pt     # a checkpoint you have
    python benchmarks/run.py --memory-images 200   # peak RSS of `segment` over N images

Random weights cost exactly what the real ones do. Prints a Markdown report: the matmul
rate of this process, images/s per command and batch size, the ratios the project
targets, the cold-start breakdown, peak RSS, and (on a GPU) fp16/bf16 against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "parts" / "local" / "textile_0001.jpg"
MODEL = "ViT-B-16-plus-240"
# WINCLIP.md "Cost": full pass + windows of the default model, per image.
GFLOP_PER_SEGMENT_IMAGE = 669.0


def best_of(fn, repeat: int = 3) -> float:
    """Shortest wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n: int = 4096) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: a @ b) / 1e9


def make_checkpoint(folder: Path) -> Path:
    import open_clip

    path = folder / "random-vit-b-16-plus-240.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(MODEL).state_dict(), path)
    return path


def throughput(wc, text, batch_sizes: list[int], repeat: int) -> tuple[list[dict], float]:
    """Seconds per image for each command and batch size; returns rows and the bank."""
    rows = []
    refs = torch.randn(4, 3, *wc.input_size)
    bank = wc.reference_bank(refs)
    for bs in batch_sizes:
        x = torch.randn(bs, 3, *wc.input_size)
        with torch.inference_mode():
            bare = best_of(lambda x=x: wc.backbone.clip.encode_image(x), repeat) / bs
        runs = {
            "score": lambda x=x: wc.predict(x, text=text, maps=False),
            "segment": lambda x=x: wc.predict(x, text=text, maps=True),
            "fewshot": lambda x=x: wc.predict(x, text=text, bank=bank, maps=True),
        }
        for name, fn in runs.items():
            per_image = best_of(fn, repeat) / bs
            rows.append({"command": name, "batch": bs, "s_per_image": per_image, "bare": bare})
    return rows, bank


def pipeline_rates(wc, count: int, batch: int) -> dict[str, float]:
    """Seconds per image of whole runs from files on disk (decode, score, write rows and
    overlays) through the same pipeline as the CLI, model already loaded."""
    from winclip_cli.commands.run import run
    from winclip_cli.options import RunOptions
    from winclip_cli.progress import Reporter

    sources = sorted((ROOT / "sample_data" / "parts").rglob("*.jpg"))
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(count):
            shutil.copy(sources[i % len(sources)], folder / f"img_{i:04d}.jpg")
        for mode in ("score", "segment"):
            opts = RunOptions(
                inputs=[folder],
                class_name="textile",
                maps=mode == "segment",
                out_dir=Path(tmp) / "out",
                output=str(Path(tmp) / f"{mode}.csv"),
                batch_size=batch,
            )
            start = time.perf_counter()
            run(opts, Reporter(quiet=True), model=wc)
            rates[mode] = (time.perf_counter() - start) / count
    return rates


def parity(wc, text, bank) -> float:
    """Largest score/map difference between the fast path and open_clip's own blocks."""
    x = torch.randn(2, 3, *wc.input_size)
    fast = wc.predict(x, text=text, bank=bank)
    wc.encoder.fast_blocks = False
    try:
        slow = wc.predict(x, text=text, bank=bank)
    finally:
        wc.encoder.fast_blocks = True
    return max(
        (fast.image_scores - slow.image_scores).abs().max().item(),
        (fast.grid_maps - slow.grid_maps).abs().max().item(),
    )


NAIVE = """
import time, torch
t0 = time.perf_counter()
import open_clip
from winclip_cli.prompts import PromptSet
t1 = time.perf_counter()
model = open_clip.create_model({model!r}, pretrained={weights!r}).eval()
tok = open_clip.get_tokenizer({model!r})
t2 = time.perf_counter()
normal, anomalous = PromptSet().prompts("textile")
with torch.inference_mode():
    T = torch.stack([torch.nn.functional.normalize(model.encode_text(tok(g)), dim=-1).mean(0)
                     for g in (normal, anomalous)])
t3 = time.perf_counter()
from PIL import Image
x = torch.nn.functional.interpolate(torch.rand(1, 3, 250, 250), size=(240, 240))
with torch.inference_mode():
    model.encode_image(x)
t4 = time.perf_counter()
print({{"import": t1 - t0, "build+load": t2 - t1, "text": t3 - t2, "forward": t4 - t3}})
"""

OURS = """
import time, sys
t0 = time.perf_counter()
from winclip_cli import WinClip
from winclip_cli.data import open_image
import torch
t1 = time.perf_counter()
wc = WinClip.load(weights={weights!r})
t2 = time.perf_counter()
T = wc.text_embeddings("textile")
t3 = time.perf_counter()
wc.predict(wc.preprocess(open_image(__import__("pathlib").Path({image!r})))[None], T, maps=False)
t4 = time.perf_counter()
print({{"import": t1 - t0, "build+load": t2 - t1, "text": t3 - t2, "forward": t4 - t3}})
"""


def timed_subprocess(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def cold_start(weights: Path, cache: Path, extra: tuple[str, ...] = ()) -> dict:
    """`winclip score one.jpg` (warm text cache) against the naive sequence, side by side;
    ``extra``: more CLI options (benchmarks/precision.py adds --precision)."""
    env = {**os.environ, "WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    py = sys.executable
    cli = [py, "-m", "winclip_cli", "score", str(SAMPLE), "--weights", str(weights),
           "--class", "textile", "--device", "cpu", "-q", *extra]  # fmt: skip
    subprocess.run(cli, env=env, capture_output=True, check=True)  # warms the text cache
    ours_cli, _ = min(timed_subprocess(cli, env) for _ in range(3))
    naive_wall, naive_out = timed_subprocess(
        [py, "-c", NAIVE.format(model=MODEL, weights=str(weights))], env
    )
    _, ours_out = min(
        timed_subprocess([py, "-c", OURS.format(weights=str(weights), image=str(SAMPLE))], env)
        for _ in range(2)
    )
    return {
        "cli_wall": ours_cli,
        "naive_wall": naive_wall,
        "naive": eval(naive_out.strip().splitlines()[-1]),
        "ours": eval(ours_out.strip().splitlines()[-1]),
    }


def peak_rss_segment(weights: Path, count: int, cache: Path) -> float:
    """Peak RSS (GB) of a `segment` subprocess over ``count`` copies of a sample image."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(count):
            shutil.copy(SAMPLE, folder / f"img_{i:04d}.jpg")
        cmd = [sys.executable, "-m", "winclip_cli", "segment", str(folder), "--weights",
               str(weights), "--out", str(Path(tmp) / "out"), "-o", str(Path(tmp) / "rows.csv"),
               "--device", "cpu", "-q"]  # fmt: skip
        env = {**os.environ, "WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
        return peak_rss(cmd, env)


def peak_rss(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS (GB) of the command ``cmd`` run with ``env``.

    ru_maxrss of RUSAGE_CHILDREN is the largest child ever waited for, so the run gets a
    fresh parent of its own whose only child it is (kB on Linux)."""
    measure = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, *cmd], env=env, check=True, capture_output=True
    )
    return int(done.stdout.decode().split()[-1]) / 1e6


def gpu_check(weights: Path, text_cpu) -> list[dict]:
    from winclip_cli import WinClip

    rows = []
    x = torch.randn(16, 3, 240, 240)
    ref = WinClip.load(weights=weights, device="cuda", precision="fp32")
    base = ref.predict(x, text=text_cpu)
    for precision in ("fp32", "fp16", "bf16"):
        wc = WinClip.load(weights=weights, device="cuda", precision=precision)
        for bs in (1, 16):
            xb = x[:bs]
            wc.predict(xb, text=text_cpu)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(3):
                out = wc.predict(xb, text=text_cpu)
            torch.cuda.synchronize()
            per = (time.perf_counter() - start) / 3 / bs
            rows.append({"precision": precision, "batch": bs, "s_per_image": per})
        out = wc.predict(x, text=text_cpu)
        rows[-1]["max_diff"] = max(
            (out.image_scores - base.image_scores).abs().max().item(),
            (out.grid_maps - base.grid_maps).abs().max().item(),
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint of ViT-B-16-plus-240")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pipeline-images", type=int, default=32)
    parser.add_argument("--memory-images", type=int, default=0, help="0 skips the RSS run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from winclip_cli import WinClip

    work = Path(tempfile.mkdtemp(prefix="winclip-bench-"))
    try:
        weights = args.weights or make_checkpoint(work)
        cache = work / "cache"
        report: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        }
        report["matmul_gflops"] = matmul_gflops()
        wc = WinClip.load(weights=weights, device="cpu", cache_dir=cache)
        text = wc.text_embeddings("textile")
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        report["throughput"], bank = throughput(wc, text, sizes, args.repeat)
        report["parity_max_diff"] = parity(wc, text, bank)
        report["pipeline_batch"] = sizes[-1]
        report["pipeline"] = pipeline_rates(wc, args.pipeline_images, sizes[-1])
        report["matmul_gflops_after"] = matmul_gflops()
        report["cold_start"] = cold_start(weights, cache)
        if args.memory_images:
            report["weights_gb"] = weights.stat().st_size / 1e9
            report["peak_rss_gb"] = {
                n: peak_rss_segment(weights, n, cache)
                for n in sorted({max(1, args.memory_images // 4), args.memory_images})
            }
        if torch.cuda.is_available():
            report["gpu"] = gpu_check(weights, text)
            report["gpu_name"] = torch.cuda.get_device_name()
        print_report(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(r: dict) -> None:
    rate = max(r["matmul_gflops"], r["matmul_gflops_after"])
    print(f"Machine: {r['machine']}\n")
    print(f"fp32 matmul (4096^2) in this process: {rate:.0f} GFLOP/s\n")
    print("| command | batch | s/image | images/s | ratio |")
    print("|---|---|---|---|---|")
    for row in r["throughput"]:
        s = row["s_per_image"]
        if row["command"] == "score":
            ratio = f"{s / row['bare']:.2f}x bare encode_image ({row['bare']:.3f} s)"
        else:
            effective = GFLOP_PER_SEGMENT_IMAGE / s
            ratio = f"{effective:.0f} GFLOP/s eff. = {effective / rate:.0%} of matmul"
        print(f"| {row['command']} | {row['batch']} | {s:.3f} | {1 / s:.2f} | {ratio} |")
    bs = r["pipeline_batch"]
    bare = next(t["bare"] for t in r["throughput"] if t["batch"] == bs)
    p = r["pipeline"]
    print(f"\nWhole runs from JPEG files (batch {bs}, decoding in DataLoader workers, rows "
          f"written; segment also renders and writes each overlay PNG):\n")  # fmt: skip
    print(f"- score: {p['score']:.3f} s/image = {p['score'] / bare:.2f}x bare encode_image")
    print(f"- segment: {p['segment']:.3f} s/image = "
          f"{GFLOP_PER_SEGMENT_IMAGE / p['segment'] / rate:.0%} of matmul rate")  # fmt: skip
    print(f"\nFast path vs open_clip's own blocks: max difference {r['parity_max_diff']:.2e}\n")
    c = r["cold_start"]
    print(f"Cold start, `winclip score one.jpg` (weights on disk, warm text cache): "
          f"{c['cli_wall']:.2f} s; naive sequence: {c['naive_wall']:.2f} s; "
          f"ratio {c['cli_wall'] / c['naive_wall']:.2f}\n")  # fmt: skip
    print("| stage | naive (s) | winclip (s) |")
    print("|---|---|---|")
    for stage in ("import", "build+load", "text", "forward"):
        print(f"| {stage} | {c['naive'][stage]:.2f} | {c['ours'][stage]:.2f} |")
    if "peak_rss_gb" in r:
        print(f"\nPeak RSS of `segment` (weights file {r['weights_gb']:.2f} GB):")
        for n, gb in r["peak_rss_gb"].items():
            print(f"- {n} images: {gb:.2f} GB")
    if "gpu" in r:
        print(f"\nGPU: {r['gpu_name']}\n\n| precision | batch | s/image | max diff vs fp32 |")
        print("|---|---|---|---|")
        for g in r["gpu"]:
            diff = f"{g['max_diff']:.1e}" if "max_diff" in g else ""
            print(f"| {g['precision']} | {g['batch']} | {g['s_per_image']:.4f} | {diff} |")


if __name__ == "__main__":
    main()
