"""`winclip review apply` and `winclip review stats`: a Typer sub-app, each command a
table of its options (declared in cli_options.py and cli_command_options.py) and one
call into commands/review.py.

cli.py builds it with its error boundary (``run``) and its typed-options reader
(``given``), so every outcome still becomes its exit code in one place.
"""

# No `from __future__ import annotations`: Typer reads the annotations at run time.
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .cli_command_options import (
    FailOnDriftOpt,
    IntoOpt,
    ReviewCalibrationOpt,
    ReviewOutputOpt,
    ReviewRateOpt,
    ReviewRootOpt,
    ReviewRowsOpt,
    ReviewStatsCalibrationOpt,
    StatsFormatOpt,
    VerdictsOpt,
)
from .cli_options import (
    BatchOpt,
    CacheOpt,
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    VerboseOpt,
    WeightsOpt,
    WorkersOpt,
    model_options,
)
from .options import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_PRECISION, DEFAULT_PRETRAINED

Boundary = Callable[[Callable[[Any], int], bool, bool], None]


Given = Callable[[typer.Context], frozenset[str]]


def review_app(run: Boundary, given: Given) -> typer.Typer:
    """The `review` sub-app; ``run(action, quiet, verbose)`` is cli.py's error boundary,
    ``given(ctx)`` the options typed."""
    app = typer.Typer(
        help="The review loop: verdicts exported from reports, taught back (apply) and "
        "measured against the calibration's promise (stats).",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.command("apply")(_apply_command(run, given))
    app.command("stats")(_stats_command(run))
    return app


def _apply_command(run: Boundary, given: Given) -> Callable[..., None]:
    def apply_command(
        ctx: typer.Context,
        verdicts: VerdictsOpt,
        calibration: ReviewCalibrationOpt,
        output: ReviewOutputOpt,
        into: IntoOpt = "bank",
        root: ReviewRootOpt = None,
        false_alarm_rate: ReviewRateOpt = None,
        model: ModelOpt = DEFAULT_MODEL,
        pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
        weights: WeightsOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = DEFAULT_PRECISION,
        batch_size: BatchOpt = DEFAULT_BATCH_SIZE,
        workers: WorkersOpt = None,
        cache_dir: CacheOpt = None,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """Teach the false alarms of verdict files back into a new calibration.

        --into bank (default): they join the reference bank and every calibration
        image is scored again; --into calibration: they join the known-good set.
        Defects are never added; the new file records its lineage. The model is
        the calibration's unless given."""
        from .commands.review import ReviewApplyOptions, run_review_apply

        options = ReviewApplyOptions(
            verdicts=list(verdicts),
            calibration=calibration,
            output=output,
            into=into,
            root=root,
            false_alarm_rate=false_alarm_rate,
            batch_size=batch_size,
            workers=workers,
            model=model_options({**ctx.params, "prompts": None, "temperature": None}),
            given=given(ctx),
        )
        run(lambda reporter: run_review_apply(options, reporter), quiet, verbose)

    return apply_command


def _stats_command(run: Boundary) -> Callable[..., None]:
    def stats_command(
        verdicts: VerdictsOpt,
        rows: ReviewRowsOpt = None,
        calibration: ReviewStatsCalibrationOpt = None,
        false_alarm_rate: ReviewRateOpt = None,
        fmt: StatsFormatOpt = "text",
        fail_on_drift: FailOnDriftOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        """How the alarms held up, and whether the promised false-alarm rate did.

        Images reviewed, defects confirmed, false alarms, the share of alarms
        that were defects; with the runs' rows, the observed false-alarm rate
        beside the promised one and a one-sided binomial p-value."""
        from .commands.review import ReviewStatsOptions, run_review_stats

        options = ReviewStatsOptions(
            verdicts=list(verdicts),
            rows=[Path(p) for p in rows or []],
            calibration=calibration,
            false_alarm_rate=false_alarm_rate,
            fmt=fmt,
            fail_on_drift=fail_on_drift,
        )
        run(lambda reporter: run_review_stats(options, reporter), quiet, verbose)

    return stats_command
