"""Tiled `segment` on large photos, side by side with untiled (by hand, not a test).

    python benchmarks/tiling.py                    # default architecture, random weights
    python benchmarks/tiling.py --tiny             # the tests' tiny model (fast, I/O-bound)
    python benchmarks/tiling.py --figure docs/tiling.png   # the README figure (tiny model)

Makes synthetic 4000x3000 textile JPEGs (12 MP) with a small planted speck, runs
`segment` through the CLI's pipeline at 1x1, 2x2 and 3x3, interleaved, with the model
loaded once, and prints seconds per image against R*C times the untiled time. Then the
peak RSS of a 3x3 `segment` subprocess over --memory-images photos (tiny model: the
figure is about decoding, tiles and stitching, not the weights), and the disk size of one
photo's outputs with each output setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.run import peak_rss as command_peak_rss  # noqa: E402

SAMPLE = ROOT / "sample_data" / "parts" / "good" / "textile_0901.jpg"
MODEL = "ViT-B-16-plus-240"
SIZE = (4000, 3000)
SPECK = (2710, 1830, 2734, 1850)  # a 24x20 px dark speck: ~1 px after the 240 px resize


def textile(seed: int = 0, speck: bool = True) -> Image.Image:
    """A 4000x3000 woven-looking texture (the sample texture tiled, with noise)."""
    rng = np.random.default_rng(seed)
    with Image.open(SAMPLE) as src:
        patch = np.asarray(src.convert("RGB").resize((250, 250)), dtype=np.int16)
    reps = (-(-SIZE[1] // 250), -(-SIZE[0] // 250), 1)
    pixels = np.tile(patch, reps)[: SIZE[1], : SIZE[0]]
    pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if speck:
        ImageDraw.Draw(image).ellipse(SPECK, fill=(20, 15, 10))
    return image


def make_photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = textile()
    for i in range(count):
        base.save(folder / f"photo_{i:03d}.jpg", quality=90)


def load_model(tiny: bool, folder: Path):
    from winclip_cli import WinClip

    if tiny:
        from tests.tiny_model import make_tiny_model

        paths = make_tiny_model(folder / "tiny")
        return WinClip.load(model=paths["name"], weights=paths["weights"], cache_dir=folder)
    import open_clip

    torch.manual_seed(0)
    weights = folder / "random.pt"
    torch.save(open_clip.create_model(MODEL).state_dict(), weights)
    return WinClip.load(model=MODEL, weights=weights, cache_dir=folder)


def segment(wc, inputs: Path, out: Path, tiles: str, **extra) -> float:
    """Seconds per image of one whole `segment` run (decode, tiles, model, overlays)."""
    from winclip_cli.commands.run import run
    from winclip_cli.options import RunOptions
    from winclip_cli.progress import Reporter

    opts = RunOptions(
        inputs=[inputs], class_name="textile", maps=True, out_dir=out, tiles=tiles,
        output=str(out / "rows.csv"), workers=2, **extra,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    count = len(list(inputs.glob("*.jpg")))
    start = time.perf_counter()
    run(opts, Reporter(quiet=True), model=wc)
    return (time.perf_counter() - start) / count


def timing(wc, tmp: Path, images: int, rounds: int) -> dict[str, float]:
    photos = tmp / "timing"
    make_photos(photos, images)
    wc.text_embeddings("textile")  # cached from here: no run pays for the prompts
    segment(wc, photos, tmp / "out-warm-up", "2x2")  # first-call costs (allocator, threads)
    best: dict[str, float] = {}
    for r in range(rounds):  # interleaved: drift of a shared machine hits all alike
        for grid in ("1x1", "2x2", "3x3"):
            t = segment(wc, photos, tmp / f"out-{grid}-{r}", grid)
            best[grid] = min(best.get(grid, t), t)
    return best


def peak_rss(tmp: Path, count: int, tiles: str) -> float:
    """Peak RSS (GB) of a `segment --tiles` subprocess (tiny model) over ``count`` photos."""
    from tests.tiny_model import make_tiny_model

    photos = tmp / "memory"
    make_photos(photos, count)
    paths = make_tiny_model(tmp / "tiny-rss")
    cmd = [sys.executable, "-m", "winclip_cli", "segment", str(photos), "--model",
           str(paths["local_dir"]), "--tiles", tiles, "--out", str(tmp / "rss-out"),
           "-o", str(tmp / "rss.csv"), "--device", "cpu", "-q", "--workers", "2"]  # fmt: skip
    env = {
        **os.environ,
        "WINCLIP_CACHE_DIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    return command_peak_rss(cmd, env)


def disk(tmp: Path) -> dict[str, float]:
    """MB on disk of one 12 MP photo's outputs at 3x3 with each output setting (tiny
    model: sizes depend on the photo and the map's smoothness, not on the weights)."""
    wc = load_model(True, tmp)
    photos = tmp / "disk"
    make_photos(photos, 1)
    sizes = {}
    settings = {
        "overlay png": {},
        "overlay jpg": {"overlay_format": "jpg"},
        "overlay png, max side 2000": {"overlay_max_side": 2000},
        "overlay jpg, max side 2000": {"overlay_format": "jpg", "overlay_max_side": 2000},
    }
    for name, extra in settings.items():
        out = tmp / f"disk-{len(sizes)}"
        segment(wc, photos, out, "3x3", save_maps=True, map_dtype="float16", **extra)
        overlay = next(p for p in out.iterdir() if p.suffix in (".png", ".jpg"))
        sizes[name] = overlay.stat().st_size / 1e6
        sizes["map .npy float16"] = next(out.glob("*.npy")).stat().st_size / 1e6
    sizes["map .npy float32"] = SIZE[0] * SIZE[1] * 4 / 1e6 + 128e-6
    return sizes


