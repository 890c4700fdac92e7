"""Everything checked before the model is loaded: options, inputs, references, outputs.

``plan`` turns RunOptions into a complete Plan, or refuses them with a UsageError
(exit 2) that costs no model time. The only thing it touches on disk is the -o file:
it opens and locks it (creating it if new: a run that then fails removes it again) and,
with --resume, cuts a torn last row off it. The Plan holds that file until it is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .bank import ReferenceBank
from .checks import (
    check_bank_grid,
    check_model_options,
    check_numbers,
    read_bank_file,
    tile_grid,
    with_recorded_model,
)
from .data import InputImage, find_images
from .decision import CalibratedRule, DecisionRule, ThresholdRule
from .engines import EngineSpec
from .engines.registry import checked_session
from .errors import UsageError
from .manifest import manifest_path
from .options import (
    DEFAULT_K,
    CalibrateOptions,
    RunOptions,
    default_workers,
)
from .overlaps import refuse_overlaps
from .paths import check_out_dir, check_rows_file, check_writable_file, is_within
from .pool_source import PoolSource, check_calibration_pool, outside_pool, plan_pool
from .prompts import PromptSet
from .references import calibration_images, pick_references
from .resume import Resumed, prepare
from .rows import columns
from .rows_file import RowsFile
from .rows_lock import LockWait
from .run_files import calibration_files, refuse_clobbering
from .run_outputs import Outputs, outputs_of, run_header
from .settings import (
    RunFacts,
    adopt_bank_precision,
    apply_to_options,
    run_settings,
    unrecorded,
)
from .shards import parse_shard, shard_of
from .tiling import TileGrid

if TYPE_CHECKING:
    from .conformal import Calibration


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
    """Everything one run needs, checked: a context manager that holds the -o file and
    the engine's session."""

    opts: RunOptions
    images: list[InputImage]  # every input, in input order
    todo: list[InputImage]  # those still to score (all but --resume's finished ones)
    done: dict[str, dict[str, str]]  # --resume: path -> row already in the output file
    prompts: PromptSet
    references: References
    cols: list[str]
    rule: DecisionRule | None  # the verdict of a row; None: no label column
    rows_file: RowsFile | None  # -o FILE, locked; None for stdout
    engine: EngineSpec  # the engine and its settings: tile grid, workers, batch size
    calibration: Calibration | None = None  # --calibration: its settings apply
    resume: Resumed = field(default_factory=lambda: Resumed())
    pool: PoolSource = field(default_factory=PoolSource)  # --pool: mutual scoring's pool
    # Decided here, once, from the options: the pipeline reads these, never the options.
    outputs: Outputs = field(init=False)  # what the run writes and how
    class_name: str = field(init=False)  # the prompts' class (text embeddings)
    calibration_file: Path | None = field(init=False)  # --calibration, named in messages
    shard: str | None = field(init=False)  # --shard, named in messages
    settle: float = field(init=False)  # --settle, named in messages
    fail_on_anomaly: bool = field(init=False)
    mutual_scoring: bool = field(init=False)  # --mutual or --pool: no text is read
    report_header: dict[str, str] = field(init=False)  # what the --report says was run
    session: ExitStack = field(default_factory=ExitStack, init=False, repr=False)  # engine's

    def __post_init__(self) -> None:
        opts = self.opts
        self.outputs = outputs_of(opts)
        self.class_name, self.calibration_file = opts.class_name, opts.calibration
        self.shard, self.settle = opts.shard, opts.settle
        self.fail_on_anomaly = opts.fail_on_anomaly
        self.mutual_scoring = opts.mutual or opts.pool is not None
        self.report_header = run_header(opts, self.rule, self.calibration)

    @property
    def grid(self) -> TileGrid:
        """--tiles and --tile-overlap, parsed once."""
        return self.engine.grid

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
        """Close the engine's session; release the -o file (removed again, with its
        manifest, when this run created it and wrote nothing)."""
        self.session.close()
        if self.rows_file is not None and self.rows_file.release():
            manifest_path(self.rows_file.path).unlink(missing_ok=True)

    @property
    def needs_model(self) -> bool:
        """Something to score or a bank or pool to save (an empty shard, a finished resume and
        inputs all still settling load no model)."""
        saves = self.references.save_to is not None or self.pool.save_to is not None
        return bool(self.images) and (bool(self.todo) or saves)

    @property
    def kept(self) -> dict[str, dict[str, str]]:
        """Rows of the -o file that stay as they are (``done`` but not scored again)."""
        return self.resume.kept(self.done)


def plan_references(opts: RunOptions) -> References:
    """The K readable reference images (folder) or the bank (file)."""
    refs = References(source=opts.ref, save_to=opts.save_bank)
    if opts.ref is None:
        return refs
    if opts.ref.is_file():
        refs.bank = bank = read_bank_file(opts.ref)
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


