"""The one table of settings that change rows.

Each entry names the option that sets it, how a run manifest records it (compared on
--resume, refused by its option name: manifest.refuse_other_settings) and how a
calibration file records it (compared on --calibration, refused by its option name:
check_loaded). A new setting that changes rows is one entry in SETTINGS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bank import ReferenceBank
from .conformal import Calibration, check_settings, load_calibration
from .errors import CalibrationError, UsageError
from .hardware import mismatch, recorded, resolve, resolve_device
from .manifest import digest_of, file_identity
from .options import DEFAULT_FALSE_ALARM_RATE, DEFAULT_SCALES, LOCAL_DIR, RunOptions
from .pool import MutualPool, pool_fingerprint
from .prompts import PromptSet, clean_class_name, resolve_prompts
from .tiling import TileGrid

if TYPE_CHECKING:
    from .model import WinClip


@dataclass(frozen=True)
class RunFacts:
    """What a run's rows depend on, known before the model loads (planning fills it)."""

    opts: RunOptions
    prompts: PromptSet
    bank: ReferenceBank | None  # --ref FILE (or the calibration's bank)
    ref_images: list[Path]  # --ref FOLDER: the K images picked
    cols: list[str]
    calibration: Calibration | None
    pool: str | None = None  # --pool: the pool's identity (pool_source.PoolSource)


@dataclass(frozen=True)
class ModelFacts:
    """What a calibration's scores depend on, known once the model is loaded."""

    wc: WinClip
    class_name: str
    bank: ReferenceBank | None
    grid: TileGrid
    pool: MutualPool | None = None  # pool mode's pool


@dataclass(frozen=True)
class Setting:
    """One setting that changes rows.

    ``option`` names it in every refusal. ``in_manifest``: its value as a run manifest
    records it, under ``option`` (compared on --resume). ``calibration_key`` and
    ``in_calibration``: its key and value in a calibration file's settings (compared on
    --calibration). None: not recorded there."""

    option: str
    in_manifest: Callable[[RunFacts], Any] | None = None
    calibration_key: str | None = None
    in_calibration: Callable[[ModelFacts], Any] | None = None
    # What a manifest written before this setting was recorded stands for.
    unrecorded: Any = None


def run_precision(opts: RunOptions) -> str:
    """The precision the run computes in, resolved on this machine (never "auto"); Ray
    actors are given this name, so the rows are computed as the manifest says."""
    return resolve(opts.model.precision, resolve_device(opts.model.device)).name


def _command(r: RunFacts) -> str:
    o = r.opts
    return "fewshot" if o.require_ref else "segment" if o.maps else "score"


def _prompt_lists(ps: PromptSet) -> dict[str, list[str]]:
    # The prompt set's parts: with the class they give the exact prompt lists.
    return {
        "normal": list(ps.normal),
        "anomalous": list(ps.anomalous),
        "templates": list(ps.templates),
    }


def _k(r: RunFacts) -> int | None:
    return len(r.ref_images) if r.ref_images else r.bank.num_images if r.bank else None


def _calibration_digest(r: RunFacts) -> str | None:
    cal = r.calibration
    return None if cal is None else digest_of([cal.scores.tolist(), cal.settings])


def _grid_text(grid: TileGrid) -> str:
    return str(grid) if grid.is_single else f"{grid} overlap {grid.overlap:g}"


def _bank_fingerprint(bank: ReferenceBank | None, images: list[Path]) -> str | None:
    """The reference bank's identity: its tensors (a bank file) or its images' contents."""
    if bank is not None:
        digest = hashlib.sha256()
        windows = bank.windows
        for tensor in (bank.patch_tokens, *(windows[k] for k in sorted(windows))):
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]
    if images:
        return digest_of([file_identity(path)["sha256"] for path in images])
    return None


def _pool_identity(pool: MutualPool | None) -> str | None:
    return None if pool is None else pool_fingerprint(pool)


def _model_name(model: str) -> str:
    # `local-dir:x` and `local-dir:./x/` are one model.
    if model.startswith(LOCAL_DIR):
        return LOCAL_DIR + os.path.abspath(model[len(LOCAL_DIR) :])
    return model


