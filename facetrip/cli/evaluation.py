"""`facetrip evaluate` and `facetrip export`: a run measured on its test identities, and its model written for serving."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facetrip.cli.core import (
    DATA_DIR_HELP, DATA_HELP, RUN_HELP, _one_run, _percent, app, console, error_console, fail, literal, maps_errors,
    progress, setup_logging,
)


def _evaluate_after_training(run_dir: Path, data_dir: Optional[str]) -> None:
    """`facetrip evaluate` on a run that just finished, with its report page; training stays a success if it cannot run."""
    from facetrip.data import DataError
    from facetrip.evaluation import PairsFileError
    from facetrip.evaluation.report import EvaluationError, ReportNotWritten, evaluate_run
    from facetrip.runs import RunError

    seen: list = []
    try:
        with progress("Evaluating on the test identities") as shown:
            report = evaluate_run(run_dir, data_dir=data_dir, on_stage=shown.stage, progress=shown,
                                  pairs_seen=seen.append)
    except ReportNotWritten as error:  # computed but not saved: show it, then say what could not be written
        _print_evaluation(error.report)
        error_console.print(f"[yellow]Evaluation not saved:[/] {literal(error)}", highlight=False, soft_wrap=True)
        return
    except (EvaluationError, PairsFileError, RunError, DataError) as error:
        error_console.print(f"[yellow]Evaluation skipped:[/] {literal(error)}", highlight=False, soft_wrap=True)
        return
    _print_evaluation(report)
    _write_report_or_warn(run_dir, report, seen[0], None)


def default_report_file(run_dir: Path, report: dict) -> Path:
    """The report page beside the evaluation's metrics file: ``report.html``, or ``report-<source>.html``."""
    metrics_file = (report.get("files") or {}).get("metrics") or "metrics.json"
    return Path(run_dir) / ("report" + metrics_file.removeprefix("metrics").removesuffix(".json") + ".html")


def _check_report_file(path: Path, overwrite: bool) -> None:
    """Refuse an output page that is a folder, or a file facetrip did not write (one line, exit 2)."""
    from facetrip.evaluation.report_page import is_report_page
    from facetrip.runs.output_folder import check_output_file

    check_output_file(path, is_report_page, "a facetrip report page", "facetrip report", overwrite=overwrite,
                      option="-o")


def write_report_page(run_dir: Path, report: dict, pairs, output: Optional[Path], overwrite: bool,
                      extra_sections=()) -> Path:
    """Write the evaluation's HTML page: ``output``, or the default page in the run directory.

    Raises:
        OutputFolderError: the page would replace a folder or a file facetrip did not write.
        OSError: the page cannot be written.
    """
    from facetrip.evaluation.report_page import report_page_html
    from facetrip.runs import atomic_write_text, read_metadata
    from facetrip.training.history import training_curves_png

    target = Path(output) if output is not None else default_report_file(run_dir, report)
    _check_report_file(target, overwrite or output is None)  # the run's own page is the run's to replace
    page = report_page_html(report, pairs, read_metadata(run_dir), training_curves_png(Path(run_dir)), extra_sections)
    atomic_write_text(target, page)
    return target


def _write_report_or_warn(run_dir: Path, report: dict, pairs, output: Optional[Path], overwrite: bool = False,
                          extra_sections=(), shown_on=None) -> Optional[Path]:
    """:func:`write_report_page`, saying in one yellow line why when it cannot (the metrics stay saved)."""
    from facetrip.runs import OutputFolderError

    try:
        target = write_report_page(run_dir, report, pairs, output, overwrite, extra_sections)
    except OutputFolderError as error:
        error_console.print(f"[yellow]Report page not written:[/] {literal(error)}", highlight=False, soft_wrap=True)
        return None
    except OSError as error:
        error_console.print(f"[yellow]Report page not written:[/] {literal(error.strerror or error)} "
                            f"({literal(getattr(error, 'filename', None) or run_dir)}).", highlight=False, soft_wrap=True)
        return None
    (shown_on or console).print(f"Wrote the report page {literal(target)}", highlight=False, soft_wrap=True)
    return target


