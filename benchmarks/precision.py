"""What each precision costs and how far its scores move, side by side in one process
(by hand, not a test).

    python benchmarks/precision.py                    # default architecture, random weights
    python benchmarks/precision.py --weights ckpt.pt  # a checkpoint you have
    python benchmarks/precision.py --profile          # + top operators of one segment batch
    python benchmarks/precision.py --memory-images 200 --cold-start
    python benchmarks/precision.py --isa avx512-vnni  # as on a CPU without AMX, AVX512-BF16
    python benchmarks/precision.py --isa avx2         # as on an AVX2-only CPU

Random weights cost exactly what real ones do (fidelity on trained activations needs
--weights). On the sample images, for fp32, bf16 and int8: s/image of score, segment and
fewshot (model loaded, batch of 8); whole runs from JPEG files; the matmul rate of each
precision at the window pass's shapes (one block's four linear layers on a 1024-token
chunk) and the window work's effective rate as a share of it; the largest score, map and
p-value difference against fp32 (each precision calibrated on the known-good samples);
the CPU's features and the load average (the machine may be shared).

--isa reruns this script with oneDNN, MKL, FBGEMM and ATen held to an older instruction
set (their own switches, below): the closest one machine comes to an older CPU. cpuinfo
still reports the real CPU, so `auto` is not exercised there; the explicit precisions are.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.run import (  # noqa: E402
    GFLOP_PER_SEGMENT_IMAGE,
    best_of,
    cold_start,
    make_checkpoint,
    peak_rss,
    pipeline_rates,
)

PRECISIONS = ("fp32", "bf16", "int8")
SAMPLES = ROOT / "sample_data"
GOOD = sorted((SAMPLES / "good").glob("*.jpg")) + sorted((SAMPLES / "parts" / "good").glob("*.jpg"))
PARTS = sorted((SAMPLES / "parts").rglob("*.jpg"))
ISA_LIMITS = {
    # Cascade Lake-like: AVX-512 with VNNI (int8 dot products), no bf16, no AMX.
    "avx512-vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    # An AVX2 desktop or an older server: no AVX-512, no VNNI.
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
}


def batch_of(wc, paths: list[Path]) -> torch.Tensor:
    return torch.stack([wc.preprocess(Image.open(p)) for p in paths])


def block_matmul_rate(wc, precision: str, tokens: int = 1024, repeat: int = 3) -> float:
    """GFLOP/s of one block's four linear layers (in_proj, out_proj, MLP in and out) on a
    window chunk, built the way the encoder builds them at ``precision``."""
    from winclip_cli.encoder import quantise_int8

    width = wc.visual_width
    hidden = wc.visual.transformer.resblocks[0].mlp.c_fc.out_features
    shapes = [(width, 3 * width), (width, width), (width, hidden), (hidden, width)]
    layers = torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in shapes).requires_grad_(False)
    if precision == "int8":
        layers = quantise_int8(layers)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    layers = layers.to(dtype) if precision == "bf16" else layers
    inputs = [torch.randn(tokens, i, dtype=dtype) for i, _ in shapes]

    def run() -> None:
        with torch.inference_mode():
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)

    flops = sum(2 * tokens * i * o for i, o in shapes)
    return flops / best_of(run, repeat) / 1e9


def command_rates(wc, text, x, bank, repeat: int) -> dict[str, float]:
    """s/image of score, segment and fewshot on the batch ``x`` (model loaded)."""
    runs = {
        "score": lambda: wc.predict(x, text=text, maps=False),
        "segment": lambda: wc.predict(x, text=text, maps=True),
        "fewshot": lambda: wc.predict(x, text=text, bank=bank, maps=True),
    }
    return {name: best_of(fn, repeat) / x.shape[0] for name, fn in runs.items()}


def outputs(wc, text, bank) -> dict[str, np.ndarray]:
    """Scores, maps and p-values on the samples (calibrated on the known-good ones)."""
    parts, good = batch_of(wc, PARTS), batch_of(wc, GOOD)
    seg = wc.predict(parts, text=text, maps=True)
    few = wc.predict(parts, text=text, bank=bank, maps=True)
    from winclip_cli.conformal import p_values

    calibration = wc.predict(good, text=text, maps=False).image_scores.numpy()
    return {
        "score": seg.image_scores.numpy(),
        "map": seg.grid_maps.numpy(),
        "fewshot score": few.image_scores.numpy(),
        "fewshot map": few.grid_maps.numpy(),
        "p-value": p_values(wc.predict(parts, text=text, maps=False).image_scores, calibration),
    }


def top_operators(wc, text, x, rows: int = 10) -> list[tuple[str, float, int]]:
    """(operator, share of self CPU time, calls) of one segment batch, largest first."""
    from torch.profiler import ProfilerActivity, profile

    wc.predict(x, text=text, maps=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wc.predict(x, text=text, maps=True)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [(e.key, e.self_cpu_time_total / total, e.count) for e in events[:rows]]


def memory(weights: Path, cache: Path, precision: str, count: int) -> dict[int, float]:
    """Peak RSS (GB) of `winclip segment --precision P` over count/4 and count images."""
    sample = PARTS[0]
    peaks = {}
    for n in sorted({max(1, count // 4), count}):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for i in range(n):
                (folder / f"img_{i:04d}.jpg").write_bytes(sample.read_bytes())
            cmd = [sys.executable, "-m", "winclip_cli", "segment", str(folder), "--weights",
                   str(weights), "--out", str(Path(tmp) / "out"), "-o", str(Path(tmp) / "r.csv"),
                   "--device", "cpu", "--precision", precision, "-q"]  # fmt: skip
            env = {**os.environ, "WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
            peaks[n] = peak_rss(cmd, env)
    return peaks


def measure(args: argparse.Namespace, weights: Path, cache: Path) -> dict:
    """Every figure of the report (see the module's docstring)."""
    from winclip_cli import WinClip
    from winclip_cli.hardware import cpu_features, describe_features

    r: dict = {"features": describe_features(cpu_features()), "load": [os.getloadavg()[0]]}
    threads = torch.get_num_threads()
    r["machine"] = f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"
    r["isa"] = os.environ.get("WINCLIP_BENCH_ISA", "native")
    models = {}
    for p in args.precisions:
        start = time.perf_counter()
        models[p] = WinClip.load(weights=weights, precision=p, cache_dir=cache)
        r.setdefault("load_s", {})[p] = time.perf_counter() - start
    text = models["fp32"].text_embeddings("textile")
    x = batch_of(models["fp32"], PARTS[: args.batch])
    for p, wc in models.items():
        bank = wc.reference_bank(batch_of(wc, GOOD[:4]))
        r.setdefault("matmul", {})[p] = block_matmul_rate(wc, p)
        r.setdefault("rates", {})[p] = command_rates(wc, text, x, bank, args.repeat)
        r.setdefault("outputs", {})[p] = outputs(wc, text, bank)
        if args.pipeline_images:
            r.setdefault("pipeline", {})[p] = pipeline_rates(wc, args.pipeline_images, args.batch)
        if args.profile:
            r.setdefault("profile", {})[p] = top_operators(wc, text, x[:1])
        r["load"].append(os.getloadavg()[0])
    del models
    if args.memory_images:
        p = args.memory_precision
        r["memory"] = {p: memory(weights, cache, p, args.memory_images)}
    if args.cold_start:
        r["cold"] = {p: cold_start(weights, cache, ("--precision", p)) for p in args.precisions}
    return r


def largest_differences(outs: dict[str, dict[str, np.ndarray]], p: str) -> str:
    base = outs["fp32"]
    cells = [f"{np.nanmax(np.abs(outs[p][k] - base[k])):.1e}" for k in base]
    return " | ".join(cells)


def print_report(r: dict) -> None:
    fp32 = r["rates"]["fp32"]
    print(f"Machine: {r['machine']}; CPU features: {r['features']}")
    print(f"Instruction set: {r['isa']}; load average (1 min) during the run: "
          + ", ".join(f"{v:.1f}" for v in r["load"]) + "\n")  # fmt: skip
    print(
        "| precision | load (s) | matmul GFLOP/s (window shapes) | score s/img | segment s/img "
        "| fewshot s/img | segment vs fp32 | window work, share of its matmul rate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p, rates in r["rates"].items():
        rate = r["matmul"][p]
        effective = GFLOP_PER_SEGMENT_IMAGE / rates["segment"]
        print(f"| {p} | {r['load_s'][p]:.2f} | {rate:.0f} | {rates['score']:.3f} | "
              f"{rates['segment']:.3f} | {rates['fewshot']:.3f} | "
              f"{fp32['segment'] / rates['segment']:.2f}x | "
              f"{effective:.0f} GFLOP/s = {effective / rate:.0%} |")  # fmt: skip
    keys = " | ".join(r["outputs"]["fp32"])
    print(f"\nLargest difference against fp32:\n\n| precision | {keys} |")
    print("|---" * (1 + len(r["outputs"]["fp32"])) + "|")
    for p in r["outputs"]:
        if p != "fp32":
            print(f"| {p} | {largest_differences(r['outputs'], p)} |")
    if "pipeline" in r:
        print("\nWhole runs from JPEG files (decode, score, rows; segment writes overlays):\n")
        print("| precision | score s/img | segment s/img | segment vs fp32 |\n|---|---|---|---|")
        base = r["pipeline"]["fp32"]["segment"]
        for p, v in r["pipeline"].items():
            print(f"| {p} | {v['score']:.3f} | {v['segment']:.3f} | {base / v['segment']:.2f}x |")
    for p, ops in r.get("profile", {}).items():
        print(f"\nTop operators of one segment image at {p} (self CPU time):\n")
        print("| operator | share | calls |\n|---|---|---|")
        for name, share, calls in ops:
            print(f"| `{name}` | {share:.0%} | {calls} |")
    for p, peaks in r.get("memory", {}).items():
        print(f"\nPeak RSS of `segment --precision {p}`: "
              + ", ".join(f"{n} images {gb:.2f} GB" for n, gb in peaks.items()))  # fmt: skip
    for p, c in r.get("cold", {}).items():
        print(
            f"\nCold start `winclip score one.jpg --precision {p}`: {c['cli_wall']:.2f} s, "
            f"naive sequence {c['naive_wall']:.2f} s: {c['cli_wall'] / c['naive_wall']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint of ViT-B-16-plus-240")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pipeline-images", type=int, default=16, help="0 skips whole runs")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory-images", type=int, default=0, help="0 skips the RSS runs")
    parser.add_argument("--memory-precision", default="bf16", help="of the RSS runs")
    parser.add_argument("--cold-start", action="store_true")
    parser.add_argument("--isa", choices=sorted(ISA_LIMITS), help="rerun held to this ISA")
    args = parser.parse_args()
    if args.isa:
        env = {**os.environ, **ISA_LIMITS[args.isa], "WINCLIP_BENCH_ISA": args.isa}
        rest = [a for a in sys.argv[1:] if a not in ("--isa", args.isa)]
        sys.exit(subprocess.run([sys.executable, __file__, *rest], env=env).returncode)
    args.precisions = ["fp32", *(p for p in args.precisions.split(",") if p != "fp32")]
    with tempfile.TemporaryDirectory(prefix="winclip-precision-") as tmp:
        weights = args.weights or make_checkpoint(Path(tmp))
        print_report(measure(args, weights, Path(tmp) / "cache"))


if __name__ == "__main__":
    main()
