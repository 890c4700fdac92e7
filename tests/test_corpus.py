"""Never lose a result, never crash on a bad file: one CLI run over a generated corpus.

The corpus holds every kind of odd-but-valid image (which must be scored) and every
kind of broken input (which must get an ``error`` row with a one-line reason), with
file names that stress the CSV. One ``winclip segment`` run covers it all; the tests
below read its rows and overlays. The end of the file checks that bad options and
bad references fail early (exit 2) with a clear message.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.tiny_model import make_tiny_model
from winclip_cli.data import ImageDataset, ImageReadError, batches, find_images, open_image
from winclip_cli.imaging import Preprocessor

COLUMNS = ["path", "score", "map_max", "overlay", "status", "error"]
BAD_MODEL = "local-dir:/nonexistent/winclip-model"  # loading it fails: exit 4


@dataclass(frozen=True)
class Expect:
    status: str  # "ok" or "error"
    size: tuple[int, int] | None = None  # displayed (width, height) for "ok"
    reason: str = ""  # a word the error message must contain (case-insensitive)


def smooth(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture (compresses well, decodes like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 120 * np.sin(x / (3 + 7 * rng.random()) + y / (3 + 7 * rng.random()) + rng.random())
        for _ in range(3)
    ]
    return np.stack(channels, -1).clip(0, 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def with_orientation(path: Path, orientation: int, stored: np.ndarray) -> Image.Image:
    """Write a JPEG with an EXIF orientation; returns the picture as a viewer shows it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as written:
        return ImageOps.exif_transpose(written).convert("RGB")