def _print_evaluation(report: dict) -> None:
    """The evaluation report as a rich table: model and baselines, then pairs and threshold lines."""
    from facetrip.evaluation import FAR_TARGETS, far_key

    pairs = report["pairs"]
    table = Table(title=f"facetrip evaluate {literal(report['run'])}")
    table.add_column("")
    for column in ("AUC", "EER", *(f"TAR at\nFAR {target * 100:g}%" for target in FAR_TARGETS),
                   f"{report['model']['accuracy']['num_folds']}-fold\naccuracy"):
        table.add_column(column, justify="right")
    rows = [("model", report["model"]), *report["baselines"].items()]
    for label, metrics in rows:
        accuracy = metrics["accuracy"]
        table.add_row(
            literal(label), f"{metrics['auc']:.4f}", _percent(metrics["eer"]),
            *(f"{metrics[far_key(target)]:.3f}" for target in FAR_TARGETS),
            f"{_percent(accuracy['mean'])} ± {_percent(accuracy['std'])}",
        )
    console.print(table)
    accuracy = report["model"]["accuracy"]
    people = (f"{pairs['images']:,} images of {pairs['identities']:,} identities of {literal(report['source'])} never "
              f"trained on" if pairs["identities"] else f"{pairs['images']:,} images of {literal(report['source'])}")
    console.print(
        f"Pairs: {pairs['same']:,} same + {pairs['different']:,} different, {people}; {literal(pairs['how'])}. "
        f"Accuracy: {accuracy['folds']} folds" + (", same and different pairs weighted equally." if accuracy["balanced"] else "."),
        highlight=False,
    )
    console.print(f"Model: {report['metric']} distance, {report['image_size'][0]}x{report['image_size'][1]} input.", highlight=False)
    if report["baselines"]:
        fit = report["baselines_fit"]
        console.print(
            "Baselines: " + "; ".join(f"{name}: {metrics['description']}" for name, metrics in report["baselines"].items())
            + f"; fitted on {fit['images']:,} images of {fit['identities']:,} training identities"
            + (f" at {fit['input']}" if fit.get("input") else "") + f", centred on {fit['centre']}.",
            highlight=False,
        )
    if report.get("baselines_skipped"):
        console.print(f"Baselines skipped: {literal(report['baselines_skipped'])}.", highlight=False)
    errors = report.get("errors")
    # no identities: a bin:FILE set, its images labelled by their pair ("pair 7 / pair 7"), so no per-person errors
    if errors and pairs["identities"] and (errors["false_rejects"] or errors["false_accepts"]):
        rejects = ", ".join(f"{literal(row['identity'])} {_percent(row['rate'])}" for row in errors["false_rejects"][:3])
        accepts = ", ".join(f"{' / '.join(literal(name) for name in row['identities'])} {_percent(row['rate'])}"
                            for row in errors["false_accepts"][:3])
        console.print(
            f"Errors at the model's EER threshold: most same pairs rejected for {rejects or 'no identity'}; "
            f"most different pairs accepted for {accepts or 'no identity pair'} (all in metrics.json, 'errors').",
            highlight=False,
        )
    threshold = report.get("threshold")
    if threshold is None:
        console.print("The run has no calibrated threshold.", highlight=False)
    else:
        from facetrip.evaluation.calibration import percent

        target = f" (target {percent(threshold['target_far'])})" if threshold.get("target_far") is not None else ""
        console.print(
            f"At the run's threshold {threshold['threshold']:.4f} ({literal(threshold['rule'])}): accuracy "
            f"{_percent(threshold['accuracy'])}, FAR {_percent(threshold['far'])}{target}, FRR {_percent(threshold['frr'])}.",
            highlight=False,
        )
    if report.get("files"):  # None when the run directory could not be written (the command says so)
        console.print(f"Wrote {literal(report['files']['metrics'])} and {literal(report['files']['roc'])} to "
                      f"{literal(report['run'])}/", highlight=False)


EVALUATION_ERRORS = ("facetrip.evaluation.report:EvaluationError", "facetrip.evaluation:PairsFileError",
                     "facetrip.runs:RunError", "facetrip.data:DataError", "facetrip.runs:OutputFolderError")
PAIRS_HELP = ("LFW pairs.txt-format file (name i j / name1 i name2 j), or a CFP protocol split folder "
              "(Protocol/Split/FF or .../FP, with --data folder:.../cfp/Data/Images), instead of the test identities.")
