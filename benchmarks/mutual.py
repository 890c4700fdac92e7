"""Mutual scoring (MuSc) against `segment`, side by side in one process (by hand, not a test).

    python benchmarks/mutual.py                      # 200 images, fp32 and bf16
    python benchmarks/mutual.py --images 50 --segment-images 8 --precisions fp32

Default architecture with random weights (same cost as the real ones). For each
precision: set mode over --images images, split into the forward pass and MSM (the
matrix products and their minima, plus RsCIN); MSM's FLOP rate against a plain matrix
product of the same block shape; the peak RSS while set mode runs (sampled every 20 ms,
each precision in its own process; segment and mutual share it, so their ratio is fair);
pool mode against a pool of the same images; and zero-shot `segment` (the library's
predict with maps) on the first --segment-images of them. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.run import MODEL, best_of, make_checkpoint  # noqa: E402
from winclip_cli import WinClip, mutual  # noqa: E402
from winclip_cli.pool import MutualPool, input_digests  # noqa: E402

GFLOP_PER_FORWARD = 52.0  # WINCLIP.md "Cost": the full pass of the default model
PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The largest resident set size of this process seen while the block runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def msm_gflop(n: int, length: int, width: int) -> float:
    """FLOPs of set mode's products: each pair of image blocks once, 4 layers x 3 degrees."""
    step = max(1, mutual.BLOCK_ROWS // length)
    padded = -(-(width + 1) // mutual.WIDTH_MULTIPLE) * mutual.WIDTH_MULTIPLE
    pairs = 0
    for a0 in range(0, n, step):
        for b0 in range(a0, n, step):
            pairs += min(step, n - a0) * min(step, n - b0)
    per_product = 2 * pairs * length * length * padded
    return 12 * per_product / 1e9


def block_matmul_gflops(length: int, width: int, dtype: torch.dtype) -> float:
    """The rate of one plain product of MSM's block shape, in this process now."""
    rows = max(1, mutual.BLOCK_ROWS // length) * length
    padded = -(-(width + 1) // mutual.WIDTH_MULTIPLE) * mutual.WIDTH_MULTIPLE
    a, b = torch.randn(rows, padded).to(dtype), torch.randn(rows, padded).to(dtype)
    return 2 * rows * rows * padded / best_of(lambda: a @ b.T, 5) / 1e9


def set_mode(wc: WinClip, x: torch.Tensor) -> dict:
    """Forward and MSM seconds of set mode over x, and the peak RSS while it runs."""
    with PeakRss() as rss:
        start = time.perf_counter()
        embeddings, normed = wc.mutual.features(x, 8)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        grid = mutual.set_grid_maps(list(normed), wc.mutual.matmul_dtype)
        mutual.rscin(mutual.map_maxima(grid, wc.input_size), embeddings)
        msm = time.perf_counter() - start
    return {"forward": forward, "msm": msm, "peak_rss": rss.peak, "normed": normed}


def in_child(weights: Path, cache: Path, precision: str, args: argparse.Namespace) -> dict:
    """measure() in a fresh process, so each precision's peak RSS is its own."""
    cmd = [sys.executable, __file__, "--child", precision, "--weights", str(weights)]
    cmd += ["--images", str(args.images), "--segment-images", str(args.segment_images)]
    cmd += ["--pool-queries", str(args.pool_queries), "--cache", str(cache)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pool_mode(wc: WinClip, x: torch.Tensor, normed: torch.Tensor, queries: int) -> dict:
    """Seconds per image against a pool made of x (from set mode's features)."""
    pool = MutualPool(normed, input_digests(x), wc.mutual.pool_meta(x.shape[0]))
    pool = wc.check_pool(pool)
    q = torch.randn(queries, 3, *wc.input_size, generator=torch.Generator().manual_seed(9))
    start = time.perf_counter()
    wc.predict_mutual(q[:1], pool)  # makes the pool's per-degree operands once
    first = time.perf_counter() - start
    start = time.perf_counter()
    wc.predict_mutual(q, pool)
    return {"pool_s_per_image": (time.perf_counter() - start) / queries, "pool_first": first}


def segment(wc: WinClip, x: torch.Tensor) -> float:
    """Seconds per image of zero-shot segment (predict with maps), batches of 8."""
    text = wc.text_embeddings("object")
    start = time.perf_counter()
    for batch in x.split(8):
        wc.predict(batch, text=text, maps=True)
    return (time.perf_counter() - start) / x.shape[0]


def measure(weights: Path, cache: Path, precision: str, args: argparse.Namespace) -> dict:
    wc = WinClip.load(model=MODEL, weights=weights, precision=precision, cache_dir=cache)
    n = args.images
    x = torch.randn(n, 3, *wc.input_size, generator=torch.Generator().manual_seed(1))
    loaded_rss = PeakRss.now()
    result = set_mode(wc, x)
    length, width = wc.num_patches, wc.visual_width
    result.update(pool_mode(wc, x, result.pop("normed"), args.pool_queries))
    result["segment"] = segment(wc, x[: args.segment_images])
    result.update(
        precision=precision,
        loaded_rss=loaded_rss,
        msm_gflop=msm_gflop(n, length, width),
        matmul_gflops=block_matmul_gflops(length, width, wc.mutual.matmul_dtype),
    )
    return result


def cpu_name() -> str:
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    return names[0] if names else platform.machine()


def report(results: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> None:
    n = args.images
    print(f"## Mutual scoring, {MODEL} (random weights), {cpu_name()}")
    print(
        f"\n{torch.get_num_threads()} threads; load average {load[0]} before, {load[1]} after "
        f"(a shared machine). Set mode: {n} images; segment: first {args.segment_images}; "
        f"pool mode: {args.pool_queries} images against a pool of {n}.\n"
    )
    print(
        "| precision | set mode s/image | forward | MSM | segment s/image | segment / set "
        "| pool mode s/image | MSM GFLOP/s | block matmul GFLOP/s | MSM share "
        f"| peak RSS (N={n}) | RSS after load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        total = (r["forward"] + r["msm"]) / n
        msm_rate = r["msm_gflop"] / r["msm"]
        print(
            f"| {r['precision']} | {total:.3f} | {r['forward'] / n:.3f} | {r['msm'] / n:.3f} "
            f"| {r['segment']:.3f} | {r['segment'] / total:.1f}x | {r['pool_s_per_image']:.3f} "
            f"| {msm_rate:.0f} | {r['matmul_gflops']:.0f} | {msm_rate / r['matmul_gflops']:.0%} "
            f"| {r['peak_rss'] / 2**30:.2f} GiB | {r['loaded_rss'] / 2**30:.2f} GiB |"
        )
    print(
        f"\nMSM work: {results[0]['msm_gflop']:.0f} GFLOP for the set "
        f"({results[0]['msm_gflop'] / n:.0f} per image; the forward pass is "
        f"{GFLOP_PER_FORWARD:.0f}). Pool operands made on first use: "
        + ", ".join(f"{r['precision']} {r['pool_first']:.1f} s" for r in results)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--segment-images", type=int, default=16)
    parser.add_argument("--pool-queries", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.weights, args.cache, args.child, args)))
        return
    load_before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_checkpoint(Path(tmp))
        cache = Path(tmp) / "cache"
        results = [in_child(weights, cache, p, args) for p in args.precisions.split(",")]
    report(results, args, (load_before, f"{os.getloadavg()[0]:.1f}"))


if __name__ == "__main__":
    main()