def locked_is_readable(path: Path) -> bool:
    """chmod 000 blocks reads, except for root (tests may run as root)."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except PermissionError:
        return False


def build_corpus(root: Path) -> dict[str, Expect]:
    """Make every file; returns the expected row per relative path."""
    root.mkdir(parents=True)
    expect: dict[str, Expect] = {}

    def put(rel: str, image: Image.Image, fmt: str | None = None, **params) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format=fmt, **params)
        expect[rel] = Expect("ok", image.size)

    def broken(rel: str, data: bytes, reason: str = "") -> None:
        (root / rel).write_bytes(data)
        expect[rel] = Expect("error", reason=reason)

    rgb = Image.fromarray(smooth(64, 48, 0))
    put("plain.jpg", rgb, quality=90)
    put("gray.png", rgb.convert("L"))
    # 16-bit greyscale spanning the full range: must be scaled, not clipped to white.
    ramp16 = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(np.uint16)
    put("gray16.png", Image.fromarray(ramp16))
    put("gray16.tif", Image.fromarray(ramp16))
    (root / "gray16.pgm").write_bytes(b"P5\n64 32\n65535\n" + ramp16.astype(">u2").tobytes())
    expect["gray16.pgm"] = Expect("ok", (64, 32))
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0, *([0] * 762)])
    palette.paste(1, (10, 10, 30, 20))
    put("palette_transparent.png", palette, transparency=0)
    put("palette_transparent.gif", palette, transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)))
    put("rgba.png", rgba)
    put("rgba.webp", rgba)
    put("gray_alpha.png", rgba.convert("LA"))
    put("cmyk.jpg", rgb.convert("CMYK"))
    put("cmyk.tif", rgb.convert("CMYK"))
    put("bilevel.bmp", rgb.convert("1"))
    put("color.ppm", rgb)
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    put("animated.gif", frames[0], save_all=True, append_images=frames[1:])
    pages = [Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (35, 35), (0, 0, 255))]
    put("multipage.tif", pages[0], save_all=True, append_images=pages[1:])
    put("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    put("wide.png", Image.fromarray(smooth(4000, 3, 1)))
    put("tall.png", Image.fromarray(smooth(3, 4000, 2)))
    # EXIF orientation: scored and overlaid as displayed. Left half red, right half blue.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40, 0] = 255
    stored[:, 40:, 2] = 255
    shown = {}
    for orientation in (3, 6, 8):
        shown[orientation] = with_orientation(root / f"exif_{orientation}.jpg", orientation, stored)
        expect[f"exif_{orientation}.jpg"] = Expect("ok", shown[orientation].size)
    # The same pixels as exif_6.jpg shows them, stored upright: must score the same.
    put("exif_6_upright_twin.png", shown[6])
    # Upper-case extensions and hostile names.
    put("UPPER.PNG", rgb)
    put("camera.JPEG", rgb)
    put("scan.TIF", rgb)
    for name in (
        "name with spaces.png",
        "comma,in,name.png",
        'double"quote.png',
        "single'quote.png",
        "new\nline.png",
        "tab\tname.png",
        "café ü 画像.png",
        "emoji 🙂.png",
        "-leading-dash.png",
        ".hidden.png",
        'all, of "them"\n ünïcode.png',
        os.fsdecode(b"latin1 caf\xe9.png"),  # not valid UTF-8: surrogate-escaped
    ):
        put(name, rgb)
    # Same stem, different extensions: overlays must not collide.
    put("same.jpg", rgb)
    put("same.png", Image.fromarray(smooth(64, 48, 3)))
    # Folders named like images are walked, not read.
    put("folder.png/inside.png", rgb)
    put("folder.png/deeper.jpg/leaf.jpg", rgb)
    (root / "empty_folder.jpg").mkdir()
    put("nested/a/b/c/deep.png", rgb)
    # Symlinks: to a file (scored under its own name), loops (not followed).
    os.symlink("plain.jpg", root / "link to plain.jpg")
    expect["link to plain.jpg"] = Expect("ok", (64, 48))
    put("loop/inner.png", rgb)
    os.symlink(".", root / "loop" / "self")
    os.symlink("..", root / "loop" / "up")
    os.symlink(root / "nested", root / "nested" / "a" / "b" / "back")
    # Files without image extensions get no row.
    (root / "notes.txt").write_text("not an image")
    (root / "image.png.txt").write_bytes(encoded(rgb, "PNG"))
    (root / "README").write_text("hi")

    # Broken inputs: an error row each.
    full_jpeg = encoded(Image.fromarray(smooth(120, 90, 4)), "JPEG", quality=90)
    full_png = encoded(Image.fromarray(smooth(120, 90, 5)), "PNG")
    broken("empty.png", b"", "empty")
    broken("truncated.jpg", full_jpeg[: len(full_jpeg) // 3], "damaged")
    broken("truncated.png", full_png[: len(full_png) // 2], "damaged")
    broken("header_only.png", full_png[:40])
    broken("text.jpg", b"this is not a picture\n", "not an image")
    broken("page.png", b"<html><body>404 not found</body></html>", "not an image")
    broken("random.tif", np.random.default_rng(6).integers(0, 256, 5000, np.uint8).tobytes())
    broken("gif_magic_only.gif", b"GIF89a" + b"\xff" * 20)
    broken("bomb.png", png_claiming(100_000, 100_000), "too large")
    os.symlink("does-not-exist.png", root / "dangling.png")
    expect["dangling.png"] = Expect("error", reason="symbolic link")
    os.mkfifo(root / "pipe.png")  # opening a FIFO blocks until someone writes: must not hang
    expect["pipe.png"] = Expect("error", reason="regular file")
    locked = root / "locked.png"
    rgb.save(locked)
    locked.chmod(0)
    readable = locked_is_readable(locked)
    expect["locked.png"] = (
        Expect("ok", rgb.size) if readable else Expect("error", reason="permission denied")
    )
    return expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Expect]]:
    root = tmp_path_factory.mktemp("corpus") / "in"
    expect = build_corpus(root)
    # A stale overlay in the output folder (inside the input folder): never scored.
    (root / "results").mkdir()
    Image.new("RGB", (8, 8)).save(root / "results" / "stale-overlay.png")
    return root, expect


def winclip(args: list[str], cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "winclip_cli", *args],
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        records = list(csv.reader(handle))
    header, body = records[0], records[1:]
    assert all(len(r) == len(header) for r in body), "a row with the wrong number of fields"
    return header, [dict(zip(header, r, strict=True)) for r in body]


@pytest.fixture(scope="module")
def corpus_run(corpus, model_dir, tmp_path_factory):
    root, _ = corpus
    work = tmp_path_factory.mktemp("corpus-run")
    out, rows_file = root / "results", work / "rows.csv"
    proc = winclip(
        ["segment", str(root), "--model", model_dir, "--out", str(out), "-o", str(rows_file)],
        work / "cache",
    )
    return proc, rows_file, out


def stderr_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8", "replace")


def test_exit_code_3_and_no_traceback(corpus_run):
    proc, _, _ = corpus_run
    assert proc.returncode == 3, stderr_of(proc)
    assert "Traceback" not in stderr_of(proc)
    assert "Warning" not in stderr_of(proc), "decoder warnings leaked onto stderr"
    assert proc.stdout == b"", "rows went to -o, so stdout must stay empty"


def test_one_row_per_image_file(corpus, corpus_run):
    root, expect = corpus
    header, rows = read_rows(corpus_run[1])
    assert header == COLUMNS
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows (symlink loop followed?)"
    # The CSV round-trips every name exactly: spaces, commas, quotes, newlines, non-UTF-8.
    assert sorted(paths) == sorted(str(root / rel) for rel in expect)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_carriage_returns_in_names_round_trip(model_dir, tmp_path, fmt):
    """A bare CR ends a CSV record for every reader (Python's csv, spreadsheets), so a
    field holding one must be quoted like a field holding a newline."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["carriage\rreturn.png", "crlf\r\nname.png", "plain.png"]
    for name in names:
        Image.new("RGB", (16, 16), (90, 60, 30)).save(folder / name)
    rows_file = tmp_path / f"rows.{fmt}"
    args = ["score", str(folder), "--model", model_dir, "--format", fmt, "-o", str(rows_file)]
    outcome = invoke(args, tmp_path / "cache")
    assert outcome.code == 0, outcome.stderr
    if fmt == "csv":
        paths = [r["path"] for r in read_rows(rows_file)[1]]
    else:
        text = rows_file.read_text(encoding="utf-8", errors="surrogateescape")
        paths = [json.loads(line)["path"] for line in text.splitlines(keepends=False) if line]
    assert sorted(paths) == sorted(str(folder / name) for name in names)


def test_rows_follow_the_sorted_walk(corpus, corpus_run):
    root, _ = corpus
    _, rows = read_rows(corpus_run[1])
    walked = [im.display for im in find_images([root], exclude=[root / "results"])]
    assert [r["path"] for r in rows] == walked


def test_statuses_and_reasons(corpus, corpus_run):
    root, expect = corpus
    _, rows = read_rows(corpus_run[1])
    by_path = {r["path"]: r for r in rows}
    wrong = {}
    for rel, want in expect.items():
        row = by_path[str(root / rel)]
        if row["status"] != want.status or want.reason.lower() not in row["error"].lower():
            wrong[rel] = (row["status"], row["error"])
    assert not wrong, f"unexpected status or reason: {wrong}"


def test_error_rows_are_one_line_and_empty_elsewhere(corpus_run):
    _, rows = read_rows(corpus_run[1])
    errors = [r for r in rows if r["status"] == "error"]
    assert errors
    for row in errors:
        assert row["error"].strip() and "\n" not in row["error"] and "\r" not in row["error"]
        assert row["score"] == "" and row["map_max"] == "" and row["overlay"] == ""
    for row in rows:
        assert row["status"] in ("ok", "error")
        if row["status"] == "ok":
            assert row["error"] == ""
            assert 0.0 <= float(row["score"]) <= 1.0
            assert 0.0 <= float(row["map_max"]) <= 1.0


def test_overlays_have_the_displayed_size(corpus, corpus_run):
    root, expect = corpus
    _, rows = read_rows(corpus_run[1])
    overlays = [r["overlay"] for r in rows if r["status"] == "ok"]
    assert len(overlays) == len(set(overlays)), "two inputs share an overlay file"
    for row in rows:
        if row["status"] != "ok":
            continue
        want = expect[os.path.relpath(row["path"], root)]
        with Image.open(row["overlay"]) as overlay:
            assert overlay.format == "PNG"
            assert overlay.size == want.size, row["path"]


def test_no_temporary_files_left_and_stale_overlay_not_scored(corpus_run):
    _, rows = read_rows(corpus_run[1])
    out = corpus_run[2]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    # '.hidden.png' has an overlay '.hidden.png.png'; anything else dotted is a temp file.
    assert [p.name for p in leftovers] == [".hidden.png.png"]
    assert str(out / "stale-overlay.png") not in {r["path"] for r in rows}


def test_exif_rotated_photo_is_scored_and_overlaid_as_displayed(corpus, corpus_run):
    root, _ = corpus
    _, rows = read_rows(corpus_run[1])
    by_path = {r["path"]: r for r in rows}
    rotated, twin = (
        by_path[str(root / "exif_6.jpg")],
        by_path[str(root / "exif_6_upright_twin.png")],
    )
    assert float(rotated["score"]) == pytest.approx(float(twin["score"]), abs=2e-6)
    assert float(rotated["map_max"]) == pytest.approx(float(twin["map_max"]), abs=2e-6)
    # Orientation 6 turns the stored left (red) half into the displayed top half.
    with Image.open(rotated["overlay"]) as overlay:
        pixels = np.asarray(overlay.convert("RGB"), dtype=np.float64)
    top, bottom = pixels[: pixels.shape[0] // 2], pixels[pixels.shape[0] // 2 :]
    assert top[..., 0].mean() > bottom[..., 0].mean() + 60
    assert bottom[..., 2].mean() > top[..., 2].mean() + 60


def test_sixteen_bit_is_scaled_not_clipped(corpus):
    root, _ = corpus
    for name in ("gray16.png", "gray16.tif", "gray16.pgm"):
        values = np.asarray(open_image(root / name).convert("L"), dtype=np.float64)[0]
        expected = np.linspace(0, 255, 64)
        assert np.abs(values - expected).max() <= 1.0, name


def test_transparency_and_cmyk_decode_as_shown(corpus):
    root, _ = corpus
    # Transparent palette entry 0 -> neutral grey; opaque entry 1 (green) stays green.
    shown = np.asarray(open_image(root / "palette_transparent.png"))
    assert tuple(shown[0, 0]) == (128, 128, 128)
    assert tuple(shown[15, 20]) == (0, 255, 0)
    # Alpha ramps 0 -> 255 left to right: the left column is the neutral background.
    rgba = np.asarray(open_image(root / "rgba.png"))
    assert np.all(rgba[:, 0] == 128)
    cmyk = np.asarray(open_image(root / "cmyk.tif"), dtype=np.float64)
    plain = np.asarray(Image.open(root / "plain.jpg").convert("RGB"), dtype=np.float64)
    assert np.abs(cmyk - plain).mean() < 12
    # Multi-frame: the first frame (red), at its own size.
    assert open_image(root / "multipage.tif").size == (20, 10)
    assert tuple(np.asarray(open_image(root / "animated.gif"))[5, 5]) == (255, 0, 0)


def test_walk_finds_exactly_the_image_files(corpus):
    root, expect = corpus
    found = find_images([root], exclude=[root / "results"])
    assert sorted(im.display for im in found) == sorted(str(root / rel) for rel in expect)
    assert len({im.relative for im in found}) == len(found)


def test_walk_lists_a_folder_reached_twice_once(tmp_path):
    """Two inputs reaching the same folder (one through a symlink): each file once."""
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(real / name)
    os.symlink(real, tmp_path / "alias")
    os.symlink(real, real / "loop")  # and a loop inside it
    found = find_images([tmp_path / "real", tmp_path / "alias", real / "a.png"])
    assert [im.path for im in found] == [real / "a.png", real / "b.png"]


def test_walk_survives_a_very_deep_tree(tmp_path):
    folders = [tmp_path / "deep"]
    for _ in range(1200):  # deeper than Python's recursion limit
        folders.append(folders[-1] / "d")
    try:
        for folder in folders:
            folder.mkdir()
        Image.new("RGB", (4, 4)).save(folders[-1] / "bottom.png")
        assert [im.path for im in find_images([folders[0]])] == [folders[-1] / "bottom.png"]
    finally:  # shutil.rmtree (pytest's clean-up) recurses too: remove it bottom-up here
        (folders[-1] / "bottom.png").unlink(missing_ok=True)
        for folder in reversed(folders):
            if folder.is_dir():
                folder.rmdir()


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """Overlay writers decode in threads. Each decode silences decoder warnings for its
    own duration only: afterwards the process's warning filters are exactly as before
    (unguarded, one thread restores another's "ignore everything" and it stays)."""
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    before = list(warnings.filters)

    def decode_many() -> None:
        for _ in range(200):
            open_image(path)

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


def test_file_vanishing_between_listing_and_reading(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (16, 12), (10, 20, 30)).save(tmp_path / name)
    images = find_images([tmp_path])
    (tmp_path / "b.png").unlink()
    with pytest.raises(ImageReadError, match="not found"):
        open_image(images[1].path)
    preprocess = Preprocessor((48, 48), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    item = ImageDataset(images, preprocess)[1]
    assert item.tensor is None and "not found" in item.error
    for workers in (0, 1):  # in process, and through a DataLoader worker
        found = list(batches(images, preprocess, batch_size=2, workers=workers))
        assert [b.indices for b in found] == [[0, 1], [2]]
        assert [b.readable for b in found] == [[0], [2]]
        assert set(found[0].errors) == {1} and "not found" in found[0].errors[1]
        pixels = torch.cat([b.pixels for b in found])
        assert pixels.shape == (2, 3, 48, 48) and torch.isfinite(pixels).all()


# ----- fail early and clearly: exit 2, a message, no rows ------------------------------
# In-process through Typer's runner (a subprocess per case would cost seconds each).


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def invoke(args: list[str], cache: Path) -> Outcome:
    from typer.testing import CliRunner

    from winclip_cli.cli import app

    env = {"WINCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(app, [*args, "--workers", "0"], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(smooth(32, 32, 10 + i)).save(folder / f"part{i}.png")
    return folder


@pytest.fixture(scope="module")
def good_refs(tmp_path_factory) -> Path:
    """Two readable reference images (outside the inputs: --ref is never scored)."""
    folder = tmp_path_factory.mktemp("refs") / "good"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(smooth(32, 32, 30 + i)).save(folder / f"ref{i}.png")
    return folder


def assert_usage_error(outcome: Outcome, *words: str) -> None:
    assert outcome.code == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert outcome.stdout == "", "no rows on a usage error"
    assert "error" in outcome.stderr.lower()
    message = " ".join(outcome.stderr.split())  # rich may wrap long lines
    for word in words:
        assert word.lower() in message.lower(), outcome.stderr


def test_output_file_in_missing_folder(small_set, tmp_path):
    """The folder is made (as --out's is); a run that then writes nothing (here: the
    model can't be loaded) leaves neither the file nor the folders behind."""
    target = tmp_path / "no" / "such" / "folder" / "rows.csv"
    outcome = invoke(["score", str(small_set), "--model", BAD_MODEL, "-o", str(target)], tmp_path)
    assert outcome.code == 4, outcome.stderr
    assert not (tmp_path / "no").exists()


def test_output_file_is_a_folder(small_set, tmp_path):
    outcome = invoke(["score", str(small_set), "--model", BAD_MODEL, "-o", str(tmp_path)], tmp_path)
    assert_usage_error(outcome, "folder")


def test_out_folder_under_a_regular_file(small_set, tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    out = blocker / "overlays"
    args = ["segment", str(small_set), "--model", BAD_MODEL, "--out", str(out)]
    assert_usage_error(invoke(args, tmp_path), "output folder")
    assert blocker.read_text() == "x"


def test_usage_error_leaves_an_existing_output_file_alone(small_set, good_refs, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("precious\n")
    args = ["fewshot", str(small_set), "--ref", str(good_refs), "--k", "0", "-o", str(rows)]
    assert_usage_error(invoke([*args, "--model", BAD_MODEL], tmp_path), "--k")
    assert rows.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["", "   ", "__"])
def test_empty_class_name(small_set, tmp_path, name):
    args = ["score", str(small_set), "--model", BAD_MODEL, "--class", name]
    assert_usage_error(invoke(args, tmp_path), "class")


def test_k_zero_with_fewshot(small_set, good_refs, tmp_path):
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(good_refs), "--k", "0"]
    assert_usage_error(invoke(args, tmp_path), "--k")


def test_ref_folder_with_fewer_than_k_images(small_set, good_refs, tmp_path):
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(good_refs), "--k", "3"]
    assert_usage_error(invoke(args, tmp_path), "--k 3", str(good_refs))


@pytest.fixture()
def ref_mostly_broken(tmp_path) -> Path:
    """Four files with image names, only two of them readable."""
    ref = tmp_path / "good"
    ref.mkdir()
    for i in range(2):
        Image.fromarray(smooth(32, 32, 20 + i)).save(ref / f"ok{i}.png")
    (ref / "broken0.png").write_bytes(b"")
    (ref / "broken1.png").write_bytes(b"not a png")
    return ref


def test_ref_folder_with_fewer_than_k_readable_images(small_set, model_dir, ref_mostly_broken):
    args = ["fewshot", str(small_set), "--model", model_dir, "--ref", str(ref_mostly_broken)]
    assert_usage_error(invoke(args, ref_mostly_broken.parent), "readable", "--k 4")


def test_ref_folder_with_fewer_than_k_readable_images_fails_before_the_model(
    small_set, ref_mostly_broken
):
    """Reading the references needs no model: a bad --ref must not wait for (or be
    masked by) model loading. With an unloadable model, the usage error must win."""
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(ref_mostly_broken)]
    assert_usage_error(invoke(args, ref_mostly_broken.parent), "readable")


def test_corrupt_bank_file(small_set, tmp_path):
    """Through a real process: stderr must hold the message and nothing else (no Python
    warnings from the unpickler about the garbage it was fed)."""
    bank = tmp_path / "refs.bank"
    bank.write_bytes(b"\x80\x04garbage that is not a torch file")
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(bank)]
    proc = winclip(args, tmp_path)
    outcome = Outcome(proc.returncode, proc.stdout.decode(), stderr_of(proc))
    assert_usage_error(outcome, str(bank))
    assert "Warning" not in outcome.stderr, outcome.stderr


def make_bank(small_set: Path, refs: Path, model: str, bank: Path) -> None:
    args = ["fewshot", str(small_set), "--model", model, "--ref", str(refs), "--k", "2"]
    made = invoke([*args, "--save-bank", str(bank), "--out", str(bank.parent / "o")], bank.parent)
    assert made.code == 0, made.stderr
    assert bank.is_file()


def test_truncated_bank_file(small_set, good_refs, model_dir, tmp_path):
    bank = tmp_path / "refs.bank"
    make_bank(small_set, good_refs, model_dir, bank)
    bank.write_bytes(bank.read_bytes()[: bank.stat().st_size // 2])
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(bank)]
    assert_usage_error(invoke(args, tmp_path), str(bank))


def test_bank_from_another_model(small_set, good_refs, model_dir, tmp_path):
    bank = tmp_path / "refs.bank"
    other = str(make_tiny_model(tmp_path / "other-model", seed=1)["local_dir"])
    make_bank(small_set, good_refs, other, bank)
    args = ["fewshot", str(small_set), "--model", model_dir, "--ref", str(bank)]
    assert_usage_error(invoke([*args, "--out", str(tmp_path / "o2")], tmp_path), "rebuild")


def test_bank_is_reused_whatever_the_model_folder_is_called(
    small_set, good_refs, model_dir, tmp_path
):
    """`local-dir:x`, `local-dir:x/` and a copy of x are the same model: the bank fits."""
    bank = tmp_path / "refs.bank"
    make_bank(small_set, good_refs, model_dir, bank)
    copy = tmp_path / "copy-of-model"
    shutil.copytree(model_dir.removeprefix("local-dir:"), copy)
    scores = []
    for model in (model_dir, model_dir + "/", f"local-dir:{copy}"):
        rows = tmp_path / f"rows{len(scores)}.csv"
        args = ["fewshot", str(small_set), "--model", model, "--ref", str(bank), "-o", str(rows)]
        outcome = invoke([*args, "--out", str(tmp_path / "o")], tmp_path)
        assert outcome.code == 0, outcome.stderr
        scores.append([r["score"] for r in read_rows(rows)[1]])
    assert scores[0] == scores[1] == scores[2]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--temperature", "nan", ["--temperature", "positive number"]),
        ("--temperature", "inf", ["--temperature", "positive number"]),
        ("--temperature", "1e-300", ["--temperature", "at least"]),
        ("--threshold", "nan", ["--threshold", "number"]),
        ("--threshold", "inf", ["--threshold", "number"]),
    ],
)
def test_numbers_that_are_not_numbers(small_set, tmp_path, option, value, words):
    """NaN would pass every `<= 0` check and make a gating job pass on meaningless scores."""
    args = ["score", str(small_set), "--model", BAD_MODEL, option, value]
    assert_usage_error(invoke(args, tmp_path), *words)


