"""The `winclip` command line: each command is a table of its options (declared once,
in cli_options.py) and one call into commands/; `_run` is the one error boundary, where
every outcome becomes its documented exit code.

The commands are imported when they run, not here: they pull in torch, and `--help` and
`--version` must answer at once.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_command_options import (
    CalibrateOpt,
    CalKOpt,
    CalOutputOpt,
    CalPathsOpt,
    CalRefOpt,
    CalSeedOpt,
    CategoryOpt,
    CompareOpt,
    DownloadModelOpt,
    DownloadPretrainedOpt,
    EvalClassOpt,
    EvalKOpt,
    GalleryOpt,
    JsonPathOpt,
    LayoutOpt,
    ReportOutputOpt,
    RootOpt,
    RowsOpt,
    ScoresOpt,
    SeedsOpt,
    TitleOpt,
    calibrate_options,
    eval_options,
)
from .cli_options import (
    BatchOpt,
    CacheOpt,
    ClassOpt,
    DeviceOpt,
    ModelOpt,
    MutualOpt,
    MutualSetOpt,
    PoolOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptsOpt,
    QuietOpt,
    SavePoolOpt,
    TemperatureOpt,
    TileOverlapOpt,
    TilesOpt,
    VerboseOpt,
    WeightsOpt,
    WorkersOpt,
    command_settings,
    reserve_standard_streams,
    run_options,
    typed,
)
from .cli_review import review_app
from .cli_run_options import (
    SCORING_HELP,
    CalibrationOpt,
    EngineOpt,
    FailOnAnomalyOpt,
    FalseAlarmRateOpt,
    FmtOpt,
    KOpt,
    MapDtypeOpt,
    MapsModeOpt,
    NoHeaderOpt,
    NoRetryErrorsOpt,
    NullOpt,
    OutOpt,
    OutputOpt,
    OverlayFormatOpt,
    OverlayMaxSideOpt,
    PathsOpt,
    RayAddressOpt,
    RayGpusPerWorkerOpt,
    RayWorkersOpt,
    RebuildManifestOpt,
    RefOpt,
    ReportOpt,
    ResumeOpt,
    SaveBankOpt,
    SaveMapsOpt,
    SaveMasksOpt,
    SeedOpt,
    SettleOpt,
    ShardOpt,
    ThresholdOpt,
    WaitOpt,
)
from .errors import ExitCode, Interrupted, WinclipError
from .options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS,
    DEFAULT_FORMAT,
    DEFAULT_MODEL,
    DEFAULT_MUTUAL_SET,
    DEFAULT_OUT_DIR,
    DEFAULT_PRECISION,
    DEFAULT_PRETRAINED,
    DEFAULT_SETTLE,
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILES,
)
from .progress import Reporter
from .rows import discard_stdout
from .runinfo import start_run
from .version import __version__

app = typer.Typer(
    name="winclip",
    help="Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images.\n\n"
    "Rows go to stdout (or -o FILE); progress and messages go to stderr.\n\n"
    "Exit codes: 0 every input scored; 1 --fail-on-anomaly and an anomaly; 2 usage error; "
    "3 some inputs unreadable (error rows); 4 model or weights not loaded; 75 try again "
    "later (files still being written, or another run holds the -o file); 70 internal "
    "error; 130/143 interrupted; 141 stdout closed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"winclip {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Zero- and few-shot visual anomaly detection (WinCLIP) for folders of images."""
    reserve_standard_streams()


def _run(
    action: Callable[[Any], int], quiet: bool, verbose: bool, ctx: typer.Context | None = None
) -> None:
    """Run ``action(reporter)``, turn every outcome into the documented exit code (the
    one place where errors become messages and codes). A log gets a first line naming
    the run (``ctx``: its command and settings), a last with counts, time, exit code."""
    reporter = Reporter(quiet=quiet, run=start_run())
    if ctx is not None:
        reporter.begin(__version__, ctx.info_name or "winclip", command_settings(ctx))
    # Library warnings (a cache that can't be written, torch's advice) are messages like
    # ours: through the reporter, one line, silenced by --quiet.
    warnings.showwarning = lambda message, *_args, **_kw: reporter.warn(str(message))
    try:
        code = action(reporter)
    except Interrupted as stop:
        code = stop.code
    except BrokenPipeError:
        # The reader went away (`winclip score ... | head`): stop quietly, like other
        # Unix tools killed by SIGPIPE; the remaining output has nowhere to go.
        discard_stdout()
        code = ExitCode.BROKEN_PIPE
    except WinclipError as exc:
        reporter.error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        reporter.error("interrupted")
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        if verbose:
            import traceback

            traceback.print_exc(file=reporter.stream)  # never stdout, even with 2>&-
        reporter.error(f"internal error: {type(exc).__name__}: {exc} (--verbose shows details)")
        code = ExitCode.INTERNAL
    reporter.finish(int(code))
    raise typer.Exit(int(code))


