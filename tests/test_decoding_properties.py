"""Decoding never crashes: any bytes give an image or an ImageReadError, and any valid
image of any mode and size gives a finite (3, H, W) model input."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from winclip_cli.data import IMAGE_EXTENSIONS, ImageDataset, ImageReadError, InputImage, open_image
from winclip_cli.imaging import Preprocessor, to_rgb

SIZE = (40, 56)  # (height, width): not square, so a transposed tensor would show
PREPROCESS = Preprocessor(SIZE, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (mode, format, extension) combinations PIL can write.
WRITABLE = [
    ("1", "PNG", ".png"),
    ("1", "BMP", ".bmp"),
    ("1", "TIFF", ".tif"),
    ("L", "PNG", ".png"),
    ("L", "JPEG", ".jpg"),
    ("L", "PPM", ".pgm"),
    ("L", "WEBP", ".webp"),
    ("LA", "PNG", ".png"),
    ("LA", "TIFF", ".tiff"),
    ("P", "PNG", ".png"),
    ("P", "GIF", ".gif"),
    ("P", "BMP", ".bmp"),
    ("P", "TIFF", ".tif"),
    ("RGB", "PNG", ".png"),
    ("RGB", "JPEG", ".jpeg"),
    ("RGB", "BMP", ".bmp"),
    ("RGB", "TIFF", ".tif"),
    ("RGB", "WEBP", ".webp"),
    ("RGB", "PPM", ".ppm"),
    ("RGB", "GIF", ".gif"),
    ("RGBA", "PNG", ".png"),
    ("RGBA", "TIFF", ".tif"),
    ("RGBA", "WEBP", ".webp"),
    ("RGBA", "BMP", ".bmp"),
    ("CMYK", "JPEG", ".jpg"),
    ("CMYK", "TIFF", ".tif"),
    ("YCbCr", "TIFF", ".tif"),
    ("I;16", "PNG", ".png"),
    ("I;16", "TIFF", ".tif"),
    ("I", "TIFF", ".tif"),
    ("I", "PPM", ".pgm"),
    ("F", "TIFF", ".tif"),
]
BANDS = {"1": 1, "L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3}


def random_image(mode: str, width: int, height: int, seed: int, specials: bool) -> Image.Image:
    """Random pixels in ``mode``; ``specials`` puts NaN/inf (float) or extremes (int) in."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    if mode == "I;16":
        values = rng.integers(0, 65536, shape, dtype=np.uint16)
        return Image.fromarray(values)
    if mode == "I":
        low, high = (-(2**31), 2**31 - 1) if specials else (0, 65535)
        return Image.fromarray(rng.integers(low, high, shape, dtype=np.int64).astype(np.int32))
    if mode == "F":
        values = rng.normal(0, 1000 if specials else 0.3, shape).astype(np.float32)
        if specials:
            values.flat[rng.integers(0, values.size, 3)] = [np.nan, np.inf, -np.inf]
        return Image.fromarray(values)
    data = rng.integers(0, 256, (*shape, BANDS[mode]), dtype=np.uint8)
    if mode in ("1", "L", "P"):
        image = Image.fromarray(data[..., 0], mode="L")
        if mode == "1":
            return image.convert("1")
        if mode == "P":
            image = image.convert("P")
            image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
            if specials:
                image.info["transparency"] = int(rng.integers(0, 256))
        return image
    if mode in ("RGB", "RGBA"):
        return Image.fromarray(data, mode=mode)
    return Image.frombytes(mode, (width, height), data.tobytes())


def write_image(image: Image.Image, fmt: str, folder: Path, ext: str) -> Path:
    path = folder / f"img{ext}"
    params = {}
    if image.mode == "P" and "transparency" in image.info:
        params["transparency"] = image.info["transparency"]
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = 80
    image.save(path, format=fmt, **params)
    return path


def check_tensor(x: torch.Tensor) -> None:
    assert x.shape == (3, *SIZE)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()


sizes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.tuples(st.integers(1, 3), st.integers(200, 1500)),  # very tall
    st.tuples(st.integers(200, 1500), st.integers(1, 3)),  # very wide
)


