"""Everything checked before the model is loaded: options, inputs, references, outputs.

``plan`` turns RunOptions into a complete Plan, or refuses them with a UsageError
(exit 2) that costs no model time. The only thing it touches on disk is the -o file:
it opens and locks it (creating it if new: a run that then fails removes it again) and,
with --resume, cuts a torn last row off it. The Plan holds that file until it is closed.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .bank import ReferenceBank
from .data import InputImage, find_images
from .decision import CalibratedRule, DecisionRule, ThresholdRule
from .errors import BankFileError, PromptFileError, UsageError
from .manifest import (
    Identity,
    RunManifest,
    digest_of,
    file_identity,
    read_manifest,
    refuse_other_settings,
    settling,
    still_the_same,
)
from .options import (
    DEFAULT_K,
    DEFAULT_SCALES,
    ENGINES,
    LOCAL_DIR,
    MAP_DTYPES,
    OVERLAY_FORMATS,
    ModelOptions,
    RunOptions,
)
from .outputs import output_name
from .prompts import PRESETS, PromptSet, clean_class_name, resolve_prompts
from .references import pick_references
from .rows import FORMATS, SCORE_DECIMALS, RowsFile, columns, read_finished_rows
from .shards import parse_shard, shard_of
from .tiling import TileGrid, describe_grid, grid_of_meta, same_grid

if TYPE_CHECKING:
    from .calibration import Calibration


@dataclass
class References:
    """Where the reference bank comes from: K readable images of a --ref folder, or the
    bank read from a --ref file; neither without --ref."""

    source: Path | None = None  # the --ref option
    images: list[InputImage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why unreadable images were passed over
    bank: ReferenceBank | None = None
    save_to: Path | None = None  # --save-bank


@dataclass
class Plan:
    """Everything one run needs, checked: a context manager that holds the -o file."""

    opts: RunOptions
    images: list[InputImage]  # every input, in input order
    todo: list[InputImage]  # those still to score (all but --resume's finished ones)
    done: dict[str, dict[str, str]]  # --resume: path -> row already in the output file
    prompts: PromptSet
    references: References
    cols: list[str]
    rule: DecisionRule | None  # the verdict of a row; None: no label column
    rows_file: RowsFile | None  # -o FILE, locked; None for stdout
    calibration: Calibration | None = None  # --calibration: its settings apply
    resume: Resumed = field(default_factory=lambda: Resumed())

    def __enter__(self) -> Plan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the -o file (removed again, with its manifest, when this run created it
        and wrote nothing)."""
        if self.rows_file is not None and self.rows_file.release():
            from .manifest import manifest_path

            manifest_path(self.rows_file.path).unlink(missing_ok=True)

    @property
    def kept(self) -> dict[str, dict[str, str]]:
        """Rows of the -o file that stay as they are (``done`` but not scored again)."""
        return {k: r for k, r in self.done.items() if k not in self.resume.again}


@dataclass
class Resumed:
    """What --resume found beyond the rows: the manifest to write, the rows to score
    again (error rows, changed files), the files left for the next run."""

    manifest: RunManifest | None = None  # written once the weights are known; None: no sidecar
    recorded_weights: str | None = None  # the file's weights fingerprint, compared after loading
    legacy: bool = False  # a rows file without a manifest (an older version): as before
    again: dict[str, str] = field(default_factory=dict)  # key -> why ("error row", "changed")
    fresh: dict[str, Identity] = field(default_factory=dict)  # their identity now (after commit)
    pending: list[InputImage] = field(default_factory=list)  # modified within --settle
    rewrite: bool = False  # rows replaced or out of order: write a new file, then rename
    orphans: dict[str | None, list[dict[str, str]]] = field(default_factory=dict)


def check_writable_file(path: Path) -> None:
    """UsageError unless ``path`` can be written (and replaced, when a regular file)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder, not a file")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if path.exists() and not path.is_file():  # a FIFO or device (/dev/stdout): written in place
        writable = os.access(path, os.W_OK)
    else:
        writable = os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    if not writable:
        raise UsageError(f"cannot write {path}: permission denied")


def _check_out_dir(out_dir: Path) -> None:
    """The folder exists and is writable, or can be created: checked, not created, so a
    run that stops early leaves no empty folder behind."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create output folder {out_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"cannot write to output folder {out_dir}: permission denied")