@pytest.mark.parametrize(
    "extra",
    [["--ref", ""], ["--out", ""], ["--cache-dir", ""], ["--weights", ""], ["-o", ""], [""]],
    ids=["ref", "out", "cache-dir", "weights", "output", "input"],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(small_set, tmp_path, extra):
    """`--ref "$REF"` with REF unset in a cron job must not take any images in the
    current folder as the known-good references."""
    args = ["segment", str(small_set), "--model", BAD_MODEL, *extra]
    outcome = invoke(args, tmp_path)
    assert outcome.code == 2, outcome.stderr
    assert "empty path" in outcome.stderr and outcome.stdout == ""
    assert not any(tmp_path.iterdir()), "nothing may be written"


def test_k_and_seed_need_a_reference_folder(small_set, good_refs, model_dir, tmp_path):
    for extra in (["--k", "2"], ["--seed", "1"]):
        args = ["score", str(small_set), "--model", BAD_MODEL, *extra]
        assert_usage_error(invoke(args, tmp_path), "need --ref")
    bank = tmp_path / "refs.bank"
    make_bank(small_set, good_refs, model_dir, bank)  # two images
    args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(bank)]
    assert_usage_error(invoke([*args, "--k", "3"], tmp_path), "holds 2", "--k 3")
    assert_usage_error(invoke([*args, "--seed", "1"], tmp_path), "--seed", "bank")
    args = ["fewshot", str(small_set), "--model", model_dir, "--ref", str(bank), "--k", "2"]
    outcome = invoke([*args, "--out", str(tmp_path / "o")], tmp_path)
    assert outcome.code == 0, outcome.stderr  # the bank's own K is fine


