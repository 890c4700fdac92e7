"""The engines by --engine name: each one's option checks, its session and its build.

Adding an engine is one module with ``check``, ``session`` and ``build`` plus one entry
here (and its CLI options); `--maps anomalous` wraps whichever engine is chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


def check_engine(opts: RunOptions) -> None:
    """UsageError unless --engine names an engine and its options fit it."""
    entry = ENGINES.get(opts.engine)
    if entry is None:
        raise UsageError(f"--engine {opts.engine!r}: use {' or '.join(ENGINES)}")
    entry.check(opts)


@contextmanager
def engine_session(spec: EngineSpec) -> Iterator[None]:
    """What the engine needs around the run (for Ray, the connection to the cluster)."""
    with ENGINES[spec.name].session(spec):
        yield


def build_engine(spec: EngineSpec, scorer: Scorer, warn: Callable[[str], None]) -> Engine:
    """The engine of ``spec`` (inside engine_session); with --maps anomalous, that engine
    twice: without maps for every image, with maps for the anomalous ones."""
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
