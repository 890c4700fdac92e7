"""Options that only one command takes (calibrate, eval, report, download), declared
like cli_options.py's shared ones."""

# No `from __future__ import annotations`: Typer reads the annotations at run time.

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .cli_options import REF_PANEL, model_options, path_arg
from .options import CalibrateOptions, EvalOptions

CalPathsOpt = Annotated[
    list[Path],
    typer.Argument(
        help="Known-good image files and folders (walked recursively).", parser=path_arg
    ),
]


CalOutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="The calibration file to write (.cal).", parser=path_arg),
]


CalRefOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Few-shot: a folder of known-good images (K become the bank, the rest "
        "calibrate), or a saved bank file.",
        rich_help_panel=REF_PANEL,
        parser=path_arg,
    ),
]


CalKOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--k",
        help="Reference images from a --ref folder (default: 4).",
        rich_help_panel=REF_PANEL,
    ),
]


CalSeedOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="Pick the K references at random with this seed.", rich_help_panel=REF_PANEL),
]


RootOpt = Annotated[
    Path, typer.Argument(help="Dataset folder (MVTec AD or VisA layout).", parser=path_arg)
]


LayoutOpt = Annotated[str, typer.Option(help="auto, mvtec or visa.")]


CategoryOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(help="Category to evaluate (repeat for several). Default: all."),
]


EvalKOpt = Annotated[
    Optional[list[int]],  # noqa: UP045
    typer.Option("--k", help="Shots (repeat: --k 0 --k 1 --k 4). Default: 0."),
]


SeedsOpt = Annotated[int, typer.Option(help="Reference draws per k > 0 (mean and std).")]


EvalClassOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--class", "-c", help="Prompt class for all categories (default: each name)."),
]


JsonPathOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--json", help="Write every figure to this JSON file ('-' = stdout).", parser=path_arg
    ),
]


ScoresOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Per-image rows (category, k, seed, path, label, score) to FILE ('-' = stdout).",
        parser=path_arg,
    ),
]


CompareOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="'paper': print the published WinCLIP figures beside yours."),
]


CalibrateOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="Calibrate on train/good (minus the references) at this false-alarm rate; "
        "report the realised rate on test/good (far) and the detection rate (tpr).",
        show_default=False,
    ),
]


RowsOpt = Annotated[
    list[Path],
    typer.Argument(
        help="Rows files (CSV or JSON lines; several shards in order).", parser=path_arg
    ),
]


ReportOutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="The HTML file to write.", parser=path_arg)
]


GalleryOpt = Annotated[
    int, typer.Option(help="Thumbnails in the gallery: the highest scores, then errors.")
]


TitleOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Title of the report (default: from the rows files' names)."),
]


DownloadModelOpt = Annotated[str, typer.Option(help="open_clip model name.")]


DownloadPretrainedOpt = Annotated[str, typer.Option(help="open_clip weights tag.")]


# ----- review apply / review stats

VerdictsOpt = Annotated[
    list[Path],
    typer.Argument(
        help="verdicts.csv files exported from reports (path,verdict,...).", parser=path_arg
    ),
]


ReviewCalibrationOpt = Annotated[
    Path,
    typer.Option(help="The calibration the runs used (from `winclip calibrate`).", parser=path_arg),
]


ReviewStatsCalibrationOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--calibration",
        help="The runs' calibration: decides rows without a label, and names n.",
        parser=path_arg,
    ),
]


ReviewOutputOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="The new calibration file to write (.cal).", parser=path_arg
    ),
]


IntoOpt = Annotated[
    str,
    typer.Option(
        help="bank: false alarms join the reference bank and every calibration image is "
        "scored again; calibration: they join the known-good set (bank unchanged)."
    ),
]


ReviewRootOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        help="Folder the rows' relative paths start from (default: the current folder).",
        parser=path_arg,
    ),
]


ReviewRateOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        help="The runs' false-alarm rate (review apply --into calibration: default 0.01; "
        "review stats: default the rate the runs' manifests record).",
        show_default=False,
    ),
]


ReviewRowsOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--rows",
        help="Rows files of the runs, every image reviewed or not (repeat, or list them "
        "after one --rows: rows files among the arguments are told apart by their columns).",
        parser=path_arg,
    ),
]


StatsFormatOpt = Annotated[str, typer.Option("--format", help="text or json.")]


FailOnDriftOpt = Annotated[
    bool,
    typer.Option(
        "--fail-on-drift",
        help="Exit 1 when the promised false-alarm rate is broken at the 5% level.",
    ),
]


def calibrate_options(v: dict[str, Any]) -> CalibrateOptions:
    """The CalibrateOptions of `winclip calibrate`'s parsed parameters."""
    return CalibrateOptions(
        inputs=list(v["paths"]),
        output=v["output"],
        class_name=v["class_name"],
        ref=v["ref"],
        k=v["k"],
        seed=v["seed"],
        batch_size=v["batch_size"],
        workers=v["workers"],
        tiles=v["tiles"],
        tile_overlap=v["tile_overlap"],
        pool=v["pool"],
        save_pool=v["save_pool"],
        model=model_options(v),
    )


def eval_options(v: dict[str, Any]) -> EvalOptions:
    """The EvalOptions of `winclip eval`'s parsed parameters."""
    return EvalOptions(
        root=v["root"],
        layout=v["layout"],
        categories=v["category"],
        shots=v["k"] or [0],
        seeds=v["seeds"],
        class_name=v["class_name"],
        json_path=v["json_path"],
        scores_path=v["scores"],
        compare=v["compare"],
        calibrate=v["calibrate"],
        mutual=v["mutual"],
        pool=v["pool"],
        batch_size=v["batch_size"],
        workers=v["workers"],
        tiles=v["tiles"],
        tile_overlap=v["tile_overlap"],
        model=model_options(v),
    )