def _read_bank_file(path: Path) -> ReferenceBank:
    from .bank import load_bank

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


def check_model_options(model: ModelOptions) -> PromptSet:
    """Model options that can be checked without loading it; returns the prompt set."""
    from .backbone import resolve_device, resolve_precision
    from .scoring import check_temperature

    if model.temperature is not None:
        try:
            check_temperature(model.temperature)
        except ValueError as exc:
            raise UsageError(f"--temperature: {exc}") from exc
    if model.weights is not None and not model.weights.is_file():
        raise UsageError(f"weights file not found: {model.weights}")
    try:
        resolve_precision(model.precision, resolve_device(model.device))
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
    if opts.to_stdout and sys.stdout is None:
        raise UsageError("stdout is closed: give -o FILE for the rows")
    _check_scale_out(opts)


def _check_scale_out(opts: RunOptions) -> None:
    """--shard and the engine options (Ray itself is looked for here: exit 2 if absent)."""
    if opts.shard is not None:
        try:
            parse_shard(opts.shard)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if opts.engine not in ENGINES:
        raise UsageError(f"--engine {opts.engine!r}: use {' or '.join(ENGINES)}")
    if opts.engine == "ray" and opts.maps_mode == "anomalous":
        raise UsageError("--maps anomalous runs two local passes: not with --engine ray")
    if opts.tiles != "1x1" and opts.maps_mode == "anomalous":
        raise UsageError(f"--tiles {opts.tiles} is not yet supported with --maps anomalous")
    ray = opts.ray
    if opts.engine != "ray":
        if ray.given:
            raise UsageError(f"{ray.given[0]} needs --engine ray")
        return
    if ray.workers is not None and ray.workers < 1:
        raise UsageError("--ray-workers must be at least 1")
    gpus = ray.gpus_per_worker
    if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError("--ray-gpus-per-worker must be 0 or more")
    if ray.address is not None and not ray.address.strip():
        raise UsageError("--ray-address is empty (an unset shell variable?)")
    from .engines.ray import require_ray

    require_ray()


def _check_maps_mode(opts: RunOptions) -> None:
    if opts.maps_mode == "all":
        return
    if opts.maps_mode != "anomalous":
        raise UsageError(f"--maps {opts.maps_mode!r}: use all or anomalous")
    if opts.require_ref or opts.ref is not None:
        raise UsageError(
            "--maps anomalous is zero-shot only: a few-shot score needs the windows itself "
            "(it averages in the few-shot map), so there is no cheaper first pass"
        )
    if opts.threshold is None and opts.calibration is None:
        raise UsageError("--maps anomalous needs a decision: --calibration or --threshold")


def plan_references(opts: RunOptions) -> References:
    """The K readable reference images (folder) or the bank (file)."""
    refs = References(source=opts.ref, save_to=opts.save_bank)
    if opts.ref is None:
        return refs
    if opts.ref.is_file():
        refs.bank = bank = _read_bank_file(opts.ref)
        if opts.seed is not None:
            raise UsageError(f"--seed picks images from a folder; --ref {opts.ref} is a bank")
        check_bank_grid(bank.meta, tile_grid(opts.tiles, opts.tile_overlap), f"--ref {opts.ref}")
        # A tiled bank holds K*R*C images' worth; "references" is K.
        k_of_bank = int(bank.meta.get("references", bank.num_images))
        if opts.k is not None and opts.k != k_of_bank:
            raise UsageError(
                f"--ref {opts.ref} holds {k_of_bank} reference image(s), not --k {opts.k}"
            )
        return refs
    if not opts.ref.is_dir():
        raise UsageError(f"--ref {opts.ref}: no such folder or bank file")
    k = DEFAULT_K if opts.k is None else opts.k
    candidates = find_images([opts.ref])
    if len(candidates) < k:
        raise UsageError(f"--ref {opts.ref} has {len(candidates)} image(s), --k {k} needs {k}")
    refs.images, refs.skipped = pick_references(
        candidates, k, opts.seed, path_of=lambda im: im.path, name_of=lambda im: im.display
    )
    if len(refs.images) < k:
        raise UsageError(
            f"--ref {opts.ref} has only {len(refs.images)} readable image(s), --k {k} needs {k}"
        )
    return refs