def test_an_output_file_that_is_an_input_is_refused(small_set, good_refs, tmp_path):
    """`-o` on an input image would truncate it before it is read; the same for
    --save-bank on a reference and -o on the bank being read."""
    image = tmp_path / "in" / "part.png"
    image.parent.mkdir()
    shutil.copy(next(small_set.iterdir()), image)
    before = image.read_bytes()
    base = ["score", str(image.parent), "--model", BAD_MODEL]
    assert_usage_error(invoke([*base, "-o", str(image)], tmp_path), "-o", "input")
    ref = next(good_refs.iterdir())
    args = [*base, "--ref", str(good_refs), "--k", "2", "--save-bank", str(ref)]
    assert_usage_error(invoke(args, tmp_path), "--save-bank", "input")
    assert image.read_bytes() == before
    args = [*base, "--ref", str(good_refs), "--k", "2", "--save-bank", str(tmp_path / "b"), "-o"]
    assert_usage_error(invoke([*args, str(tmp_path / "b")], tmp_path), "same file")


def test_an_input_inside_the_out_or_ref_folder_says_so(small_set, good_refs, tmp_path):
    """The walk never reads the output or --ref folder: naming one as the input gets
    the reason, not "no images found"."""
    args = ["segment", str(small_set), "--model", BAD_MODEL, "--out", str(small_set)]
    assert_usage_error(invoke(args, tmp_path), "output folder", "another --out")
    args = ["segment", str(good_refs), "--model", BAD_MODEL, "--ref", str(good_refs), "--k", "2"]
    assert_usage_error(invoke(args, tmp_path), "--ref folder")


