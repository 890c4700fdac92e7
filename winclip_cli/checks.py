"""Option checks that need no model, shared by the runs, calibrate and eval: each
refuses with a UsageError (exit 2) naming the option."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from .backbone import fetch_pretrained
from .bank import ReferenceBank, load_bank
from .conformal import Calibration
from .errors import BankFileError, PromptFileError, UsageError, WeightsUnavailableError
from .hardware import resolve, resolve_device
from .options import (
    LOCAL_DIR,
    MAP_DTYPES,
    MAP_MODES,
    OVERLAY_FORMATS,
    ModelOptions,
    RunOptions,
)
from .overlaps import FileUse
from .prompts import PRESETS, PromptSet, clean_class_name, resolve_prompts
from .provenance import PROVENANCE_KEY, model_from_record
from .rows import FORMATS
from .scoring import check_temperature
from .settings import load_for_run
from .shards import parse_shard
from .tiling import TileGrid, describe_grid, grid_of_meta, same_grid


def read_bank_file(path: Path) -> ReferenceBank:
    """The bank file of --ref FILE; UsageError (exit 2) when it is not one."""
    try:
        return load_bank(path)
    except BankFileError as exc:
        raise UsageError(str(exc)) from exc


def check_class_name(class_name: str) -> None:
    try:
        clean_class_name(class_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def prompt_file(model: ModelOptions) -> Path | None:
    """The JSON prompt file the run reads, if any (a preset name is no file)."""
    if model.prompts is None or str(model.prompts) in PRESETS:
        return None
    return Path(model.prompts)


def model_files(model: ModelOptions) -> list[FileUse]:
    """What loading the model reads, for the overlap check (overlaps.refuse_overlaps):
    the --weights file, the --prompts file, a local model's folder."""
    files = [FileUse("the --weights file", model.weights)] if model.weights else []
    if (prompts := prompt_file(model)) is not None:
        files.append(FileUse("the --prompts file", prompts))
    if model.model.startswith(LOCAL_DIR):
        files.append(FileUse("the model folder", Path(model.model[len(LOCAL_DIR) :])))
    return files


def check_model_options(model: ModelOptions) -> PromptSet:
    """Model options that can be checked without loading it; returns the prompt set."""

    if model.temperature is not None:
        try:
            check_temperature(model.temperature)
        except ValueError as exc:
            raise UsageError(f"--temperature: {exc}") from exc
    if model.weights is not None and not model.weights.is_file():
        raise UsageError(f"weights file not found: {model.weights}")
    try:
        resolve(model.precision, resolve_device(model.device))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        return resolve_prompts(model.prompts)
    except PromptFileError as exc:
        raise UsageError(str(exc)) from exc


def tile_grid(tiles: str, overlap: float) -> TileGrid:
    """The grid of --tiles and --tile-overlap; UsageError (exit 2) with the parser's
    message when either is malformed."""
    try:
        return TileGrid.parse(tiles, overlap)
    except ValueError as exc:
        raise UsageError(f"--tiles {tiles} --tile-overlap {overlap}: {exc}") from exc


def check_bank_grid(meta: dict[str, object], grid: TileGrid, what: str) -> None:
    """UsageError unless a bank (or calibration) made with meta's grid fits this run's."""
    try:
        made = grid_of_meta(meta)
    except ValueError as exc:
        raise UsageError(f"{what}: damaged tile grid record: {exc}") from exc
    if not same_grid(made, grid):
        raise UsageError(
            f"{what} was made with {describe_grid(made)}, this run uses {describe_grid(grid)}: "
            "use the same --tiles and --tile-overlap, or rebuild it"
        )


def check_numbers(opts: RunOptions) -> None:
    check_class_name(opts.class_name)
    check_mutual(opts)
    tile_grid(opts.tiles, opts.tile_overlap)
    if opts.overlay_format not in OVERLAY_FORMATS:
        raise UsageError(
            f"--overlay-format {opts.overlay_format!r}: use {' or '.join(OVERLAY_FORMATS)}"
        )
    if opts.map_dtype not in MAP_DTYPES:
        raise UsageError(f"--map-dtype {opts.map_dtype!r}: use {' or '.join(MAP_DTYPES)}")
    if opts.overlay_max_side is not None and opts.overlay_max_side < 16:
        raise UsageError("--overlay-max-side must be at least 16 (pixels)")
    if opts.fmt not in FORMATS:
        raise UsageError(f"--format {opts.fmt!r}: use {' or '.join(FORMATS)}")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if opts.threshold is not None and not math.isfinite(opts.threshold):
        raise UsageError("--threshold must be a number (scores lie in 0..1)")
    if opts.fail_on_anomaly and opts.threshold is None and opts.calibration is None:
        raise UsageError("--fail-on-anomaly needs --threshold or --calibration")
    if opts.false_alarm_rate is not None and opts.calibration is None:
        raise UsageError("--false-alarm-rate needs --calibration (a file from winclip calibrate)")
    if opts.calibration is not None and opts.threshold is not None:
        raise UsageError("--threshold and --calibration are two decision rules: give one")
    if opts.save_masks and not (opts.maps and opts.calibration is not None):
        raise UsageError("--save-masks needs maps (segment, fewshot) and --calibration")
    _check_maps_mode(opts)
    if opts.require_ref and opts.ref is None and opts.calibration is None:
        raise UsageError("fewshot needs --ref (a folder of normal images, or a bank file)")
    if opts.ref is None and (opts.k is not None or opts.seed is not None):
        raise UsageError("--k and --seed choose reference images: they need --ref")
    if opts.k is not None and opts.k < 1:
        raise UsageError("--k must be at least 1")
    if not (math.isfinite(opts.settle) and opts.settle >= 0):
        raise UsageError("--settle must be 0 (off) or more seconds")
    if opts.resume and opts.to_stdout:
        raise UsageError("--resume needs -o FILE (the file to continue)")
    if opts.resume and not opts.header:
        raise UsageError("--no-header and --resume: a file to resume keeps its header")
    if not (math.isfinite(opts.wait) and opts.wait >= 0):
        raise UsageError("--wait must be 0 (exit 75 at once) or more seconds")
    if opts.rebuild_manifest and not opts.resume:
        raise UsageError("--rebuild-manifest goes with --resume (it repairs the run to resume)")
    if opts.to_stdout and sys.stdout is None:
        raise UsageError("stdout is closed: give -o FILE for the rows")
    _check_scale_out(opts)


