"""Finding input images, decoding them safely, and batching them (DataLoader)."""

from __future__ import annotations

import os
import stat
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, exception_reason
from .imaging import to_rgb
from .tiling import Box, TileGrid, TileGridError, draft_scale, mostly_upsampled, tile_boxes
from .workers import init_worker, stop_workers, track

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}
)
# Decoding stops above this many pixels (a header can claim any size: decompression bomb).
MAX_PIXELS = 2**28  # 268 MP, e.g. 16384 x 16384
# Pillow's own default (89 MP) would refuse real line-scan and 100+ MP camera images.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Formats whose mode "I" images are 16-bit unsigned (PGM; PNG in older Pillow versions).
SIXTEEN_BIT_AS_I = frozenset({"PNG", "PPM"})


# catch_warnings swaps the process-wide filter list: threads decoding at once (the overlay
# writers) must take turns, or one restores another's "ignore" and it stays for good.
_QUIET_DECODING = threading.Lock()


@dataclass(frozen=True)
class InputImage:
    """One input file: where it is, how it is shown in the output, and its name below base."""

    path: Path  # as it is opened
    display: str  # the `path` column: the path as the user wrote it, walked down
    relative: str  # path below the inputs' common base, for output file names


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: Path, skip: set[tuple[int, int]], seen: set[tuple[int, int]]) -> Iterator[Path]:
    """Image files under root, sorted, following symlinked folders but never in a loop
    and never into a folder already in ``seen`` (updated: share it between roots).

    Depth-first with an explicit stack, so a deep tree can't exhaust Python's recursion.
    """

    def enter(folder: Path) -> Iterator[os.DirEntry[str]] | None:
        try:
            st = folder.stat()
        except OSError:
            return None
        ident = (st.st_dev, st.st_ino)
        if ident in seen or ident in skip:
            return None
        seen.add(ident)
        try:
            with os.scandir(folder) as listing:
                return iter(sorted(listing, key=lambda e: e.name))
        except OSError:
            return None

    stack = [entries] if (entries := enter(root)) is not None else []
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks; False for dangling ones
        except OSError:
            is_dir = False
        if is_dir:
            if (entries := enter(Path(entry.path))) is not None:
                stack.append(entries)
        elif _is_image_name(entry.name):
            yield Path(entry.path)


def _folder_ids(folders: Iterable[Path | None]) -> set[tuple[int, int]]:
    ids = set()
    for folder in folders:
        if folder is not None and folder.is_dir():
            st = folder.stat()
            ids.add((st.st_dev, st.st_ino))
    return ids


def find_images(
    inputs: Sequence[Path],
    exclude: Iterable[Path | None] = (),
    missing_ok: Collection[Path] = (),
) -> list[InputImage]:
    """Every image below the given files and folders, in the order given, each once.

    Folders are walked recursively, in sorted order (image extensions only,
    case-insensitive); files named explicitly are taken whatever their extension.
    Folders in ``exclude`` (the tool's output folder, the reference folder) are never
    entered. Raises FileNotFoundError for an input that does not exist, unless it is in
    ``missing_ok`` (a list read from stdin): it is then an input, whose row says so.
    """
    skip = _folder_ids(exclude)
    seen: set[tuple[int, int]] = set()  # folders walked: through a second path, not again
    found: list[Path] = []
    for given in inputs:
        if given.is_dir():
            found.extend(_walk(given, skip, seen))
        elif given.exists() or given.is_symlink() or given in missing_ok:
            found.append(given)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    if not unique:
        return []
    bases = [
        os.path.abspath(p) if p.is_dir() else os.path.dirname(os.path.abspath(p)) for p in inputs
    ]
    base = os.path.commonpath(bases)
    return [
        InputImage(path, str(path), os.path.relpath(absolute, base))
        for absolute, path in unique.items()
    ]


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, after the EXIF orientation (read from the header only)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: load() and exif_transpose decide later
        orientation = 1
    return (img.height, img.width) if orientation in _SWAPPING_ORIENTATIONS else img.size


