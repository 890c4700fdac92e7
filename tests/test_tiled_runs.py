"""Tiled runs end to end (--tiles, issue 11): 1x1 is the untiled run byte for byte, the
image score and map follow WINCLIP.md "Tiling", banks record their grid, odd sizes give
error rows, batches are filled with tiles. The tiny random model; a stub where the
numbers must be known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import GOOD, PARTS, check_maps_anomalous, make_mvtec, read_csv, run_runner
from winclip_cli.bank import load_bank
from winclip_cli.commands.eval_run import eval_size
from winclip_cli.engines import ImageResult
from winclip_cli.engines.scorer import Scorer
from winclip_cli.outputs import legend_scale, render_overlay
from winclip_cli.tiling import TileGrid, stitch, tile_boxes


@pytest.fixture()
def model(tiny, cache_dir) -> list[str]:
    return ["--model", tiny["local_dir"], "--workers", "0"]


def _segment(tmp_path, name, model, extra, inputs=PARTS / "good"):
    """segment --save-maps into tmp_path/name/out (run from there: relative names)."""
    where = tmp_path / name
    where.mkdir()
    args = ["segment", inputs, *model, "--out", "out", "--save-maps", "-o", "rows.csv", *extra]
    outcome = run_runner(args, cwd=where)
    return outcome, where


def test_1x1_is_the_untiled_run_byte_for_byte(tmp_path, model):
    plain, a = _segment(tmp_path, "plain", model, [])
    tiled, b = _segment(tmp_path, "tiled", model, ["--tiles", "1x1", "--tile-overlap", "0.5"])
    assert plain.code == tiled.code == 0, plain.stderr + tiled.stderr
    assert (a / "rows.csv").read_bytes() == (b / "rows.csv").read_bytes()
    files = sorted(p.relative_to(a) for p in (a / "out").rglob("*") if p.is_file())
    assert len(files) == 6  # 3 overlays, 3 maps
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_1x1_bank_is_the_untiled_bank_byte_for_byte(tmp_path, model):
    banks = []
    for name, extra in (("plain", []), ("tiled", ["--tiles", "1x1"])):
        bank = tmp_path / f"{name}.bank"
        args = ["score", PARTS / "good", *model, "--ref", GOOD, "--k", "2", "--save-bank", bank]
        assert run_runner([*args, *extra]).code == 0
        banks.append(bank.read_bytes())
    assert banks[0] == banks[1]


def test_tiled_bank_holds_every_tile_and_refuses_another_grid(tmp_path, model, wc):
    bank_path = tmp_path / "tiled.bank"
    args = ["fewshot", PARTS / "good", *model, "--ref", GOOD, "--k", "2", "--tiles", "2x2"]
    outcome = run_runner([*args, "--out", tmp_path / "o", "--save-bank", bank_path])
    assert outcome.code == 0, outcome.stderr
    bank = load_bank(bank_path)
    assert bank.num_images == 2 * 2 * 2 and bank.meta["references"] == 2
    assert bank.meta["tiles"] == "2x2" and bank.meta["tile_overlap"] == 0.25
    assert bank.patch_tokens.shape[0] == 8 * wc.num_patches
    run = ["fewshot", PARTS / "good", *model, "--ref", bank_path, "--out", tmp_path / "o2"]
    assert run_runner([*run, "--tiles", "2x2", "--k", "2"]).code == 0
    for extra, words in (
        ([], ["2x2", "1x1"]),
        (["--tiles", "3x3"], ["2x2", "3x3"]),
        (["--tiles", "2x2", "--tile-overlap", "0.5"], ["overlap 0.25", "overlap 0.5"]),
    ):
        refused = run_runner([*run, *extra])
        assert refused.code == 2, refused.stderr
        assert all(w in refused.stderr for w in words), refused.stderr
    plain = tmp_path / "plain.bank"
    make = ["score", PARTS / "good", *model, "--ref", GOOD, "--k", "1", "--save-bank", plain]
    assert run_runner(make).code == 0
    assert "tiles" not in load_bank(plain).meta  # as before tiling: missing key = 1x1
    refused = run_runner(["score", PARTS / "good", *model, "--ref", plain, "--tiles", "2x2"])
    assert refused.code == 2 and "1x1" in refused.stderr and "2x2" in refused.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tiles", "0x3"], "at least 1 row"),
        (["--tiles", "three"], "ROWSxCOLUMNS"),
        (["--tile-overlap", "1.5"], "below 1"),
        (["--tile-overlap", "nan"], "below 1"),
        (["--overlay-format", "gif"], "png or jpg"),
        (["--map-dtype", "int8"], "float32 or float16"),
        (["--overlay-max-side", "3"], "at least 16"),
    ],
)
def test_bad_tiling_and_output_values_exit_2(tmp_path, model, args, words):
    outcome = run_runner(["segment", PARTS / "good", *model, "--out", tmp_path / "o", *args])
    assert outcome.code == 2 and words in outcome.stderr, outcome.stderr


def _bright_square_image(path, size=(400, 300), square=(330, 230, 350, 250)) -> None:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    left, top, right, bottom = square
    pixels[top:bottom, left:right] = 255
    Image.fromarray(pixels).save(path)


def _stub_predict(calls: list[int]):
    """Scorer.predict with known numbers: a tile's score is its brightest input value
    mapped to 0..1; its grid map is all ones when it holds bright pixels, else zeros."""

    def predict(self, pixels: torch.Tensor) -> list[ImageResult]:
        calls.append(pixels.shape[0])
        gh, gw = self.model.grid_size
        out = []
        for tile in pixels:
            hot = float(tile.max() > 1.0)  # normalised white (mean .5, std .25) is 2
            score = 0.1 + 0.8 * hot
            out.append(ImageResult(score, torch.full((gh, gw), hot) if self.maps else None))
        return out

    return predict


def test_image_score_is_the_max_tile_and_a_hot_tile_lands_in_place(tmp_path, model, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(Scorer, "predict", _stub_predict(calls))
    folder = tmp_path / "in"
    folder.mkdir()
    _bright_square_image(folder / "a.png")
    outcome, where = _segment(tmp_path, "run", model, ["--tiles", "3x3"], inputs=folder)
    assert outcome.code == 0, outcome.stderr
    _, rows = read_csv((where / "rows.csv").read_text())
    assert float(rows[0]["score"]) == pytest.approx(0.9) and float(rows[0]["map_max"]) == 1.0
    full = np.load(where / rows[0]["map"])
    assert full.shape == (300, 400) and full.dtype == np.float32
    boxes = tile_boxes(400, 300, TileGrid(3, 3))
    hot = [b for b in boxes if b[0] < 350 and b[2] > 330 and b[1] < 250 and b[3] > 230]
    assert hot == [boxes[8]]  # the square lies in the bottom-right tile only
    expected = stitch(boxes, [torch.full((6, 6), float(b in hot)) for b in boxes], (300, 400))
    np.testing.assert_allclose(full, expected, atol=1e-6)
    assert full[290, 390] == 1.0 and full[10, 10] == 0.0  # covered by it alone / not at all
    assert full[:, : boxes[8][0]].max() == 0.0


def test_batches_are_filled_with_tiles_of_several_images(tmp_path, model, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(Scorer, "predict", _stub_predict(calls))
    outcome, _ = _segment(tmp_path, "run", model, ["--tiles", "2x2", "--batch-size", "5"])
    assert outcome.code == 0, outcome.stderr
    assert calls == [5, 5, 2]  # 3 images x 4 tiles, in passes of 5 tiles


def test_odd_sizes_give_rows_and_a_too_fine_grid_an_error_row(tmp_path, model):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name, size in {
        "wire.png": (1, 60),
        "needle.png": (7, 5000),
        "strip.png": (3000, 20),
    }.items():
        Image.new("RGB", size, (90, 120, 150)).save(folder / name)
    cases = {
        "1x1": {"wire.png": "ok", "needle.png": "ok", "strip.png": "ok"},
        "3x1": {"wire.png": "ok", "needle.png": "ok", "strip.png": "error"},  # 20 px high
        "1x3": {"wire.png": "error", "needle.png": "error", "strip.png": "ok"},
        "3x3": {"wire.png": "error", "needle.png": "error", "strip.png": "error"},
    }
    for grid, expected in cases.items():
        outcome, where = _segment(tmp_path, grid, model, ["--tiles", grid], inputs=folder)
        assert "Traceback" not in outcome.stderr
        _, rows = read_csv((where / "rows.csv").read_text())
        got = {r["path"].rsplit("/", 1)[-1]: r["status"] for r in rows}
        assert got == expected, (grid, rows)
        for row in rows:
            if row["status"] == "error":
                assert "use fewer" in row["error"] and row["score"] == ""
            else:
                shape = np.load(where / row["map"]).shape
                assert shape[::-1] == Image.open(folder / row["path"].rsplit("/", 1)[-1]).size
        assert outcome.code == (3 if "error" in expected.values() else 0)


def test_warns_once_when_most_tiles_are_upsampled(tmp_path, model):
    # The tiny model's input is 48x48: 2x2 tiles of 60x60 images are about 34 px.
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (60, 60), (30 * i, 80, 90)).save(folder / f"s{i}.png")
    outcome = run_runner(["score", folder, *["--tiles", "2x2"], *model])
    assert outcome.code == 0
    assert outcome.stderr.count("smaller than the model input") == 1, outcome.stderr
    quiet = run_runner(["score", folder, *model])  # untiled: nothing to say
    assert "smaller than the model input" not in quiet.stderr


def test_fewshot_with_a_reference_too_small_for_the_grid_is_a_usage_error(tmp_path, model):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (20, 200), (1, 2, 3)).save(refs / "thin.png")
    outcome = run_runner(
        [
            "fewshot",
            PARTS / "good",
            *model,
            "--ref",
            refs,
            "--k",
            "1",
            "--tiles",
            "3x3",
            "--out",
            tmp_path / "o",
        ]
    )
    assert (
        outcome.code == 2 and "thin.png" in outcome.stderr and "cannot be tiled" in outcome.stderr
    )


def test_overlay_format_max_side_and_half_precision_maps(tmp_path, model):
    extra = ["--tiles", "2x2", "--overlay-format", "jpg", "--overlay-max-side", "100"]
    outcome, where = _segment(tmp_path, "run", model, [*extra, "--map-dtype", "float16"])
    assert outcome.code == 0, outcome.stderr
    _, rows = read_csv((where / "rows.csv").read_text())
    for row in rows:
        assert row["overlay"].endswith(".jpg.jpg")
        with Image.open(where / row["overlay"]) as overlay:
            assert overlay.format == "JPEG" and max(overlay.size) == 100
        saved = np.load(where / row["map"])
        assert saved.dtype == np.float16 and saved.shape == (250, 250)


def test_legend_grows_with_the_image():
    """About 290x30 px up to a 720 px shorter side (as before), then proportional."""
    assert legend_scale(300, 200) == 1 and legend_scale(4000, 3000) == 4
    boxes = {}
    for size in ((1200, 900), (4000, 3000)):
        image = Image.new("RGB", size, (128, 128, 128))
        overlay = np.asarray(render_overlay(image, np.full(size[::-1], 0.5)))
        black = overlay.sum(-1) == 0  # the legend's black box
        boxes[size] = (int(black.any(0).sum()), int(black.any(1).sum()))
    (w1, h1), (w4, h4) = boxes[(1200, 900)], boxes[(4000, 3000)]
    assert 250 < w1 < 330 and 20 < h1 < 40
    assert w4 > 3 * w1 and h4 > 3 * h1


def test_eval_with_tiles_compares_at_the_tiles_resolution(tmp_path, tiny, cache_dir):
    assert eval_size(1000, 900, TileGrid(1, 1), (240, 240)) == (240, 240)
    assert eval_size(1000, 900, TileGrid(3, 3), (240, 240)) == (720, 720)
    assert eval_size(500, 300, TileGrid(2, 3), (240, 240)) == (300, 500)
    root = make_mvtec(tmp_path / "mvtec")
    out = tmp_path / "r.json"
    args = ["eval", root, "--model", tiny["local_dir"], "--k", "0", "--k", "1", "--json", out]
    outcome = run_runner([*args, "--tiles", "2x2", "--workers", "0"])
    assert outcome.code == 0, outcome.stderr
    figures = json.loads(out.read_text())
    assert 0.0 <= figures["mean"]["1"]["mean"]["pixel_pro"] <= 1.0
    assert run_runner([*args, "--tiles", "2x0"]).code == 2


def test_overlay_writer_holds_one_full_size_float_map(tmp_path):
    """Stitching a 3x3 image touches only each tile's box: numpy's peak in the writer is
    the stitcher's float32 sum and uint8 count plus the uint8 colours (8 bytes a pixel),
    not a full-size float map per tile (9 x 4 bytes)."""
    import tracemalloc

    from winclip_cli.data import InputImage
    from winclip_cli.outputs import write_image_outputs

    width, height = 1500, 1000
    path = tmp_path / "big.png"
    Image.new("RGB", (width, height), (100, 110, 120)).save(path)
    boxes = tile_boxes(width, height, TileGrid(3, 3))
    tiles = [(box, torch.rand(15, 15)) for box in boxes]
    image = InputImage(path, str(path), "big.png")
    tracemalloc.start()
    try:
        saved = write_image_outputs(image, None, tmp_path / "out", True, tiles).map
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * width * height, f"{peak / (width * height):.1f} bytes a pixel"
    assert np.load(saved).shape == (height, width)
    np.testing.assert_allclose(
        np.load(saved), stitch(boxes, [m for _, m in tiles], (height, width)), atol=1e-6
    )


def test_maps_anomalous_with_tiles_maps_exactly_as_maps_all(tmp_path, model):
    """--maps anomalous wraps the tiled engine: the anomalous images' rows and overlays
    are --maps all's, the others keep their scores (it was refused with tiles)."""
    rows = check_maps_anomalous([PARTS, *model, "--tiles", "2x2", "--batch-size", "5"], tmp_path)
    assert len(rows) == 9