def _scoring_command(mode: str) -> Callable[..., None]:
    """One command function for score / segment / fewshot: they share every option."""

    def command(
        ctx: typer.Context,
        paths: PathsOpt = None,
        null: NullOpt = False,
        class_name: ClassOpt = DEFAULT_CLASS,
        ref: RefOpt = None,
        k: KOpt = None,
        seed: SeedOpt = None,
        save_bank: SaveBankOpt = None,
        out: OutOpt = DEFAULT_OUT_DIR,
        save_maps: SaveMapsOpt = False,
        map_dtype: MapDtypeOpt = "float32",
        overlay_format: OverlayFormatOpt = "png",
        overlay_max_side: OverlayMaxSideOpt = None,
        output: OutputOpt = None,
        fmt: FmtOpt = DEFAULT_FORMAT,
        threshold: ThresholdOpt = None,
        fail_on_anomaly: FailOnAnomalyOpt = False,
        report: ReportOpt = None,
        resume: ResumeOpt = False,
        calibration: CalibrationOpt = None,
        false_alarm_rate: FalseAlarmRateOpt = None,
        save_masks: SaveMasksOpt = False,
        maps_mode: MapsModeOpt = "all",
        no_retry_errors: NoRetryErrorsOpt = False,
        no_header: NoHeaderOpt = False,
        wait: WaitOpt = 0.0,
        rebuild_manifest: RebuildManifestOpt = False,
        settle: SettleOpt = DEFAULT_SETTLE,
        shard: ShardOpt = None,
        engine: EngineOpt = "local",
        ray_address: RayAddressOpt = None,
        ray_workers: RayWorkersOpt = None,
        ray_gpus_per_worker: RayGpusPerWorkerOpt = None,
        mutual: MutualOpt = False,
        mutual_set: MutualSetOpt = DEFAULT_MUTUAL_SET,
        pool: PoolOpt = None,
        save_pool: SavePoolOpt = None,
        model: ModelOpt = DEFAULT_MODEL,
        pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
        weights: WeightsOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = DEFAULT_PRECISION,
        batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
        workers: WorkersOpt = None,
        tiles: TilesOpt = DEFAULT_TILES,
        tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
        prompts: PromptsOpt = None,
        temperature: TemperatureOpt = None,
        cache_dir: CacheOpt = None,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        from .commands.run import run

        given = typed(ctx)
        _run(lambda r: run(run_options(mode, ctx.params, given), r), quiet, verbose, ctx)

    if mode == "score":  # score makes no images: hide the image options from its help
        signature = inspect.signature(command)
        hidden = {"out", "save_maps", "save_masks", "maps_mode", "map_dtype", "overlay_format"}
        hidden.add("overlay_max_side")
        keep = [p for p in signature.parameters.values() if p.name not in hidden]
        command.__signature__ = signature.replace(parameters=keep)  # type: ignore[attr-defined]  # Typer reads it
    command.__doc__ = SCORING_HELP[mode]
    return command


for _mode in ("score", "segment", "fewshot"):
    app.command(_mode)(_scoring_command(_mode))


@app.command("calibrate")
def calibrate_command(
    ctx: typer.Context,
    paths: CalPathsOpt,
    output: CalOutputOpt,
    class_name: ClassOpt = DEFAULT_CLASS,
    ref: CalRefOpt = None,
    k: CalKOpt = None,
    seed: CalSeedOpt = None,
    pool: PoolOpt = None,
    save_pool: SavePoolOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = DEFAULT_PRECISION,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    workers: WorkersOpt = None,
    tiles: TilesOpt = DEFAULT_TILES,
    tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
    prompts: PromptsOpt = None,
    temperature: TemperatureOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score known-good images and write a calibration: a threshold with a guaranteed
    false-alarm rate, and a p-value for every score (use it with --calibration).

    Zero-shot, or few-shot with --ref. The summary says which rates the images support.
    """
    from .commands.calibrate import run_calibrate

    options = calibrate_options(ctx.params)
    _run(lambda reporter: run_calibrate(options, reporter), quiet, verbose, ctx)


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    root: RootOpt,
    layout: LayoutOpt = "auto",
    category: CategoryOpt = None,
    k: EvalKOpt = None,
    seeds: SeedsOpt = 1,
    class_name: EvalClassOpt = None,
    json_path: JsonPathOpt = None,
    scores: ScoresOpt = None,
    compare: CompareOpt = None,
    calibrate: CalibrateOpt = None,
    mutual: MutualOpt = False,
    pool: PoolOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = DEFAULT_PRECISION,
    batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
    workers: WorkersOpt = None,
    tiles: TilesOpt = DEFAULT_TILES,
    tile_overlap: TileOverlapOpt = DEFAULT_TILE_OVERLAP,
    prompts: PromptsOpt = None,
    temperature: TemperatureOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Image and pixel metrics (AUROC, AP, F1-max, PRO) on a labelled dataset.

    The table goes to stderr; --json and --scores keep every figure.
    """
    options = eval_options(ctx.params)

    from .commands.evaluate import eval_with_progress

    _run(lambda reporter: eval_with_progress(options, reporter, quiet), quiet, verbose, ctx)


@app.command("report")
def report_command(
    ctx: typer.Context,
    rows: RowsOpt,
    output: ReportOutputOpt = Path("report.html"),
    gallery: GalleryOpt = 200,
    title: TitleOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """One self-contained HTML file from rows files and the overlays they name.

    Opens offline; thumbnails are embedded; works without JavaScript."""

    from .commands.report import report_command as report

    _run(lambda reporter: report(rows, output, gallery, title, reporter), quiet, verbose, ctx)


app.add_typer(review_app(_run, typed), name="review")


@app.command()
def download(
    model: DownloadModelOpt = DEFAULT_MODEL,
    pretrained: DownloadPretrainedOpt = DEFAULT_PRETRAINED,
) -> None:
    """Fetch weights into the local cache, for later offline runs."""
    from .commands.download import download_weights

    _run(lambda _reporter: download_weights(model, pretrained), quiet=False, verbose=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