# Manifest keys are option names (older manifests compare by them); calibration keys are
# the file's own. The order is the order in both records.
SETTINGS: tuple[Setting, ...] = (
    Setting("command", _command),
    Setting(
        "--model",
        lambda r: _model_name(r.opts.model.model),
        "model",
        lambda m: m.wc.backbone.model_name,
    ),
    Setting("--weights/--pretrained", None, "weights", lambda m: m.wc.backbone.weights_id),
    Setting(
        "--class",
        lambda r: clean_class_name(r.opts.class_name),
        "class",
        lambda m: clean_class_name(m.class_name),
    ),
    Setting(
        "--prompts",
        lambda r: digest_of(list(r.prompts.prompts(r.opts.class_name))),
        "prompts",
        lambda m: _prompt_lists(m.wc.prompts),
    ),
    Setting(
        "--temperature",
        lambda r: r.opts.model.temperature,
        "temperature",
        lambda m: float(m.wc.temperature),
    ),
    Setting("scales", lambda r: list(DEFAULT_SCALES), "scales", lambda m: list(m.wc.scales)),
    Setting("--model", None, "input_size", lambda m: list(m.wc.input_size)),
    # Before "mode": a pool calibration used without --pool is refused naming --pool.
    Setting("--pool", lambda r: r.pool, "pool", lambda m: _pool_identity(m.pool)),
    Setting("--mutual", lambda r: r.opts.mutual_set if r.opts.mutual else None),
    Setting("--ref", None, "mode", lambda m: "zero-shot" if m.bank is None else "few-shot"),
    Setting("--k", _k, "k", lambda m: 0 if m.bank is None else int(m.bank.num_images)),
    # Runs before precision was recorded computed in the CLI's default then, fp32.
    Setting(
        "--precision",
        lambda r: run_precision(r.opts),
        "precision",
        lambda m: m.wc.precision,
        unrecorded="fp32",
    ),
    Setting("--ref", lambda r: _bank_fingerprint(r.bank, r.ref_images)),
    Setting("--threshold", lambda r: r.opts.threshold),
    Setting("--calibration", _calibration_digest),
    Setting("--false-alarm-rate", lambda r: r.opts.false_alarm_rate),
    Setting("--maps", lambda r: r.opts.maps_mode),
    Setting("--shard", lambda r: r.opts.shard),
    Setting("--tiles", lambda r: r.opts.tiles, "tiles", lambda m: _grid_text(m.grid)),
    Setting("--tile-overlap", lambda r: None if r.opts.tiles == "1x1" else r.opts.tile_overlap),
    Setting("--format", lambda r: r.opts.fmt),
    Setting("columns", lambda r: r.cols),
)


def run_settings(facts: RunFacts) -> dict[str, Any]:
    """What the rows depend on, by the option that sets it: a run manifest's settings,
    compared on --resume."""
    return {s.option: s.in_manifest(facts) for s in SETTINGS if s.in_manifest is not None}


def unrecorded() -> dict[str, Any]:
    """What a manifest written before a setting was recorded stands for, by option (see
    Setting.unrecorded): a resume of an older run compares those."""
    return {s.option: s.unrecorded for s in SETTINGS if s.unrecorded is not None}


def adopt_precision(opts: RunOptions, made_at: str, what: str) -> RunOptions:
    """The run at the precision a file (a calibration, a bank) was made at: refused, by
    --precision, when the user typed another; taken from the file when not."""
    if "precision" in opts.given:
        refused = mismatch(made_at, run_precision(opts), what)
        if refused:
            raise UsageError(refused)
        return opts
    model = dataclasses.replace(
        opts.model, precision=made_at, precision_reason=f"{made_at}: {what} was made at it"
    )
    try:
        resolve(made_at, resolve_device(model.device))
    except ValueError as exc:  # e.g. made at fp16 on a GPU, used on a CPU
        raise UsageError(f"{what} was made at precision {made_at}: {exc}") from exc
    return dataclasses.replace(opts, model=model)