def figure(path: Path, tmp: Path) -> None:
    """Untiled beside 3x3: the saved map (contrast-stretched: random weights give an
    almost flat map) over the photo, whole and zoomed on the speck."""
    from winclip_cli.outputs import colorize

    wc = load_model(True, tmp)
    photos = tmp / "figure"
    photos.mkdir()
    photo = textile()
    photo.save(photos / "textile.jpg", quality=92)
    side, half = (480, 360), (200, 150)  # panel size; half-size of the 1:1 zoom window
    cx, cy = (SPECK[0] + SPECK[2]) // 2, (SPECK[1] + SPECK[3]) // 2
    zoom_box = (cx - half[0], cy - half[1], cx + half[0], cy + half[1])
    panels = []
    for grid in ("1x1", "3x3"):
        out = tmp / f"fig-{grid}"
        segment(wc, photos, out, grid, save_maps=True)
        full = np.load(out / "textile.jpg.npy")
        stretched = (full - full.min()) / max(float(full.max() - full.min()), 1e-12)
        heat = Image.fromarray(colorize(stretched))
        blended = Image.blend(photo, heat, 0.6)
        whole = blended.resize(side, Image.Resampling.LANCZOS)
        zoom = blended.crop(zoom_box).resize(side, Image.Resampling.NEAREST)
        panel = Image.new("RGB", (side[0], 2 * side[1] + 60), (255, 255, 255))
        panel.paste(whole, (0, 26))
        panel.paste(zoom, (0, side[1] + 56))
        draw = ImageDraw.Draw(panel)
        title = "untiled (1x1)" if grid == "1x1" else "3x3 tiles, overlap 0.25"
        draw.text((4, 4), f"{title}: 4000x3000 photo", fill=(0, 0, 0), font_size=16)
        draw.text((4, side[1] + 34), "400x300 px around the speck", fill=(0, 0, 0), font_size=16)
        panels.append(panel)
    width = 2 * side[0] + 20
    sheet = Image.new("RGB", (width, panels[0].height + 30), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (side[0] + 20, 0))
    note = "random tiny weights: the map means nothing; it shows layout and resolution"
    ImageDraw.Draw(sheet).text((4, sheet.height - 24), note, fill=(80, 80, 80), font_size=16)
    sheet.quantize(64).save(path, optimize=True)
    print(f"figure: {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    parser.add_argument("--images", type=int, default=2, help="photos per timing run")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
    parser.add_argument("--memory-images", type=int, default=50, help="0 skips the RSS run")
    parser.add_argument("--figure", type=Path, help="only write the README figure here")
    parser.add_argument(
        "--sections", default="timing,disk,memory", help="comma-separated: timing, disk, memory"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.figure:
            figure(args.figure, tmp)
            return
        threads = torch.get_num_threads()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
        print(f"({threads} threads), Python {platform.python_version()}")
        sections = set(args.sections.split(","))
        if "timing" in sections:
            wc = load_model(args.tiny, tmp)
            model = "tiny (tests)" if args.tiny else MODEL + ", random weights"
            print(f"model: {model}, CPU fp32")
            best = timing(wc, tmp, args.images, args.rounds)
            print("\n| tiles | s/image | against R*C x untiled |\n|---|---|---|")
            for grid, seconds in best.items():
                count = int(grid[0]) * int(grid[2])
                print(f"| {grid} | {seconds:.2f} | {seconds / (count * best['1x1']):.2f}x |")
        if "disk" in sections:
            print("\n| output of one 12 MP photo (3x3) | MB |\n|---|---|")
            for what, mb in disk(tmp).items():
                print(f"| {what} | {mb:.2f} |")
        if "memory" in sections and args.memory_images:
            print("\n| 3x3 segment, tiny model | peak RSS (GB) |\n|---|---|")
            for count in sorted({min(5, args.memory_images), args.memory_images}):
                print(f"| {count} photos | {peak_rss(tmp, count, '3x3'):.2f} |")


if __name__ == "__main__":
    main()
