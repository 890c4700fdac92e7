"""Options of the scoring commands (score, segment, fewshot): their inputs, references,
outputs, decision and scale-out, declared like cli_options.py's shared ones."""

# No `from __future__ import annotations`: Typer reads the annotations at run time.

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_options import DECISION_PANEL, OUTPUT_PANEL, REF_PANEL, SCALE_PANEL, output_arg, path_arg
from .options import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_RAY_WORKERS,
)
from .rows import FORMATS

PathsOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Argument(
        help="Image files and folders (walked recursively); - reads a list of paths on "
        "stdin. Default: the list piped to stdin, else the current folder.",
        show_default=False,
        parser=path_arg,
    ),
]


RefOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Folder of known-good images, or a saved bank file.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]


KOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--k",
        help="Reference images to take from a --ref folder (default: 4).",
        rich_help_panel=REF_PANEL,
    ),
]


SeedOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help="Pick the K references at random with this seed (default: the first K).",
        rich_help_panel=REF_PANEL,
    ),
]


SaveBankOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Save the reference bank to FILE, for a later --ref FILE.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]


OutOpt = Annotated[
    Path,
    typer.Option(
        help="Folder for overlays (and maps).", rich_help_panel=OUTPUT_PANEL, parser=path_arg
    ),
]


SaveMapsOpt = Annotated[
    bool,
    typer.Option(
        "--save-maps",
        help="Also write the raw map per image (.npy, image size; see --map-dtype).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


MapDtypeOpt = Annotated[
    str,
    typer.Option(
        "--map-dtype",
        help="float32 or float16 (half the disk) for --save-maps.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


OverlayFormatOpt = Annotated[
    str,
    typer.Option(
        "--overlay-format",
        help="png or jpg (quality 90, several times smaller on photos).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


OverlayMaxSideOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--overlay-max-side",
        help="Downscale overlays so their longer side is at most N pixels.",
        rich_help_panel=OUTPUT_PANEL,
        show_default=False,
    ),
]


OutputOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--output",
        "-o",
        help="Write rows to FILE ('-' = stdout).",
        rich_help_panel=OUTPUT_PANEL,
        parser=output_arg,
    ),
]


FmtOpt = Annotated[
    str,
    typer.Option("--format", help=f"{' or '.join(FORMATS)}.", rich_help_panel=OUTPUT_PANEL),
]


ThresholdOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="Label rows 'anomalous' at or above this score.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


FailOnAnomalyOpt = Annotated[
    bool,
    typer.Option(
        "--fail-on-anomaly",
        help="Exit 1 when any image is at or above --threshold.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


ReportOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Also write an HTML report of the run to FILE (when it ends).",
        rich_help_panel=OUTPUT_PANEL,
        parser=path_arg,
    ),
]


ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue a run (cron): keep the rows in -o FILE, score the rest and the "
        "files changed since their row; other settings than the file's are refused.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


CalibrationOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Calibration file from `winclip calibrate`: its settings and bank apply, "
        "labels and p_value come from it.",
        rich_help_panel=DECISION_PANEL,
        parser=path_arg,
    ),
]


FalseAlarmRateOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="With --calibration: the share of good parts that may be called "
        f"anomalous (default {DEFAULT_FALSE_ALARM_RATE}).",
        rich_help_panel=DECISION_PANEL,
        show_default=False,
    ),
]


SaveMasksOpt = Annotated[
    bool,
    typer.Option(
        "--save-masks",
        help="With --calibration: write the anomalous region as a binary PNG "
        "(.mask.png, image size).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


MapsModeOpt = Annotated[
    str,
    typer.Option(
        "--maps",
        help="all, or anomalous: maps only for images decided anomalous (zero-shot, "
        "with --calibration or --threshold).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


# One flag, not --retry-errors/--no-retry-errors: the pair's second name widened the
# Output panel's name column and squeezed every help text beside it.
NoRetryErrorsOpt = Annotated[
    bool,
    typer.Option(
        "--no-retry-errors",
        help="With --resume, keep error rows as they are (by default they are scored "
        "again, their new row replacing them).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


NullOpt = Annotated[
    bool,
    typer.Option(
        "--null",
        "-0",
        help="The list on stdin is NUL-separated (find -print0), not one path a line.",
        show_default=False,
    ),
]


NoHeaderOpt = Annotated[
    bool,
    typer.Option(
        "--no-header",
        help="Leave the CSV header out (batches appended to one file, e.g. from xargs).",
        rich_help_panel=OUTPUT_PANEL,
        show_default=False,
    ),
]


WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        help="When another run holds the -o file, wait up to SECONDS for it (default: "
        "exit 75 at once, try again later).",
        rich_help_panel=OUTPUT_PANEL,
        metavar="SECONDS",
        show_default=False,
    ),
]


RebuildManifestOpt = Annotated[
    bool,
    typer.Option(
        "--rebuild-manifest",
        help="With --resume, when the run manifest is damaged: hash again the inputs its "
        "rows name and record this command line's settings (they are taken on trust).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


SettleOpt = Annotated[
    float,
    typer.Option(
        help="With --resume, leave files modified within SECONDS for the next run "
        "(exit 75); 0: off.",
        rich_help_panel=OUTPUT_PANEL,
        metavar="SECONDS",
    ),
]


ShardOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Score only part I of N of the sorted inputs (job arrays), e.g. 2/8.",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]


EngineOpt = Annotated[
    str,
    typer.Option(help="local (this process) or ray (a Ray cluster).", rich_help_panel=SCALE_PANEL),
]


RayAddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]


RayWorkersOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help=f"Ray actors, one model each (default: {DEFAULT_RAY_WORKERS}).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]


RayGpusPerWorkerOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="GPUs per Ray actor (default: 0).",
        rich_help_panel=SCALE_PANEL,
        show_default=False,
    ),
]


SCORING_HELP = {
    "score": "Anomaly score per image (zero-shot; WinCLIP+ with --ref).\n\n"
    "Zero-shot: one forward pass per image, no windows (the fastest command). With --ref "
    "it runs the windows as segment does, at segment's speed (about 12x slower).",
    "segment": "Anomaly map per image: a heatmap overlay PNG in --out, plus the score rows.\n\n"
    "Cost: the windowed passes (about 12x score's single pass). Zero-shot by default; "
    "--ref DIR --k N for WinCLIP+ (few-shot).",
    "fewshot": "WinCLIP+ scores and overlays from K known-good reference images (--ref).\n\n"
    "Cost: as segment, plus building the bank from K images once (or reading a bank). "
    "--ref is a folder of normal images or a bank saved earlier with --save-bank.",
}