def test_score_reads_the_default_output_folder_when_named(
    small_set, model_dir, tmp_path, monkeypatch
):
    """score makes no overlays: `winclip score winclip-out` reads the folder it names,
    while a walk of the folder above still skips it."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(small_set, tmp_path / "winclip-out")
    rows = tmp_path / "rows.csv"
    outcome = invoke(["score", "winclip-out", "--model", model_dir, "-o", str(rows)], tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert len(read_rows(rows)[1]) == 2
    outcome = invoke(["score", ".", "--model", model_dir, "-o", str(rows)], tmp_path)
    assert outcome.code == 2 and "no images found" in outcome.stderr


def test_a_long_but_legal_file_name_gets_its_overlay(model_dir, tmp_path):
    """A 245-byte name: its overlay's name (+ '.png') is legal, and so must be the
    temporary name it is written under."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = "a" * 241 + ".png"
    Image.fromarray(smooth(32, 24, 3)).save(folder / name)
    out, rows = tmp_path / "out", tmp_path / "rows.csv"
    args = ["segment", str(folder), "--model", model_dir, "--out", str(out), "-o", str(rows)]
    outcome = invoke(args, tmp_path)
    assert outcome.code == 0, outcome.stderr
    [row] = read_rows(rows)[1]
    assert row["status"] == "ok" and Path(row["overlay"]).name == name + ".png"


