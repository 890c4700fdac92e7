"""`winclip calibrate` and `--calibration FILE`: the run settings a calibration records,
the known-good images it is made from, and the checks that apply it to a run.

The formulas and the file are calibration.py's; this module wires them to the Plan and
the engine, so a calibration is scored exactly like the runs that use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import Calibration, load_calibration, save_calibration, supported_rates
from .data import InputImage, find_images
from .errors import CalibrationError, ExitCode, UsageError
from .options import DEFAULT_FALSE_ALARM_RATE, CalibrateOptions, RunOptions, default_workers
from .prompts import PromptSet, clean_class_name, resolve_prompts
from .tiling import TileGrid

if TYPE_CHECKING:
    from .bank import ReferenceBank
    from .model import WinClip
    from .progress import Reporter


def fingerprint(
    wc: WinClip, class_name: str, bank: ReferenceBank | None, grid: TileGrid
) -> dict[str, Any]:
    """The settings a calibration is valid for: everything that moves the scores."""
    ps = wc.prompts
    return {
        "model": wc.backbone.model_name,
        "weights": wc.backbone.weights_id,
        "class": clean_class_name(class_name),
        # The prompt set's parts: with the class they give the exact prompt lists.
        "prompts": {
            "normal": list(ps.normal),
            "anomalous": list(ps.anomalous),
            "templates": list(ps.templates),
        },
        "temperature": float(wc.temperature),
        "scales": list(wc.scales),
        "input_size": list(wc.input_size),
        "mode": "zero-shot" if bank is None else "few-shot",
        "k": 0 if bank is None else int(bank.num_images),
        "tiles": str(grid) if grid.is_single else f"{grid} overlap {grid.overlap:g}",
    }


# Which option sets which recorded setting, for messages that name the option.
_OPTION_OF = {
    "weights": "--weights/--pretrained",
    "class": "--class",
    "prompts": "--prompts",
    "temperature": "--temperature",
    "scales": "scales",
    "input_size": "--model",
    "mode": "--ref",
    "k": "--k",
    "tiles": "--tiles",
}


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
    return applied, prompts


def check_loaded(cal: Calibration, source: Path, current: dict[str, Any]) -> None:
    """Refuse a calibration made with another model or weights (or any other setting).

    The weights' content hash decides; the model's name is not compared when it matches
    (`local-dir:x` and `local-dir:./x/` are one model, as for banks)."""
    from .calibration import check_settings

    recorded = dict(cal.settings)
    for name, option in _OPTION_OF.items():
        if recorded.get(name) != current.get(name):
            raise _refuse(source, option, recorded.get(name), current.get(name))
    recorded.pop("model", None)
    check_settings(recorded, {k: v for k, v in current.items() if k != "model"}, str(source))


def load_for_run(path: Path) -> Calibration:
    """The --calibration file (CalibrationError, exit 2, when it can't be used)."""
    return load_calibration(path)


# ----------------------------------------------------------------- calibrate


def _identity(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(device, inode) and content hash of a file; None for what can't be read."""
    try:
        st = os.stat(path)
        node: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        return None, None
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return node, digest.hexdigest()
    except OSError:
        return node, None


def calibration_images(
    images: Iterable[InputImage], references: Iterable[InputImage]
) -> tuple[list[InputImage], list[str]]:
    """The images that calibrate: never a reference (the same file under any name, or a
    copy of its bytes), and each file once. Returns them and why others were left out."""
    seen_nodes: set[tuple[int, int]] = set()
    seen_hashes: set[str] = set()
    for ref in references:
        node, digest = _identity(ref.path)
        seen_nodes |= {node} if node else set()
        seen_hashes |= {digest} if digest else set()
    ref_nodes, ref_hashes = set(seen_nodes), set(seen_hashes)
    kept, left_out = [], []
    for image in images:
        node, digest = _identity(image.path)
        if (node and node in ref_nodes) or (digest and digest in ref_hashes):
            left_out.append(f"{image.display}: a reference image, not a calibration image")
        elif (node and node in seen_nodes) or (digest and digest in seen_hashes):
            left_out.append(f"{image.display}: a duplicate of another calibration image")
        else:
            kept.append(image)
        seen_nodes |= {node} if node else set()
        seen_hashes |= {digest} if digest else set()
    return kept, left_out


def run_calibrate(
    opts: CalibrateOptions, reporter: Reporter, model: WinClip | None = None
) -> ExitCode:
    """Score known-good images under a run's settings and write the calibration file.

    ``model``: an already loaded WinClip (benchmarks, long-lived callers)."""
    from .engines.local import LocalEngine
    from .pipeline import load_scorer
    from .planning import (
        Plan,
        check_model_options,
        check_numbers,
        check_writable_file,
        plan_references,
        prompt_file,
        refuse_overwriting,
        tile_grid,
    )

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
        model=opts.model,
    )
    check_numbers(run)
    grid = tile_grid(opts.tiles, opts.tile_overlap)
    prompts = check_model_options(run.model)
    refs = plan_references(run)
    check_writable_file(opts.output)
    try:
        found = find_images(opts.inputs)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    protected = [im.path for im in (*found, *refs.images)]
    protected += [p for p in (opts.ref, opts.model.weights, prompt_file(opts.model)) if p]
    refuse_overwriting("-o", opts.output, protected)
    images, left_out = calibration_images(found, refs.images)
    for message in left_out:
        reporter.info(f"left out {message}")
    if not images:
        raise UsageError("no known-good images left to calibrate on (all are references?)")
    checked = Plan(run, images, images, {}, prompts, refs, [], None, None)
    scorer = load_scorer(checked, reporter, model)
    workers = default_workers() if opts.workers is None else opts.workers
    engine = LocalEngine(scorer, opts.batch_size, workers, grid, reporter.warn)
    scores: list[float] = []
    maxima: list[float] = []
    names: list[str] = []
    reporter.start(len(images), "calibrating")
    try:
        for done, (image, result) in enumerate(zip(images, engine.predict(images), strict=True)):
            reporter.advance(1, done + 1, 0.0)
            if result.error is not None or result.score is None or result.map_max is None:
                reporter.warn(f"{image.display} skipped: {result.error}")
                continue
            scores.append(result.score)
            maxima.append(result.map_max)
            names.append(image.display)
    finally:
        reporter.stop()
    if not scores:
        raise UsageError("none of the known-good images could be read: nothing to calibrate")
    settings = fingerprint(scorer.model, opts.class_name, scorer.bank, grid)
    cal = Calibration(settings, np.asarray(scores), np.asarray(maxima), scorer.bank, names)
    save_calibration(cal, opts.output)
    reporter.info(f"calibration written to {opts.output}; {supported_rates(cal.n)}")
    return ExitCode.OK