MAX_PAIRS_HELP = "Most same (and most different) pairs; a larger test split gets a seeded balanced sample."


def _run_evaluation(run_dir: Optional[Path], pairs: Optional[Path], max_pairs: int, seed: int, with_baselines: bool,
                    as_json: bool, data_source: Optional[str], data_dir: Optional[str], hardest: int,
                    before_failing=None):
    """Evaluate a run as `facetrip evaluate` does, print the table (or JSON): ``(run dir, report, evaluated pairs)``.

    Exits 2 after printing when the metrics cannot be saved (nothing computed is lost from the screen);
    ``before_failing(run dir, report, evaluated pairs)``, if given, is called first (a page written elsewhere).
    """
    import json

    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.evaluation.report import ReportNotWritten, evaluate_run
    from facetrip.runs import latest_run

    setup_logging()
    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    not_written = None
    seen: list = []
    target = run_dir if run_dir is not None else latest_run()
    try:
        with progress("Evaluating") as shown:
            report = evaluate_run(
                target, pairs_file=pairs, max_pairs=max_pairs, seed=seed, baselines=with_baselines,
                data_source=data_source, data_dir=data_dir, on_stage=shown.stage, progress=shown,
                hardest_errors=hardest, pairs_seen=seen.append,
            )
    except ReportNotWritten as error:  # computed, but the run directory cannot be written: show it all first
        report, not_written = error.report, error
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_evaluation(report)
    if not_written is not None:
        if before_failing is not None:
            before_failing(Path(target), report, seen[0])
        fail(f"{not_written} The metrics above are not saved: evaluate a writable copy of the run directory "
             f"to keep them.")
    return Path(target), report, seen[0]


