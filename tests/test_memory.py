"""Memory stays flat over a long run: what row 200 needs, row 50 needed already.

200 images go through ``commands.run.run`` in this process (decoding too: workers=0), and
the process is measured when row 50 and row 200 are written. Anything kept per image
(decoded pictures, tensors, maps, futures, rows) would grow with the count; the bounds
below are several times the noise and several times smaller than such a leak.
"""

from __future__ import annotations

import gc
import resource
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from winclip_cli.commands import run as run_command
from winclip_cli.errors import ExitCode
from winclip_cli.options import ModelOptions, RunOptions
from winclip_cli.progress import Reporter
from winclip_cli.rows import RowWriter

COUNT = 200
EARLY = 50
WIDTH, HEIGHT = 400, 300  # 360 kB decoded: 150 kept pictures would be 54 MB
RSS_BOUND = 24 * 2**20
PYTHON_HEAP_BOUND = 3 * 2**20


def resident_bytes() -> int:
    """Current resident set size (Linux /proc); the peak elsewhere, which can only grow
    and so bounds growth just as well."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(COUNT):
        phase = rng.random(3) * 6
        pixels = np.stack([127 + 120 * np.sin(x / 17 + y / 23 + p) for p in phase], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i:03d}.jpg", quality=85)
    return folder


@pytest.mark.parametrize("mode", ["score", "segment"])
def test_memory_is_flat_over_a_long_run(many_images, tiny, cache_dir, tmp_path, monkeypatch, mode):
    samples: dict[int, tuple[int, int]] = {}
    written = 0
    original = RowWriter.write

    def measured_write(self, row):
        nonlocal written
        original(self, row)
        written += 1
        if written in (EARLY, COUNT):
            gc.collect()
            samples[written] = (resident_bytes(), tracemalloc.get_traced_memory()[0])

    monkeypatch.setattr(RowWriter, "write", measured_write)
    options = RunOptions(
        inputs=[many_images],
        maps=mode == "segment",
        out_dir=tmp_path / "out",
        batch_size=4,
        workers=0,
        output=str(tmp_path / "rows.csv"),
        model=ModelOptions(model=tiny["local_dir"], cache_dir=cache_dir),
    )
    tracemalloc.start()
    try:
        code = run_command.run(options, Reporter(quiet=True))
    finally:
        tracemalloc.stop()
    assert code == ExitCode.OK
    assert written == COUNT
    (rss_early, heap_early), (rss_late, heap_late) = samples[EARLY], samples[COUNT]
    growth = rss_late - rss_early
    assert growth < RSS_BOUND, f"resident memory grew {growth / 2**20:.1f} MB over 150 rows"
    heap_growth = heap_late - heap_early
    assert heap_growth < PYTHON_HEAP_BOUND, f"Python heap grew {heap_growth / 2**20:.2f} MB"
