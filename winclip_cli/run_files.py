"""What a run (or calibrate) reads and writes, for the one overlap check
(overlaps.refuse_overlaps): no output may be a file the run reads or another output."""

from __future__ import annotations

from pathlib import Path

from .checks import model_files
from .data import InputImage
from .errors import UsageError
from .manifest import manifest_path
from .options import CalibrateOptions, RunOptions
from .outputs import output_name
from .overlaps import FileUse, refuse_overlaps
from .paths import is_within


def _ref_and_pool(opts: RunOptions | CalibrateOptions) -> list[tuple[str, Path]]:
    """--ref and --pool, where given: files or folders a run reads."""
    given = (("--ref", opts.ref), ("--pool", opts.pool))
    return [(option, path) for option, path in given if path is not None]


def _kind(path: Path) -> str:
    return "folder" if path.is_dir() else "file"


def run_files(
    opts: RunOptions, images: list[InputImage], refs: list[InputImage]
) -> tuple[list[FileUse], list[FileUse]]:
    """What a run reads (inputs, references, --ref, the calibration, the model's files)
    and what it writes (-o and its manifest, --save-bank, --report, each image's
    overlay, map and mask), for the one overlap check."""
    reads = [FileUse("the input image", im.path) for im in images]
    reads += [FileUse("the reference image", im.path) for im in refs]
    reads += [FileUse(f"the {option} {_kind(path)}", path) for option, path in _ref_and_pool(opts)]
    if opts.calibration is not None:
        reads.append(FileUse("the --calibration file", opts.calibration))
    reads += model_files(opts.model)
    writes: list[FileUse] = []
    if opts.output is not None and not opts.to_stdout:
        output = Path(opts.output)
        writes += [FileUse("-o", output), FileUse("the run manifest", manifest_path(output))]
    if opts.save_bank is not None:
        writes.append(FileUse("--save-bank", opts.save_bank))
    if opts.report is not None:
        writes.append(FileUse("--report", opts.report))
    if opts.save_pool is not None:
        writes.append(FileUse("--save-pool", opts.save_pool))
    if opts.maps:
        suffixes = ["." + opts.overlay_format]
        suffixes += [".npy"] if opts.save_maps else []
        suffixes += [".mask.png"] if opts.save_masks else []
        writes += [
            FileUse(f"{im.display}'s overlay or map", output_name(opts.out_dir, im.relative, s))
            for im in images
            for s in suffixes
        ]
    return reads, writes


def refuse_clobbering(opts: RunOptions, images: list[InputImage], refs: list[InputImage]) -> None:
    """Nothing the run writes may be something it reads or another of its outputs, and
    overlays never go where references are read from."""
    refuse_overlaps(*run_files(opts, images, refs))
    if (
        opts.maps
        and opts.ref is not None
        and opts.ref.is_dir()
        and is_within(opts.out_dir, opts.ref)
    ):
        raise UsageError(
            f"--out {opts.out_dir} is in the --ref folder: overlays would become references"
        )


def calibration_files(
    opts: CalibrateOptions, found: list[InputImage], refs: list[InputImage]
) -> tuple[list[FileUse], list[FileUse]]:
    """What `winclip calibrate` reads (known-good and reference images, --ref, --pool,
    the model's files) and writes (-o, --save-pool)."""
    reads = [FileUse("the known-good image", im.path) for im in found]
    reads += [FileUse("the reference image", im.path) for im in refs]
    reads += [FileUse(f"the {option} {_kind(path)}", path) for option, path in _ref_and_pool(opts)]
    writes = [FileUse("-o", opts.output)]
    writes += [FileUse("--save-pool", opts.save_pool)] if opts.save_pool is not None else []
    return [*reads, *model_files(opts.model)], writes