def test_no_output_may_overwrite_the_model_or_the_prompts(small_set, model_dir, tmp_path):
    """-o onto the weights file killed the run (Bus error: the weights are memory-mapped)
    and destroyed the checkpoint; onto the prompt file it replaced the prompts by rows."""
    folder = Path(model_dir.removeprefix("local-dir:"))
    weights = tmp_path / "w.pt"
    shutil.copy(folder / "open_clip_pytorch_model.bin", weights)
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"normal": ["a fine {}"], "anomalous": ["a broken {}"]}')
    saved = {p: p.read_bytes() for p in (weights, prompts, folder / "open_clip_pytorch_model.bin")}
    base = ["score", str(small_set), "--model", model_dir]
    cases = [
        ["--weights", str(weights), "-o", str(weights)],
        ["--prompts", str(prompts), "-o", str(prompts)],
        ["-o", str(folder / "open_clip_pytorch_model.bin")],
        ["-o", str(folder / "open_clip_config.json")],
    ]
    for extra in cases:
        assert_usage_error(invoke([*base, *extra], tmp_path), "would overwrite an input")
    assert all(p.read_bytes() == data for p, data in saved.items())


def test_out_inside_ref_is_refused(small_set, good_refs, tmp_path):
    """Overlays written into the --ref folder would be taken as references next time."""
    for out in (good_refs, good_refs / "sub"):
        args = ["fewshot", str(small_set), "--model", BAD_MODEL, "--ref", str(good_refs)]
        assert_usage_error(invoke([*args, "--k", "2", "--out", str(out)], tmp_path), "--ref folder")


