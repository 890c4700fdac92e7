"""What `winclip report ROWS...` knows of the runs that wrote the rows: the manifest
beside each rows file holds the run's settings and the report context it recorded (the
header, the threshold, the calibration's scores), so a report made later shows what
``--report`` on the run showed.

Rows files with the same settings (the shards of one job, or one job's days) get one
header; files made with different settings are still reported, with a note naming the
settings that differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WinclipError
from .manifest import RunManifest, read_manifest

# Settings in which the parts of one job differ by design.
PER_PART = ("--shard",)


def run_context(
    run_info: dict[str, str],
    threshold: float | None,
    calibration_scores: list[float] | None,
) -> dict[str, Any]:
    """The report context a run records in its manifest (plain JSON)."""
    return {
        "run_info": {str(k): str(v) for k, v in run_info.items()},
        "threshold": threshold,
        "calibration_scores": calibration_scores,
    }


@dataclass
class ReportContext:
    """The header, threshold and calibration scores of a report, and notes about them."""

    run_info: dict[str, str] | None = None
    threshold: float | None = None
    calibration_scores: list[float] | None = None
    notes: list[str] = field(default_factory=list)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _scores(value: object) -> list[float] | None:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
        return None
    return [float(v) for v in value]


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(found: list[tuple[Path, RunManifest]]) -> list[str]:
    """'--threshold (0.5 in a.csv, 0.7 in b.csv)' for each setting that differs."""
    names: list[str] = []
    for _path, manifest in found:
        names += [n for n in manifest.settings if n not in names and n not in PER_PART]
    out = []
    for name in names:
        values = [m.settings.get(name) for _p, m in found]
        if any(v != values[0] for v in values[1:]):
            pairs = zip(found, values, strict=True)
            each = ", ".join(f"{_shown(v)} in {p.name}" for (p, _m), v in pairs)
            out.append(f"{name} ({each})")
    return out


def _common(values: list[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values[1:]) else None


def context_of(rows_files: Sequence[Path]) -> ReportContext:
    """The report context of ``rows_files`` from their manifests (see the module)."""
    notes: list[str] = []
    found: list[tuple[Path, RunManifest]] = []
    for path in rows_files:
        try:
            manifest = read_manifest(Path(path))
        except WinclipError as exc:  # a damaged manifest: the rows are still reported
            notes.append(f"{path}: {exc}")
            continue
        if manifest is None or manifest.context is None:
            notes.append(
                f"{path}: no run manifest beside it (written to stdout, or by an older "
                "winclip): its run's settings are not shown"
            )
            continue
        found.append((Path(path), manifest))
    if not found:
        return ReportContext(notes=notes)
    contexts = [m.context or {} for _p, m in found]
    first = contexts[0].get("run_info")
    run_info = {str(k): str(v) for k, v in first.items()} if isinstance(first, dict) else {}
    parts = [str(m.settings.get("--shard")) for _p, m in found if m.settings.get("--shard")]
    if parts:
        run_info["shards"] = ", ".join(parts)
    differ = _differences(found)
    if differ:
        run_info["settings that differ"] = ", ".join(d.split(" (", 1)[0] for d in differ)
        notes.insert(0, "the rows files were made with different settings: " + "; ".join(differ))
    threshold = _common([_number(c.get("threshold")) for c in contexts])
    scores = _common([_scores(c.get("calibration_scores")) for c in contexts])
    return ReportContext(run_info or None, threshold, scores, notes)