@app.command()
@maps_errors(*EVALUATION_ERRORS)
def evaluate(
    run_dir: Optional[Path] = typer.Argument(None, help=RUN_HELP),
    run_option: Optional[Path] = typer.Option(None, "--run", help="The run, as --run RUN (the same as the argument)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help=PAIRS_HELP),
    max_pairs: int = typer.Option(50_000, "--max-pairs", help=MAX_PAIRS_HELP),
    seed: int = typer.Option(0, help="Seed of the pair sample and the 10-fold assignment."),
    with_baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also score raw pixels, Eigenfaces and Fisherfaces."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
    data_source: Optional[str] = typer.Option(None, "--data", help="Data source (default: the run's): " + DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    with_report: bool = typer.Option(True, "--report/--no-report", help="Also write the HTML report page beside metrics.json (report.html)."),
) -> None:
    """Score a run on identities it never trained on, beside raw pixels, Eigenfaces and Fisherfaces.

    Writes metrics.json, roc.png and the report page report.html into the run directory.
    """
    from facetrip.evaluation.report_page import DEFAULT_HARDEST_ERRORS

    run_dir = _one_run(run_dir, run_option)
    target, report, evaluated = _run_evaluation(run_dir, pairs, max_pairs, seed, with_baselines, as_json, data_source,
                                                data_dir, DEFAULT_HARDEST_ERRORS)
    if with_report:  # with --json, stdout is the JSON: the page's line goes to stderr
        _write_report_or_warn(target, report, evaluated, None, shown_on=error_console if as_json else console)


@app.command()
@maps_errors(*EVALUATION_ERRORS, "facetrip.identification.index:GalleryIndexError",
             "facetrip.evaluation.calibration:CalibrationError", "facetrip.config:ConfigError")
def report(
    run_dir: Optional[Path] = typer.Argument(None, help=RUN_HELP),
    run_option: Optional[Path] = typer.Option(None, "--run", help="The run, as --run RUN (the same as the argument)."),
    data_source: Optional[str] = typer.Option(None, "--data", help="Data source (default: the run's): " + DATA_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The page to write (default: RUN/report.html, beside metrics.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the page at --output when facetrip wrote it."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help=PAIRS_HELP),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Also show the identification curve (DIR against FPIR) of an index of this run."),
    hardest: int = typer.Option(24, "--hardest", min=1, max=500, help="Hardest false accepts and false rejects shown, of each."),
    max_pairs: int = typer.Option(50_000, "--max-pairs", help=MAX_PAIRS_HELP),
    seed: int = typer.Option(0, help="Seed of the pair sample and the 10-fold assignment."),
    with_baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also score raw pixels, Eigenfaces and Fisherfaces."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Evaluate a run and write one self-contained HTML page: curves, the threshold, and the photos of its hardest errors.

    The page opens from a file with no server; every image is inside it. metrics.json and roc.png are written too.
    """
    run_dir = _one_run(run_dir, run_option)
    if output is not None:
        _check_report_file(output, overwrite)  # a folder or a user's file: refused before any work
        if not output.parent.is_dir():  # not found only once the whole evaluation is done and metrics.json replaced
            fail(f"{output.parent} is not a folder: the report page {output} cannot be written there; "
                 f"choose another file with -o.")
    if index_dir is not None:
        from facetrip.identification.index import read_manifest

        read_manifest(index_dir)  # a missing or damaged index, before the evaluation
    def write_page(target: Path, report: dict, evaluated) -> None:
        extra = [] if index_dir is None else [_identification_section(target, index_dir)]
        try:
            written = write_report_page(target, report, evaluated, output, overwrite, extra)
        except OSError as error:
            fail(f"Cannot write the report page {output or default_report_file(target, report)}: "
                 f"{error.strerror or error}; choose another file with -o.")
        console.print(f"Wrote the report page {literal(written)}", highlight=False, soft_wrap=True)

    # a read-only run still gets its page at -o, before the command says its metrics were not saved
    target, report, evaluated = _run_evaluation(run_dir, pairs, max_pairs, seed, with_baselines, False, data_source,
                                                data_dir, hardest, before_failing=write_page if output is not None else None)
    write_page(target, report, evaluated)


def _identification_section(run_dir: Path, index_dir: Path) -> str:
    """The report page's identification section: an index's DIR-against-FPIR curve at identify's default decision."""
    from facetrip.evaluation.report_page import identification_section_html
    from facetrip.identification.open_set import dir_fpir_plot_png
    from facetrip.identification.workflows import index_identification_curve
    from facetrip.runs.loaded_run import Run

    with console.status(f"Measuring the identification curve of {literal(index_dir)} ..."):
        curve = index_identification_curve(Run.load(run_dir), index_dir)
    return identification_section_html(str(index_dir), curve, dir_fpir_plot_png(curve))


@app.command()
@maps_errors("facetrip.export:ExportError", "facetrip.runs:RunError", "facetrip.runs:OutputFolderError")
def export(
    run_dir: Optional[Path] = typer.Argument(None, help=RUN_HELP),
    run_option: Optional[Path] = typer.Option(None, "--run", help="The run, as --run RUN (the same as the argument)."),
    export_format: str = typer.Option("savedmodel", "--format", help="savedmodel (TensorFlow Serving, TF.js, ...) | tflite (phones)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write into (default RUN/export-FORMAT): new, empty, or an earlier export's with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier export in the folder, or write beside files of other names there (never replacing them)."),
) -> None:
    """Export a run's model for serving: uint8 face chips in, unit embeddings out (see export.json)."""
    run_dir = _one_run(run_dir, run_option)
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow as tf
    from facetrip.export import export_run
    from facetrip.runs import latest_run

    setup_logging()
    logging.getLogger("absl").setLevel(logging.ERROR)
    target = None
    try:
        target = run_dir if run_dir is not None else latest_run()
        with console.status(f"Exporting {literal(target)} as {literal(export_format)} ..."):
            info = export_run(target, export_format, output, overwrite)
    except (OSError, tf.errors.OpError) as error:  # a read-only run directory, or a file where the folder must go
        default_folder = Path(target) / f"export-{export_format}" if target is not None else Path.cwd()
        folder = output if output is not None else default_folder
        reason = ("a file is in the way" if folder.exists() and not folder.is_dir()
                  else getattr(error, "strerror", None) or (str(error).splitlines() or [""])[0])
        fail(f"Cannot write the export into {folder}: {reason}; choose another folder with --output.")
    shape = "x".join(str(size) for size in info["input"]["shape"][1:])
    console.print(f"Wrote {literal(info['path'])}: signature {info['signature']}, uint8 images {shape} in, "
                  f"{info['output']['shape'][1]}-d unit embeddings out; {literal(info['input']['what'])}.", highlight=False)