def _is_within(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _find_inputs(opts: RunOptions) -> list[InputImage]:
    """The images to score. The walk never enters the output folder (a second run must
    not score the first one's overlays) or the --ref folder; an input folder inside one of
    them is refused with the reason, rather than "no images found"."""
    exclude: list[Path] = []
    roots = [p for p in opts.inputs if p.is_dir()]
    if opts.ref is not None and opts.ref.is_dir():
        if inside := [r for r in roots if _is_within(r, opts.ref)]:
            raise UsageError(f"{inside[0]} is (in) the --ref folder: references are not scored")
        exclude.append(opts.ref)
    inside = [r for r in roots if _is_within(r, opts.out_dir)]
    if inside and opts.maps:
        raise UsageError(
            f"{inside[0]} is (in) the output folder --out {opts.out_dir}: overlays would "
            "mix with the images; choose another --out"
        )
    if not inside:  # score makes no overlays: then a folder named as input is read
        exclude.append(opts.out_dir)
    try:
        images = find_images(opts.inputs, exclude=exclude)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not images:
        raise UsageError("no images found in " + ", ".join(str(p) for p in opts.inputs))
    return images


def refuse_overwriting(
    option: str, target: Path | None, files: list[Path], folders: Sequence[Path] = ()
) -> None:
    """UsageError when writing ``target`` would destroy one of the run's inputs: one of
    ``files`` (the same file under any name) or an existing file in one of ``folders``."""
    if target is None or not target.exists():
        return
    st = os.stat(target)
    same = next((f for f in files if _same_file(f, st)), None)
    if same is None:
        same = next((d for d in folders if _is_within(target, d)), None)
    if same is not None:
        raise UsageError(f"{option} {target} would overwrite an input of this run ({same})")


def _same_file(path: Path, target: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.stat(path), target)
    except OSError:
        return False


def _check_not_clobbering(
    opts: RunOptions, images: list[InputImage], refs: list[InputImage]
) -> None:
    """Nothing the run writes may be something it reads (an image, a reference, the bank,
    the weights, the prompt file, the model's folder) or another of its outputs."""
    output = None if opts.output is None or opts.to_stdout else Path(opts.output)
    targets: list[tuple[str, Path | None]] = [
        ("-o", output),
        ("--save-bank", opts.save_bank),
        ("--report", opts.report),
    ]
    named = [(option, os.path.abspath(t)) for option, t in targets if t is not None]
    for i, (option, name) in enumerate(named):
        if same := next((o for o, n in named[:i] if n == name), None):
            raise UsageError(f"{same} and {option} name the same file")
    m = opts.model
    files = [x.path for x in (*images, *refs)]
    files += [p for p in (opts.ref, m.weights, prompt_file(m)) if p is not None]
    folders = [Path(m.model[len(LOCAL_DIR) :])] if m.model.startswith(LOCAL_DIR) else []
    for option, target in targets:
        refuse_overwriting(option, target, files, folders)
    if not opts.maps:
        return
    if opts.ref is not None and opts.ref.is_dir() and _is_within(opts.out_dir, opts.ref):
        raise UsageError(
            f"--out {opts.out_dir} is in the --ref folder: overlays would become references"
        )
    overlay = "." + opts.overlay_format
    suffixes = [overlay, ".npy"] if opts.save_maps else [overlay]
    suffixes += [".mask.png"] if opts.save_masks else []
    written = {
        os.path.abspath(output_name(opts.out_dir, image.relative, suffix)): image
        for image in images
        for suffix in suffixes
    }
    for option, target in targets:
        if target is not None and (image := written.get(os.path.abspath(target))):
            raise UsageError(f"{option} {target} is the name of {image.display}'s overlay or map")
    inputs = {os.path.abspath(path) for path in files}
    if clash := next((path for path in written if path in inputs), None):
        raise UsageError(f"--out {opts.out_dir}: an overlay would overwrite the input {clash}")


def _bank_fingerprint(refs: References) -> str | None:
    """The reference bank's identity: its tensors (a bank file) or its images' contents."""
    if refs.bank is not None:
        import hashlib

        digest = hashlib.sha256()
        windows = refs.bank.windows
        for tensor in (refs.bank.patch_tokens, *(windows[k] for k in sorted(windows))):
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]
    if refs.images:
        return digest_of([file_identity(im.path)["sha256"] for im in refs.images])
    return None