def adopt_bank_precision(opts: RunOptions, bank: ReferenceBank | None) -> RunOptions:
    """adopt_precision for a --ref bank file (banks from before record none: fp32)."""
    if bank is None or opts.calibration is not None:  # a calibration's bank: its own
        return opts
    return adopt_precision(opts, recorded(bank.meta), f"reference bank {opts.ref}")


def fingerprint(
    wc: WinClip,
    class_name: str,
    bank: ReferenceBank | None,
    grid: TileGrid,
    pool: MutualPool | None = None,
) -> dict[str, Any]:
    """The settings a calibration is valid for: everything that moves the scores."""
    facts = ModelFacts(wc, class_name, bank, grid, pool)
    settings = {
        s.calibration_key: s.in_calibration(facts)
        for s in SETTINGS
        if s.calibration_key is not None and s.in_calibration is not None
    }
    if pool is None:  # calibrations made without a pool record no such key
        del settings["pool"]
    return settings


def check_loaded(cal: Calibration, source: Path, current: dict[str, Any]) -> None:
    """Refuse a calibration made with another model or weights (or any other setting).

    The weights' content hash decides; the model's name is not compared when it matches
    (`local-dir:x` and `local-dir:./x/` are one model, as for banks)."""
    recorded = dict(cal.settings)
    for s in SETTINGS:
        key = s.calibration_key
        if key is None or key == "model":
            continue
        if recorded.get(key) != current.get(key):
            raise _refuse(source, s.option, recorded.get(key), current.get(key))
    recorded.pop("model", None)
    check_settings(recorded, {k: v for k, v in current.items() if k != "model"}, str(source))


def load_for_run(path: Path) -> Calibration:
    """The --calibration file (CalibrationError, exit 2, when it can't be used)."""
    return load_calibration(path)


def _refuse(source: Path, option: str, recorded: Any, current: Any) -> CalibrationError:
    return CalibrationError(
        f"{option} contradicts --calibration {source}: it was made with {recorded!r}, "
        f"this run has {current!r}"
    )


def apply_to_options(opts: RunOptions, cal: Calibration) -> tuple[RunOptions, PromptSet]:
    """The run's options with the calibration's settings filled in, and its prompt set.

    An option the user typed that says otherwise is refused (exit 2, naming it); the
    model and weights are checked once loaded (check_loaded).
    """
    source, s = opts.calibration, cal.settings
    assert source is not None
    given = opts.given
    if opts.threshold is not None:
        raise UsageError("--threshold and --calibration are two decision rules: give one")
    if "class_name" in given and clean_class_name(opts.class_name) != s.get("class"):
        raise _refuse(source, "--class", s.get("class"), clean_class_name(opts.class_name))
    for option, value in (("--ref", opts.ref), ("--k", opts.k), ("--seed", opts.seed)):
        if value is not None:
            recorded = f"{s.get('mode')}, k={s.get('k')}, its bank in the file"
            raise _refuse(source, option, recorded, str(value))
    if opts.require_ref and cal.bank is None:
        raise CalibrationError(
            f"fewshot needs a few-shot calibration; {source} was made zero-shot (use score "
            "or segment with it)"
        )
    temperature = opts.model.temperature
    if temperature is not None and temperature != s.get("temperature"):
        raise _refuse(source, "--temperature", s.get("temperature"), temperature)
    recorded_prompts = s.get("prompts")
    if opts.model.prompts is not None:
        mine = resolve_prompts(opts.model.prompts)
        as_lists = {k: list(getattr(mine, k)) for k in ("normal", "anomalous", "templates")}
        if as_lists != recorded_prompts:
            raise _refuse(source, "--prompts", "its recorded prompt set", str(opts.model.prompts))
    try:
        assert isinstance(recorded_prompts, dict)
        prompts = PromptSet(**{k: tuple(v) for k, v in recorded_prompts.items()})
        model = dataclasses.replace(opts.model, temperature=float(s["temperature"]))
        class_name = str(s["class"])
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{source}: damaged calibration file (settings)") from exc
    rate = DEFAULT_FALSE_ALARM_RATE if opts.false_alarm_rate is None else opts.false_alarm_rate
    applied = dataclasses.replace(opts, class_name=class_name, model=model, false_alarm_rate=rate)
    return adopt_precision(applied, cal.precision, f"calibration {source}"), prompts