def test_rows_file_named_like_an_overlay_is_refused(small_set, tmp_path):
    """The overlay, renamed into place, would replace the rows file: every row lost."""
    out = tmp_path / "ov"
    name = "part0.png"
    args = ["segment", str(small_set), "--model", BAD_MODEL, "--out", str(out)]
    assert_usage_error(invoke([*args, "-o", str(out / f"{name}.png")], tmp_path), "overlay")
    maps = [*args, "--save-maps", "-o", str(out / f"{name}.npy")]
    assert_usage_error(invoke(maps, tmp_path), "overlay or map")


def test_an_overlay_may_not_overwrite_an_input_file(tmp_path):
    """`segment a.png a.png.png --out .`: a.png's overlay is named a.png.png, an input."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "a.png.png"):
        Image.fromarray(smooth(24, 24, len(name))).save(folder / name)
    before = (folder / "a.png.png").read_bytes()
    files = [str(folder / "a.png"), str(folder / "a.png.png")]
    args = ["segment", *files, "--model", BAD_MODEL, "--out", str(folder)]
    assert_usage_error(invoke(args, tmp_path), "would overwrite an input")
    assert (folder / "a.png.png").read_bytes() == before


def test_messages_quoting_a_name_with_a_newline_stay_one_line(tmp_path):
    from winclip_cli.progress import Reporter

    stream = io.StringIO()
    Reporter(stream=stream).error("cannot resume: a\nb.png is 'normal'")
    assert stream.getvalue().count("\n") == 1 and "a\\nb.png" in stream.getvalue()