def _model_name(model: str) -> str:
    # `local-dir:x` and `local-dir:./x/` are one model.
    if model.startswith(LOCAL_DIR):
        return LOCAL_DIR + os.path.abspath(model[len(LOCAL_DIR) :])
    return model


def run_settings(
    opts: RunOptions,
    prompts: PromptSet,
    refs: References,
    cols: list[str],
    cal: Calibration | None = None,
) -> dict[str, Any]:
    """What the rows depend on, by the option that sets it: compared on --resume.
    A new option that changes rows is one more line here."""
    normal, anomalous = prompts.prompts(opts.class_name)
    return {
        "command": "fewshot" if opts.require_ref else "segment" if opts.maps else "score",
        "--model": _model_name(opts.model.model),
        "--class": clean_class_name(opts.class_name),
        "--prompts": digest_of([normal, anomalous]),
        "--temperature": opts.model.temperature,
        "scales": list(DEFAULT_SCALES),
        "--k": len(refs.images) if refs.images else refs.bank.num_images if refs.bank else None,
        "--ref": _bank_fingerprint(refs),
        "--threshold": opts.threshold,
        "--calibration": None if cal is None else digest_of([cal.scores.tolist(), cal.settings]),
        "--false-alarm-rate": opts.false_alarm_rate,
        "--maps": opts.maps_mode,
        "--shard": opts.shard,
        "--tiles": opts.tiles,
        "--tile-overlap": None if opts.tiles == "1x1" else opts.tile_overlap,
        "--format": opts.fmt,
        "columns": cols,
    }


def _read_resume(
    opts: RunOptions, cols: list[str], rule: DecisionRule | None, settings: dict[str, Any]
) -> tuple[dict[str, dict[str, str]], RunManifest | None, bool]:
    """Rows already in -o FILE (--resume), by absolute path, and the file's manifest;
    refuses other settings than the file's (the file would contradict itself).
    The bool: the file has rows but no manifest (an older version)."""
    assert opts.output is not None
    out = Path(opts.output)
    if not (opts.resume and out.is_file()):
        return {}, None, False
    recorded = read_manifest(out)
    if recorded is not None:
        refuse_other_settings(out, recorded.settings, settings)
    try:
        rows = read_finished_rows(out, opts.fmt, cols)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot resume: {exc}") from exc
    if rule is not None:
        for row in rows:
            score = float(row["score"]) if row.get("score") not in (None, "") else None
            if "p_value" in row and _p_text(row["p_value"]) != _p_text(rule.p_value(score)):
                raise UsageError(
                    f"cannot resume: {out} was written with another calibration or "
                    f"--false-alarm-rate ({row['path']} has p_value {row['p_value']!r}); "
                    "resume with the first run's --calibration and --false-alarm-rate"
                )
            if row["label"] != rule.label(score):
                raise UsageError(
                    f"cannot resume: {out} was labelled with another decision rule "
                    f"({row['path']} is {row['label']!r} at {row['score']}); "
                    "resume with the first run's --threshold, or --calibration and "
                    "--false-alarm-rate"
                )
    done = {resume_key(row["path"]): row for row in rows}
    return done, recorded, bool(rows) and recorded is None


def _sort_out(
    opts: RunOptions,
    images: list[InputImage],
    done: dict[str, dict[str, str]],
    recorded: RunManifest | None,
    resumed: Resumed,
) -> list[InputImage]:
    """Decide per input: keep its row, score it (again), or leave it for the next run;
    fills ``resumed`` and the manifest's identities; returns what to score."""
    manifest = resumed.manifest
    known = recorded.inputs if recorded is not None else {}
    todo: list[InputImage] = []
    for image in images:
        key = resume_key(image.display)
        if opts.resume and settling(image.path, opts.settle):
            resumed.pending.append(image)  # still being written, perhaps: next run
            if manifest is not None and key in known:
                manifest.inputs[key] = known[key]
            continue
        if key in done and not resumed.legacy:
            same, now = still_the_same(known.get(key), image.path)
            error = done[key].get("status") == "error" and opts.retry_errors
            if same and not error:
                if manifest is not None and now is not None:
                    manifest.inputs[key] = now
                continue
            resumed.again[key] = "error row" if error and same else "changed"
            if manifest is not None and key in known:  # until the new row is in place
                manifest.inputs[key] = known[key]
        elif key in done:
            continue  # an older version's row: kept, as before manifests
        todo.append(image)
        try:
            identity = file_identity(image.path)
        except OSError:
            continue  # unreadable: its error row is scored again next time anyway
        if key in resumed.again:
            resumed.fresh[key] = identity
        elif manifest is not None:
            manifest.inputs[key] = identity
    return todo