def _check_scale_out(opts: RunOptions) -> None:
    """--shard (the engine's own options are checked where its session is opened:
    planning, through engines.registry)."""
    if opts.shard is not None:
        try:
            parse_shard(opts.shard)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


def _check_maps_mode(opts: RunOptions) -> None:
    if opts.maps_mode == "all":
        return
    if opts.maps_mode not in MAP_MODES:
        raise UsageError(f"--maps {opts.maps_mode!r}: use {' or '.join(MAP_MODES)}")
    if opts.require_ref or opts.ref is not None:
        raise UsageError(
            "--maps anomalous is zero-shot only: a few-shot score needs the windows itself "
            "(it averages in the few-shot map), so there is no cheaper first pass"
        )
    if opts.threshold is None and opts.calibration is None:
        raise UsageError("--maps anomalous needs a decision: --calibration or --threshold")


# Why set mode refuses an option (WINCLIP.md "Mutual scoring"): its scores depend on the
# set, so anything that scores part of a set, or decides on a fixed cut, is refused.
SET_MODE_REFUSES = {
    "--calibration": "set scores rank the images of one run and are not calibrated (use "
    "--pool for calibrated mutual scores)",
    "--threshold": "set scores rank the images of one run: a fixed cut means nothing",
    "--shard": "a shard is another set, whose scores can't be compared with this one's",
    "--resume": "a new or changed file changes every score of its set",
    "--ref": "set mode compares the images with each other, not with references",
    "--engine ray": "set mode needs every image's features in one place (pool mode, "
    "--pool, scales out)",
    "--tiles": "set mode compares whole images (tiles work in pool mode, --pool)",
}


def _set_mode_clashes(opts: RunOptions) -> list[str]:
    given = {
        "--calibration": opts.calibration is not None,
        "--threshold": opts.threshold is not None,
        "--shard": opts.shard is not None,
        "--resume": opts.resume,
        "--ref": opts.ref is not None or opts.require_ref,
        "--engine ray": opts.engine == "ray",
        "--tiles": opts.tiles != "1x1",
    }
    return [option for option, present in given.items() if present]


def check_mutual(opts: RunOptions) -> None:
    """--mutual (set mode) and --pool (pool mode): what each refuses, with the reason."""
    if opts.mutual and opts.pool is not None:
        raise UsageError("--mutual and --pool are two modes of mutual scoring: give one")
    if "mutual_set" in opts.given and not opts.mutual:
        raise UsageError("--mutual-set sizes the sets of --mutual: it needs --mutual")
    if opts.mutual:
        if opts.mutual_set < 2:
            raise UsageError("--mutual-set must be at least 2 (an image needs another)")
        if clashes := _set_mode_clashes(opts):
            raise UsageError(f"--mutual with {clashes[0]}: {SET_MODE_REFUSES[clashes[0]]}")
    if opts.save_pool is not None and (opts.pool is None or not opts.pool.is_dir()):
        raise UsageError("--save-pool needs --pool DIR (a folder of images to build it from)")
    if opts.pool is None:
        return
    if not opts.pool.exists():
        raise UsageError(f"--pool {opts.pool}: no such folder or pool file")
    if opts.ref is not None or opts.require_ref or opts.save_bank is not None:
        raise UsageError(
            "--pool compares the images with the pool, not with references: drop --ref"
        )
    if opts.maps_mode == "anomalous":
        raise UsageError(
            "--maps anomalous with --pool: a pool score comes with its map, there is no "
            "cheaper first pass"
        )


def cached_weights(model: str, tag: str) -> Path | None:
    """The local cache's file of an open_clip tag; None when it is not there (nothing is
    downloaded: a file's recorded model never starts a download)."""
    try:
        return fetch_pretrained(model, tag, allow_download=False)
    except WeightsUnavailableError:
        return None


def model_of_file(opts: RunOptions, record: object, what: str) -> RunOptions:
    """The run's options with the model a calibration or bank file recorded, when the
    user chose none (provenance.model_from_record; UsageError naming what it needs)."""
    model = model_from_record(opts.model, opts.given, record, what, cached_weights)
    return opts if model is opts.model else dataclasses.replace(opts, model=model)


def with_recorded_model(opts: RunOptions) -> tuple[RunOptions, Calibration | None]:
    """The --calibration file, loaded, and the options with the model it (or a --ref
    bank file) records when the user chose none (model_of_file)."""
    if opts.calibration is not None:
        cal = load_for_run(opts.calibration)
        return model_of_file(opts, cal.model_record, f"--calibration {opts.calibration}"), cal
    if opts.ref is not None and opts.ref.is_file():
        record = read_bank_file(opts.ref).meta.get(PROVENANCE_KEY)
        return model_of_file(opts, record, f"--ref {opts.ref}"), None
    return opts, None