def _find_inputs(opts: RunOptions) -> list[InputImage]:
    """The images to score. The walk never enters the output folder (a second run must
    not score the first one's overlays) or the --ref folder; an input folder inside one of
    them is refused with the reason, rather than "no images found"."""
    exclude: list[Path] = []
    roots = [p for p in opts.inputs if p.is_dir()]
    if opts.ref is not None and opts.ref.is_dir():
        if inside := [r for r in roots if is_within(r, opts.ref)]:
            raise UsageError(f"{inside[0]} is (in) the --ref folder: references are not scored")
        exclude.append(opts.ref)
    inside = [r for r in roots if is_within(r, opts.out_dir)]
    if inside and opts.maps:
        raise UsageError(
            f"{inside[0]} is (in) the output folder --out {opts.out_dir}: overlays would "
            "mix with the images; choose another --out"
        )
    if not inside:  # score makes no overlays: then a folder named as input is read
        exclude.append(opts.out_dir)
    try:
        images = find_images(opts.inputs, exclude=exclude, missing_ok=opts.listed)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not images:
        raise UsageError("no images found in " + ", ".join(str(p) for p in opts.inputs))
    return images


def engine_spec(
    opts: RunOptions, prompts: PromptSet, rule: DecisionRule | None = None
) -> EngineSpec:
    """The engine and its settings, decided once: the tile grid parsed, the worker count."""
    return EngineSpec(
        name=opts.engine,
        batch_size=opts.batch_size,
        workers=default_workers() if opts.workers is None else opts.workers,
        grid=tile_grid(opts.tiles, opts.tile_overlap),
        model=opts.model,
        prompts=prompts,
        maps_only_anomalous=opts.maps_mode == "anomalous",
        rule=rule,
        ray=opts.ray,
        mutual_set=opts.mutual_set if opts.mutual else None,
    )


def plan(opts: RunOptions, say: Callable[[str], None] | None = None) -> Plan:
    """Validate everything that can be validated without the model (exit 2 on failure).
    ``say``: where a message goes while the run waits for its -o file (--wait)."""
    check_numbers(opts)
    opts, cal = with_recorded_model(opts)  # unless the user chose one; never a download
    prompts = check_model_options(opts.model)
    if cal is not None and opts.calibration is not None:
        check_calibration_pool(cal.settings.get("pool"), opts.pool, opts.calibration)
        opts, prompts = apply_to_options(opts, cal)
    refs = plan_references(opts)
    opts = adopt_bank_precision(opts, refs.bank)
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
        check_out_dir(opts.out_dir)
    pool = plan_pool(opts.pool, opts.save_pool, tile_grid(opts.tiles, opts.tile_overlap))
    images = _find_inputs(opts)
    if opts.shard is not None:  # after the walk and sort: the same cut in every job
        images = shard_of(images, *parse_shard(opts.shard))
    refuse_clobbering(opts, images, refs.images)
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
    spec = engine_spec(opts, prompts, rule)
    if opts.output is None or opts.to_stdout:
        p = Plan(opts, images, images, {}, prompts, refs, cols, rule, None, spec, cal, pool=pool)
        return _with_engine(p)
    output = Path(opts.output)
    check_rows_file(output)
    # Held from here: resume reads what no one else writes. Its folder is made if new.
    rows_file = RowsFile(output, LockWait(opts.wait, say))
    try:
        ref_images = [im.path for im in refs.images]
        facts = RunFacts(opts, prompts, refs.bank, ref_images, cols, cal, pool.identity())
        settings = run_settings(facts)
        done, todo, resumed = prepare(opts, images, cols, rule, settings, rows_file, unrecorded())
    except BaseException:
        rows_file.release()
        raise
    args = (opts, images, todo, done, prompts, refs, cols, rule, rows_file, spec, cal, resumed)
    return _with_engine(Plan(*args, pool=pool))


def _with_engine(p: Plan) -> Plan:
    """The engine's options checked and, when the run loads the model, its session
    opened and held by the Plan: the last step of planning, so a session is never opened
    for a run that other checks refuse."""
    try:
        p.session.enter_context(checked_session(p.opts, p.engine, p.needs_model))
    except BaseException:
        p.close()
        raise
    return p


def plan_calibration(opts: CalibrateOptions) -> tuple[Plan, list[str]]:
    """`winclip calibrate`'s checks, the run's own (its settings are a run's), and its
    Plan: the known-good images to score with maps. Returns the Plan and why images were
    left out (references, duplicates)."""
    run = RunOptions(
        inputs=opts.inputs,
        class_name=opts.class_name,
        maps=True,  # the map maxima give the pixel threshold
        ref=opts.ref,
        k=opts.k,
        seed=opts.seed,
        batch_size=opts.batch_size,
        workers=opts.workers,
        output=str(opts.output),
        tiles=opts.tiles,
        tile_overlap=opts.tile_overlap,
        pool=opts.pool,
        save_pool=opts.save_pool,
        model=opts.model,
    )
    check_numbers(run)
    prompts = check_model_options(run.model)
    refs = plan_references(run)
    check_writable_file(opts.output)
    pool = plan_pool(opts.pool, opts.save_pool, tile_grid(opts.tiles, opts.tile_overlap))
    try:
        found = find_images(opts.inputs)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    refuse_overlaps(*calibration_files(opts, found, refs.images))
    images, left_out = calibration_images(found, refs.images)
    images, in_pool = outside_pool(images, pool)
    if not images:
        raise UsageError("no known-good images left to calibrate on (all references or pool?)")
    spec = engine_spec(run, prompts)
    calibrating = Plan(run, images, images, {}, prompts, refs, [], None, None, spec, pool=pool)
    return _with_engine(calibrating), left_out + in_pool
