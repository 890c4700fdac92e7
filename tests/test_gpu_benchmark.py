"""benchmarks/gpu.py is prepared for a CUDA machine; its dry run (CPU, tiny model, Ray
actors without GPUs) runs the same code, so the script is known to work before a GPU
machine is booked."""

from __future__ import annotations

import pytest

from benchmarks.gpu import main


def test_the_gpu_benchmark_dry_run_prints_its_table(capsys, cache_dir):
    pytest.importorskip("ray")
    main(["--dry-run", "--ray-images", "3"])
    out = capsys.readouterr().out
    assert "DRY RUN" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header][:4] == [
        "precision",
        "batch",
        "score images/s",
        "segment images/s",
    ]
    sweep = [(r[0].strip(), r[1].strip()) for r in body if "Ray" not in r[0]]
    assert sweep == [("fp32", "1"), ("fp32", "2"), ("bf16", "1"), ("bf16", "2")]
    for r in body:
        assert float(r[3]) > 0  # segment images/s measured
    diffs = {r[0].strip(): float(r[6]) for r in body if "Ray" not in r[0]}
    assert diffs["fp32"] == 0 and 0 < diffs["bf16"] < 5e-3
    assert any("Ray 1 actor(s) x CPU" in r[0] for r in body)
