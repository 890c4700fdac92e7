"""Cost of calibrated decisions, side by side (by hand, not a test).

    python benchmarks/calibration.py                  # the tiny random test model (fast)
    python benchmarks/calibration.py --default        # ViT-B-16-plus-240, random weights

Prints seconds per image of: a `score` pass; `calibrate` over the same images (one
scoring pass with maps, nothing more); `score` with and without `--calibration`;
`segment` full, and `segment --maps anomalous` on a folder that is 95% normal (the
5% are made anomalous by the threshold: the top 5% of scores), against `score`.
The model is loaded once; every figure is the best of 3 runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.run import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--default", action="store_true", help="the default architecture")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()

    from winclip_cli.commands.calibrate import run_calibrate
    from winclip_cli.commands.run import run
    from winclip_cli.model import WinClip
    from winclip_cli.options import CalibrateOptions, ModelOptions, RunOptions
    from winclip_cli.progress import Reporter

    work = Path(tempfile.mkdtemp(prefix="winclip-cal-bench-"))
    if args.default:
        import open_clip

        from winclip_cli.backbone import Backbone  # noqa: F401 - import cost outside timings

        name = "ViT-B-16-plus-240"
        clip = open_clip.create_model(name)
        weights = work / "random.pt"
        import torch

        torch.save(clip.state_dict(), weights)
        model_opts = ModelOptions(model=name, pretrained=None, weights=weights, device="cpu")
        size = 240
    else:
        from tests.tiny_model import make_tiny_model

        tiny = make_tiny_model(work / "tiny")
        model_opts = ModelOptions(model=str(tiny["local_dir"]), pretrained=None, device="cpu")
        size = 64
    wc = WinClip.load(
        model=model_opts.model, pretrained=None, weights=model_opts.weights, device="cpu"
    )
    rng = np.random.default_rng(0)
    folder = work / "imgs"
    folder.mkdir()
    for i in range(args.images):
        pixels = np.clip(120 + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    quiet = Reporter(quiet=True)
    cal = work / "good.cal"

    def opts(**kw) -> RunOptions:
        return RunOptions(inputs=[folder], output=str(work / "rows.csv"), workers=0,
                          out_dir=work / "out", model=model_opts, **kw)  # fmt: skip

    def calibrate() -> None:
        run_calibrate(CalibrateOptions([folder], cal, workers=0, model=model_opts), quiet, wc)

    t_cal = best_of(calibrate)
    t_score = best_of(lambda: run(opts(), quiet, wc))
    t_applied = best_of(lambda: run(opts(calibration=cal, false_alarm_rate=0.05), quiet, wc))
    rows = (work / "rows.csv").read_text().splitlines()[1:]
    scores = sorted(float(r.split(",")[1]) for r in rows)
    cut = scores[int(0.95 * len(scores))]  # the top 5% are anomalous
    t_segment = best_of(lambda: run(opts(maps=True), quiet, wc))
    t_anomalous = best_of(
        lambda: run(opts(maps=True, maps_mode="anomalous", threshold=cut), quiet, wc)
    )
    n = args.images
    print(f"model: {'ViT-B-16-plus-240 (random weights)' if args.default else 'tiny test ViT'}, "
          f"{n} images, CPU, workers 0; ms per image (best of 3)")  # fmt: skip
    print("| run | ms/image | vs score |")
    print("|---|---|---|")
    for label, t in [
        ("score", t_score),
        ("calibrate", t_cal),
        ("score --calibration", t_applied),
        ("segment", t_segment),
        ("segment --maps anomalous (5% anomalous)", t_anomalous),
    ]:
        print(f"| {label} | {1000 * t / n:.2f} | {t / t_score:.2f}x |")


if __name__ == "__main__":
    main()
