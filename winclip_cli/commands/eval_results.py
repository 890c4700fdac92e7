"""`winclip eval`'s results: mean and spread over seeds and categories, the table, the
JSON file and the per-image scores CSV."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write
from ..metrics import COLUMN_TITLES, METRIC_KEYS
from ..model import WinClip
from ..paper import DATASET_NAMES, compare_with_paper, format_comparison
from ..rows import ENCODING_ERRORS, RowWriter

if TYPE_CHECKING:
    from ..model import WinClip


SCORES_HEADER = ("category", "k", "seed", "path", "label", "score")


# Figures of --calibrate, and how the table titles them.
CAL_TITLES = {"far": "FAR", "tpr": "TPR", "threshold": "thresh", "n_cal": "n_cal"}


def nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and (population) standard deviation over seeds of each metric; None when undefined."""
    out: dict[str, dict[str, float | None]] = {"mean": {}, "std": {}}
    for key in keys(runs):
        values = np.array([np.nan if r[key] is None else r[key] for r in runs], dtype=np.float64)
        defined = values[~np.isnan(values)]
        out["mean"][key] = float(defined.mean()) if len(defined) else None
        out["std"][key] = float(defined.std()) if len(defined) else None
    return out


def overall(per_category: dict[str, Any], k: int, seeds: list[int]) -> dict[str, Any]:
    """Mean over categories for each seed, then mean / std of that over seeds."""
    per_seed = []
    for i, seed in enumerate(seeds):
        row: dict[str, Any] = {"seed": seed}
        first = next(iter(per_category.values()))["shots"][str(k)]["runs"]
        for key in keys(first):
            values = [c["shots"][str(k)]["runs"][i][key] for c in per_category.values()]
            defined = [v for v in values if v is not None]
            row[key] = float(np.mean(defined)) if defined else None
        per_seed.append(row)
    return mean_std(per_seed)


def keys(runs: list[dict[str, Any]]) -> list[str]:
    """The metrics of these runs: the paper's, and --calibrate's when present."""
    return list(METRIC_KEYS) + [key for key in CAL_TITLES if runs and key in runs[0]]


def json_value(value: Any) -> Any:
    return nan_to_none(value) if isinstance(value, float) else value


def model_info(wc: WinClip) -> dict[str, Any]:
    backbone = wc.backbone
    return {
        "model": getattr(backbone, "model_name", None),
        "weights": getattr(backbone, "weights_id", None),
        "input_size": list(wc.input_size),
        "temperature": wc.temperature,
        "precision": getattr(wc, "precision", None),  # the figures depend on it
    }


@contextlib.contextmanager
def scores_writer(path: str | os.PathLike[str] | None) -> Iterator[ScoresWriter | None]:
    """A row writer on the scores CSV (header written), or None without a path."""
    if path is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        if os.fspath(path) == "-":  # stdout: rows for a pipe, the table stays on stderr
            fh: IO[str] = sys.stdout
        else:
            fh = stack.enter_context(
                open(path, "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS)
            )
        yield ScoresWriter(RowWriter(fh, "csv", list(SCORES_HEADER)))  # header written


@dataclass
class ScoresWriter:
    # The scoring commands' row writer and CSV format: each row written whole as it
    # comes (cut back on a full disk), so an interrupted run leaves every finished row.
    rows: RowWriter

    def writerow(self, row: Sequence[Any]) -> None:
        self.rows.copy(dict(zip(SCORES_HEADER, (str(v) for v in row), strict=True)))


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: never a half-written file under ``path``."""
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    if os.fspath(path) == "-":  # stdout, for a pipe into jq; the table stays on stderr
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8", errors=ENCODING_ERRORS)))


def cell(mean: float | None, std: float | None, with_std: bool) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}"
    return f"{text}±{100 * std:.1f}" if with_std and std is not None else text


def cell_of(key: str, mean: float | None, std: float | None, with_std: bool) -> str:
    """Rates in %, like the metrics; the threshold and n_cal as they are."""
    if key == "threshold" and mean is not None:
        return f"{mean:.4f}"
    if key == "n_cal" and mean is not None:
        return f"{mean:.0f}"
    return cell(mean, std, with_std)


def format_table(results: dict[str, Any]) -> str:
    """The paper-style table: one block per k, rows categories + mean, metrics in %."""
    layout = results["dataset"]["layout"]
    names = list(results["categories"])
    width = max(len("category"), *(len(n) for n in names), len("mean")) + 2
    lines = []
    for k in results["shots"]:
        seeds = len(seeds_for(k, results["seeds"]))
        with_std = seeds > 1
        cell = 12 if with_std else 8
        note = f"mean±std over {seeds} seeds" if with_std else "1 run"
        lines.append(f"{DATASET_NAMES[layout]} layout, {k}-shot ({note}), metrics in %")
        titles = dict(COLUMN_TITLES)
        titles.update(
            {key: t for key, t in CAL_TITLES.items() if key in results["mean"][str(k)]["mean"]}
        )
        lines.append("category".ljust(width) + "".join(t.rjust(cell) for t in titles.values()))
        rows = [(n, results["categories"][n]["shots"][str(k)]) for n in names]
        rows.append(("mean", results["mean"][str(k)]))
        for name, entry in rows:
            cells = (cell_of(m, entry["mean"][m], entry["std"][m], with_std) for m in titles)
            lines.append(name.ljust(width) + "".join(c.rjust(cell) for c in cells))
        lines.append("")
    return "\n".join(lines) + "\n"


def seeds_for(k: int, seeds: list[int]) -> list[int]:
    # Zero-shot has no randomness: one run, recorded under the first seed.
    return seeds[:1] if k == 0 else seeds


def publish(
    results: dict[str, Any],
    compare: bool,
    table_stream: IO[str] | None,
    json_path: str | os.PathLike[str] | None,
) -> None:
    """Add the paper's figures (``compare``), print the table, write the JSON file."""
    if compare:
        results["paper"] = compare_with_paper(results)
    if table_stream is not None:
        table_stream.write(format_table(results))
        if compare:
            table_stream.write(format_comparison(results["paper"]))
        table_stream.flush()
    if json_path is not None:
        write_json(Path(json_path), results)
