"""The engines by --engine name: each one's option checks, its session and its build.

Adding an engine is one module with ``check``, ``session`` and ``build`` plus one entry
here (and its CLI options); `--maps anomalous` wraps whichever engine is chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from ..errors import UsageError
from ..options import RunOptions
from . import Engine, EngineSpec, local, mutual_set, ray
from .anomalous import AnomalousMapsEngine
from .scorer import Scorer


@dataclass(frozen=True)
class EngineEntry:
    """One engine: ``check`` refuses its options before the model loads (UsageError),
    ``session`` is what it needs around the run (a cluster connection), ``build`` makes
    it from the Plan's EngineSpec and the loaded Scorer."""

    check: Callable[[RunOptions], None]
    session: Callable[[EngineSpec], AbstractContextManager[None]]
    build: Callable[[EngineSpec, Scorer, Callable[[str], None]], Engine]


ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry(local.check, local.session, local.build),
    "ray": EngineEntry(ray.check, ray.session, ray.build),
}


def checked_session(
    opts: RunOptions, spec: EngineSpec, connect: bool
) -> AbstractContextManager[None]:
    """UsageError unless --engine names an engine and its options fit it (at once, when
    called); then what the engine needs around the run, to be entered before the model
    loads (for Ray, the connection: an unreachable cluster fails fast), or nothing
    unless ``connect`` (a run that loads no model)."""
    entry = ENGINES.get(opts.engine)
    if entry is None:
        raise UsageError(f"--engine {opts.engine!r}: use {' or '.join(ENGINES)}")
    entry.check(opts)
    return entry.session(spec) if connect else nullcontext()


def engine_session(spec: EngineSpec) -> AbstractContextManager[None]:
    """The session of an engine that was chosen without a Plan (review apply's local
    engine); a run's session is opened by planning (checked_session)."""
    return ENGINES[spec.name].session(spec)


def build_engine(spec: EngineSpec, scorer: Scorer, warn: Callable[[str], None]) -> Engine:
    """The engine of ``spec`` (inside its session, which the Plan holds); with --maps
    anomalous, that engine twice: without maps for every image, with maps for the
    anomalous ones."""
    build = ENGINES[spec.name].build
    if spec.mutual_set is not None:  # set mode: its own engine (planning refused ray)
        build = mutual_set.build
    if not spec.maps_only_anomalous:
        return build(spec, scorer, warn)
    if scorer.bank is not None or spec.rule is None:
        raise ValueError("maps for anomalous images only is zero-shot, with a decision rule")
    plain = build(spec, dataclasses.replace(scorer, maps=False), warn)
    mapped = build(spec, dataclasses.replace(scorer, maps=True), warn)
    return AnomalousMapsEngine(plain, mapped, spec.rule)