def open_image(path: Path, draft: Callable[[int, int], int] | None = None) -> Image.Image:
    """The picture as a viewer shows it (first frame, EXIF orientation applied), in RGB.

    ``draft(width, height)`` (displayed size) -> a reduction 1, 2, 4 or 8: JPEGs are then
    decoded at about 1/scale of their size in the DCT domain (PIL's draft mode), which
    is far faster and smaller; other formats ignore it. Raises ImageReadError with a
    one-line reason for anything that can't be decoded.
    """
    try:
        kind = os.stat(path).st_mode  # follows symlinks
        if stat.S_ISDIR(kind):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(kind):  # a FIFO would block the run forever, a device never end
            raise ImageReadError("not a regular file (pipe, socket or device)")
        with _QUIET_DECODING, warnings.catch_warnings():
            # Damaged files make decoders warn ("Corrupt EXIF data", ...) on stderr, once
            # per file and from worker processes: the row's status says it all.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageReadError(
                        f"image too large: {img.width}x{img.height} pixels "
                        f"(limit {MAX_PIXELS // 1_000_000} MP)"
                    )
                if draft is not None and img.format == "JPEG":
                    scale = draft(*_displayed_size(img))
                    if scale > 1:
                        img.draft(img.mode, (img.width // scale, img.height // scale))
                img.load()
                if img.mode == "I" and img.format in SIXTEEN_BIT_AS_I:
                    img = img.convert("I;16")  # 16-bit unsigned: scale by 65535, even if dark
                shown = ImageOps.exif_transpose(img)
                return to_rgb(shown if shown is not None else img)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        why = "broken symbolic link" if path.is_symlink() else "file not found (moved or deleted?)"
        raise ImageReadError(why) from exc
    except IsADirectoryError as exc:
        raise ImageReadError("is a folder, not an image file") from exc
    except PermissionError as exc:
        raise ImageReadError("permission denied") from exc
    except UnidentifiedImageError as exc:
        empty = path.is_file() and path.stat().st_size == 0
        raise ImageReadError("empty file" if empty else "not an image (unknown format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image too large: {exception_reason(exc)}") from exc
    except OSError as exc:
        raise ImageReadError(f"damaged image: {exception_reason(exc)}") from exc
    except Exception as exc:  # decoders raise many types on hostile bytes
        reason = exception_reason(exc)
        raise ImageReadError(f"cannot decode image: {reason}") from exc


@dataclass
class Decoded:
    """A dataset item: its index, the model input (or None) and the read error (or None).

    Untiled, ``tensor`` is one (3, H, W) input. Tiled, it is (R*C, 3, H, W), one input per
    tile, ``boxes`` the tiles' boxes on the image at its displayed ``size`` (width,
    height), and ``small`` how many tiles are below the model input (upsampled)."""

    index: int
    tensor: torch.Tensor | None
    error: str | None
    boxes: list[Box] | None = None
    size: tuple[int, int] | None = None
    small: int = 0


def _input_side(preprocess: Callable[[Image.Image], torch.Tensor]) -> tuple[int, int]:
    size = getattr(preprocess, "size", None)  # imaging.Preprocessor: (height, width)
    return (int(size[0]), int(size[1])) if size is not None else (1, 1)


def decode_tiles(
    path: Path, grid: TileGrid, preprocess: Callable[[Image.Image], torch.Tensor]
) -> tuple[torch.Tensor, list[Box], tuple[int, int], int]:
    """The tiles of one image as model inputs (R*C, 3, H, W), their boxes on the image
    at its displayed size, that size (width, height) and how many tiles are upsampled.

    The grid is laid on the EXIF-oriented image at its own size; each tile is cropped
    from the decoded pixels and preprocessed like a whole image. A JPEG is decoded at a
    reduced size (draft) when every tile stays at least the model input (draft_scale);
    the boxes are then scaled onto the reduced pixels. Raises ImageReadError or
    TileGridError.
    """
    input_hw = _input_side(preprocess)
    shown: tuple[int, int] | None = None

    def draft(width: int, height: int) -> int:
        nonlocal shown
        shown = (width, height)
        return draft_scale(width, height, grid, input_hw)

    picture = open_image(path, draft=draft)
    width, height = shown if shown is not None else picture.size
    boxes = tile_boxes(width, height, grid)
    fx, fy = picture.width / width, picture.height / height  # 1 unless drafted
    tensors = []
    for left, top, right, bottom in boxes:
        crop = (round(left * fx), round(top * fy), round(right * fx), round(bottom * fy))
        tensors.append(preprocess(picture.crop(crop)))
    small = sum(mostly_upsampled([box], input_hw) for box in boxes)
    return torch.stack(tensors), boxes, (width, height), small


class ImageDataset(torch.utils.data.Dataset[Decoded]):
    """Decodes and preprocesses one input per item; a bad file yields an error, not a crash.

    With a tile ``grid`` other than 1x1 an item holds the image's tiles (decode_tiles),
    and a grid that does not fit the image is that item's error."""

    def __init__(
        self,
        images: Sequence[InputImage],
        preprocess: Callable[[Image.Image], torch.Tensor],
        grid: TileGrid | None = None,
    ):
        self.images = images
        self.preprocess = preprocess
        self.grid = None if grid is None or grid.is_single else grid

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Decoded:
        try:
            if self.grid is None:
                return Decoded(index, self.preprocess(open_image(self.images[index].path)), None)
            tensor, boxes, size, small = decode_tiles(
                self.images[index].path, self.grid, self.preprocess
            )
            return Decoded(index, tensor, None, boxes, size, small)
        except (ImageReadError, TileGridError) as exc:
            return Decoded(index, None, str(exc))


class Batch(NamedTuple):
    """Consecutive inputs: ``indices`` in input order; ``pixels`` (n, 3, H, W) holds the
    readable ones, ``readable`` their indices; ``errors`` maps the others to a reason.
    A NamedTuple, so the DataLoader can pin ``pixels`` for a fast copy to the GPU."""

    indices: list[int]
    pixels: torch.Tensor | None
    readable: list[int]
    errors: dict[int, str]
    # Tiled: per readable input, (its boxes, displayed size, upsampled tiles); its tiles
    # are consecutive rows of ``pixels``, in ``readable`` order. None when untiled.
    tiles: list[tuple[list[Box], tuple[int, int], int]] | None = None


def collate(items: list[Decoded]) -> Batch:
    """Stack the readable inputs of a batch (in the worker, off the main thread)."""
    good = [d for d in items if d.tensor is not None]
    tensors = [d.tensor for d in good if d.tensor is not None]
    errors = {d.index: d.error for d in items if d.error is not None}
    tiled = any(d.boxes is not None for d in good)
    if tiled:
        pixels = torch.cat(tensors) if tensors else None
        tiles = [(d.boxes or [], d.size or (0, 0), d.small) for d in good]
        return Batch([d.index for d in items], pixels, [d.index for d in good], errors, tiles)
    pixels = torch.stack(tensors) if tensors else None
    return Batch([d.index for d in items], pixels, [d.index for d in good], errors)


def batches(
    images: Sequence[InputImage],
    preprocess: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    grid: TileGrid | None = None,
) -> Iterator[Batch]:
    """Decoded inputs in input order, ``batch_size`` at a time, decoded by ``workers``
    background processes (0: in this process) so decoding overlaps inference.
    ``pin_memory``: page-locked batches, for non-blocking copies to a CUDA device.
    ``grid``: tile each image (a batch then holds the tiles of ``batch_size`` images)."""
    dataset = ImageDataset(images, preprocess, grid)
    if workers > 0 and len(images) > batch_size:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=init_worker,
            prefetch_factor=2,
            pin_memory=pin_memory,
        )
        iterator = track(iter(loader))
        try:
            yield from iterator
        finally:  # done, or abandoned (an error, Ctrl-C): never wait on a worker at exit
            stop_workers(iterator)
        return
    # A few images: starting worker processes would cost more than it saves.
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if pin_memory and batch.pixels is not None:
            batch = batch._replace(pixels=batch.pixels.pin_memory())
        yield batch