@SETTINGS
@given(
    kind=st.sampled_from(WRITABLE),
    size=sizes,
    seed=st.integers(0, 2**32 - 1),
    specials=st.booleans(),
)
@example(kind=("I;16", "PNG", ".png"), size=(1, 1), seed=0, specials=False)
@example(kind=("F", "TIFF", ".tif"), size=(3, 2), seed=1, specials=True)
@example(kind=("P", "GIF", ".gif"), size=(2000, 1), seed=2, specials=True)
def test_any_valid_image_gives_a_finite_model_input(kind, size, seed, specials):
    mode, fmt, ext = kind
    width, height = size
    image = random_image(mode, width, height, seed, specials)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = write_image(image, fmt, Path(folder), ext)
        except (OSError, ValueError) as exc:  # PIL can't write this combination: not our case
            assume(False)
            raise AssertionError("unreachable") from exc
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a RuntimeWarning (NaN casts) is a bug too
            shown = open_image(path)
            assert shown.mode == "RGB"
            assert shown.size == (width, height)
            check_tensor(PREPROCESS(shown))


@SETTINGS
@given(
    mode=st.sampled_from(
        [
            *("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK"),
            *("YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "F"),
        ]
    ),
    size=sizes,
    seed=st.integers(0, 2**32 - 1),
)
def test_to_rgb_handles_every_mode_in_memory(mode, size, seed):
    width, height = size
    rng = np.random.default_rng(seed)
    image = Image.new(mode, (width, height))
    raw = rng.integers(0, 256, len(image.tobytes()), dtype=np.uint8).tobytes()
    image.frombytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb(image)
        assert rgb.mode == "RGB" and rgb.size == (width, height)
        check_tensor(PREPROCESS(image))


@SETTINGS
@given(values=st.lists(st.integers(0, 65535), min_size=2, max_size=64))
def test_sixteen_bit_values_are_scaled_not_clipped(values):
    assume(max(values) > 255)  # the case that clipping to 8 bits would turn white
    array = np.array([values], dtype=np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wide.png"
        Image.fromarray(array).save(path)
        grey = np.asarray(open_image(path).convert("L"), dtype=np.float64)[0]
    assert np.abs(grey - array[0] / 65535 * 255).max() <= 1.0


def encoded_samples() -> list[bytes]:
    """Small valid files of many formats, for the mutation test to start from."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    samples = []
    for mode, fmt, _ in WRITABLE:
        if mode in ("I", "F", "I;16"):
            continue
        buffer = io.BytesIO()
        try:
            picture.convert(mode).save(buffer, format=fmt)
        except (OSError, ValueError):
            continue
        samples.append(buffer.getvalue())
    return samples


SAMPLES = encoded_samples()
MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P5\n",
    b"P6\n",
]


@st.composite
def hostile_bytes(draw) -> bytes:
    """Random bytes, a magic number with random bytes after it, or a valid file with
    random bytes changed, cut short or appended."""
    kind = draw(st.sampled_from(["random", "magic", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    if draw(st.booleans()):
        data = data[:cut]
    return bytes(data) + draw(st.binary(max_size=64))


@settings(SETTINGS, max_examples=200)
@given(data=hostile_bytes(), ext=st.sampled_from(sorted(IMAGE_EXTENSIONS)))
def test_any_bytes_decode_or_raise_image_read_error(data, ext):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{ext}"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # decoder warnings must not reach stderr either
            try:
                shown = open_image(path)
            except ImageReadError as exc:
                message = str(exc)
                assert message.strip() and "\n" not in message and "\r" not in message
            else:
                assert shown.mode == "RGB" and shown.width >= 1 and shown.height >= 1
                check_tensor(PREPROCESS(shown))
        # The dataset turns the same bytes into an error or a tensor, never an exception.
        item = ImageDataset([InputImage(path, str(path), path.name)], PREPROCESS)[0]
        assert (item.tensor is None) != (item.error is None)


@pytest.mark.parametrize("name", ["folder.png", "missing.png"])
def test_non_files_raise_image_read_error(tmp_path, name):
    if name == "folder.png":
        (tmp_path / name).mkdir()
    with pytest.raises(ImageReadError):
        open_image(tmp_path / name)