def _layout(
    images: list[InputImage],
    todo: list[InputImage],
    done: dict[str, dict[str, str]],
    resumed: Resumed,
) -> None:
    """Whether the file must be written anew (a row replaced, or a new input before a
    kept row: one row per input, in input order), and where rows of no input go."""
    position = {resume_key(im.display): i for i, im in enumerate(images)}
    kept = [position[k] for k in done if k in position and k not in resumed.again]
    first_new = min((position[resume_key(im.display)] for im in todo), default=len(images))
    resumed.rewrite = bool(resumed.again) or (
        not resumed.legacy and bool(kept) and first_new < max(kept)
    )
    previous: str | None = None
    for key, row in done.items():  # rows of files no longer given: kept, where they were
        if key in position:
            previous = key
        else:
            resumed.orphans.setdefault(previous, []).append(row)


def _p_text(value: object) -> str:
    """A p-value as the rows print it, to compare a resumed file's with this run's."""
    if value in (None, ""):
        return ""
    return f"{float(str(value)):.{SCORE_DECIMALS}f}"


def resume_key(path: str) -> str:
    """Rows match inputs by absolute path, so `./a.png`, `a.png` and `/abs/a.png` are one;
    symbolic links are not resolved: two names of one file are two inputs, two rows."""
    return os.path.abspath(path)


def plan(opts: RunOptions) -> Plan:
    """Validate everything that can be validated without the model (exit 2 on failure)."""
    check_numbers(opts)
    prompts = check_model_options(opts.model)
    cal = None
    if opts.calibration is not None:
        from .calibrate import apply_to_options, load_for_run

        cal = load_for_run(opts.calibration)
        opts, prompts = apply_to_options(opts, cal)
    refs = plan_references(opts)
    if cal is not None:
        refs.source, refs.bank = opts.calibration, cal.bank
    if opts.save_bank is not None:
        if opts.ref is None:
            raise UsageError("--save-bank needs --ref (the folder of normal images)")
        if refs.bank is not None:
            raise UsageError("--save-bank needs --ref to be a folder of images, not a bank")
        check_writable_file(opts.save_bank)
    if opts.report is not None:
        check_writable_file(opts.report)
    if opts.maps:
        _check_out_dir(opts.out_dir)
    images = _find_inputs(opts)
    if opts.shard is not None:  # after the walk and sort: the same cut in every job
        images = shard_of(images, *parse_shard(opts.shard))
    _check_not_clobbering(opts, images, refs.images)
    rule: DecisionRule | None = None
    if cal is not None:
        assert opts.false_alarm_rate is not None  # apply_to_options sets it
        rule = CalibratedRule.from_calibration(cal, opts.false_alarm_rate)
    elif opts.threshold is not None:
        rule = ThresholdRule(opts.threshold)
    cols = columns(
        opts.maps,
        opts.maps and opts.save_maps,
        labelled=rule is not None,
        calibrated=cal is not None,
        saved_masks=opts.save_masks,
    )
    if opts.output is None or opts.to_stdout:
        return Plan(opts, images, images, {}, prompts, refs, cols, rule, None, cal)
    output = Path(opts.output)
    check_writable_file(output)
    rows_file = RowsFile(output)  # held from here: resume reads what no one else writes
    try:
        settings = run_settings(opts, prompts, refs, cols, cal)
        done, recorded, legacy = _read_resume(opts, cols, rule, settings)
        rows_file.follow()  # a repair may have replaced the file
        if done and images and not any(resume_key(im.display) in done for im in images):
            raise UsageError(
                f"cannot resume: none of the {len(done)} row(s) in {opts.output} is an input "
                "of this run (other inputs, or relative paths from another folder?)"
            )
        resumed = Resumed(legacy=legacy)
        if rows_file.regular:
            resumed.manifest = RunManifest(settings)
            resumed.recorded_weights = recorded.weights if recorded is not None else None
        todo = _sort_out(opts, images, done, recorded, resumed)
        _layout(images, todo, done, resumed)
    except BaseException:
        rows_file.release()
        raise
    return Plan(opts, images, todo, done, prompts, refs, cols, rule, rows_file, cal, resumed)
