"""`facetrip index`, `facetrip identify` and `facetrip cluster`: a gallery of known people, who is in a photo, and who goes with whom."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facetrip.cli.core import (
    DATA_DIR_HELP, DATA_HELP, FAR_HELP, THRESHOLD_HELP, _load_run, app, console, fail, maps_errors, progress,
    setup_logging, shown_path,
)

# The errors of index / identify / cluster that are the user's to fix: one line each, exit 2.
IDENTIFICATION_ERRORS = (
    "facetrip.evaluation.calibration:CalibrationError", "facetrip.data:DataError", "facetrip.data:ImageReadError",
    "facetrip.identification.ann:AnnUnavailable", "facetrip.identification.ann:AnnFileError",
    "facetrip.identification.clustering:ClusteringError",
    "facetrip.identification.index:GalleryIndexError", "facetrip.runs:OutputFolderError", "facetrip.config:ConfigError",
)


def _search_option(ann: Optional[bool]) -> str:
    return "auto" if ann is None else ("ann" if ann else "exact")


@app.command()
@maps_errors(*IDENTIFICATION_ERRORS)
def index(
    run: Path = typer.Argument(..., help="The run whose model embeds the gallery."),
    gallery: str = typer.Argument(..., help="GALLERY/<person>/<photo>, or a data source: " + DATA_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="The index folder to write: new, empty, or an index facetrip wrote with --add or --overwrite."),
    add: bool = typer.Option(False, "--add", help="Add the gallery's people and photos to the index in the folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the index in the folder (only the files facetrip index wrote there)."),
    ann: Optional[bool] = typer.Option(None, "--ann/--exact", help="Save an approximate-search index (facetrip[ann]); default: above 200,000 photos."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Embed a gallery of known people with a run's model: an index for facetrip identify."""
    import json

    from rich.markup import escape

    from facetrip.identification.index import check_index_folder
    from facetrip.identification.workflows import index_gallery

    if add and overwrite:
        fail("--add extends the index and --overwrite replaces it: give one of them.")
    output_folder = check_index_folder(output, add, overwrite)  # before anything is embedded or written
    setup_logging()
    loaded = _load_run(run)
    try:
        with progress("Indexing") as shown:
            summary = index_gallery(loaded, gallery, output, add=add, overwrite=overwrite, ann=ann, data_dir=data_dir,
                                    on_stage=shown.stage, progress=shown, output_folder=output_folder)
    except OSError as error:
        fail(f"Cannot write the index into {output}: {error.strerror or error}; choose another folder with -o.")
    if as_json:
        typer.echo(json.dumps({**summary.manifest, "added": summary.added, "no_face": summary.no_face,
                               "unreadable": [name for name, _ in summary.unreadable]}))
        return
    _print_apart("No face found, not indexed", summary.no_face)
    _print_apart("Unreadable, not indexed", [f"{name} ({reason})" for name, reason in summary.unreadable])
    manifest = summary.manifest
    repeated = f"; {summary.already_indexed} already indexed" if summary.already_indexed else ""
    with_ann = f", with an approximate-search index ({manifest['ann']['library']})" if manifest.get("ann") else ""
    console.print(f"Indexed {summary.added:,} photo{'' if summary.added == 1 else 's'} of {escape(summary.source)}{repeated}: "
                  f"{escape(str(output))} holds {manifest['entries']:,} photos of {manifest['people']:,} people "
                  f"({manifest['metric']}{with_ann}).", highlight=False, soft_wrap=True)
    decided = manifest.get("open_set") or {}
    if decided.get("threshold") is not None:
        console.print(f"identify decides with threshold {decided['threshold']:.4f} ({escape(decided['threshold_rule'])}).",
                      style="dim", highlight=False, soft_wrap=True)


def _print_apart(what: str, names: list, shown: int = 5) -> None:
    """A yellow line naming the first few photos left out, and how many."""
    from rich.markup import escape

    from facetrip.data.names import utf8_name

    if names:
        listed = ", ".join(escape(utf8_name(str(name))) for name in names[:shown])
        console.print(f"[yellow]{what}:[/] {len(names)} ({listed}{' ...' if len(names) > shown else ''})", highlight=False,
                      soft_wrap=True)


@app.command()
@maps_errors(*IDENTIFICATION_ERRORS)
def identify(
    run: Path = typer.Argument(..., help="The run that made the index."),
    photos: list[Path] = typer.Argument(..., help="Photos to identify."),
    index_dir: Path = typer.Option(..., "--index", help="An index of known people (facetrip index)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=100, help="People listed per photo."),
    score: str = typer.Option("mean", "--score", help="A person's distance: to their mean embedding, or to their nearest photo (mean | nearest)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    far: Optional[float] = typer.Option(None, "--far", help=FAR_HELP),
    false_alarm: Optional[float] = typer.Option(None, "--false-alarm", help="Name at most this share of strangers (0.01 = 1%) as one of the index's people; default: the run's identify.false_alarm (0.01). --threshold and --far decide per pair instead."),
    ann: Optional[bool] = typer.Option(None, "--ann/--exact", help="Approximate or exact search; default: approximate above 200,000 photos when the index has an approximate-search index."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts."),
) -> None:
    """Who is on each photo? The top-k people of an index with their distances, and a person or unknown."""
    import json

    from rich.markup import escape

    from facetrip.data.images import decode_file
    from facetrip.identification.search import SCORES

    if score not in SCORES:
        fail(f"--score must be one of {', '.join(SCORES)}, not {score!r}.")
    if sum(option is not None for option in (threshold, far, false_alarm)) > 1:
        fail("Give one of --threshold X, --far F and --false-alarm F.")
    for photo in photos:  # fail on a bad file before loading TensorFlow
        decode_file(photo)
    from facetrip.identification.index import read_manifest
    from facetrip.identification.photos import embed_photos, read_files
    from facetrip.identification.workflows import expected_false_alarm, identify_decision, identify_with_index, load_index

    read_manifest(index_dir)  # a missing or corrupt index, before loading TensorFlow
    loaded = _load_run(run)
    gallery = load_index(loaded, index_dir)
    people = len(gallery.people)  # what the gallery holds, whatever an older manifest recorded
    decision = identify_decision(loaded, people, threshold, far, false_alarm)
    chosen, rule = decision.threshold, decision.rule
    with progress("Reading the photos", len(photos)) as shown:
        probes = read_files(photos, [0] * len(photos), ["?"], "photos", skip_unreadable=False, progress=shown)
        embedded = embed_photos(loaded, probes.faces, on_stage=shown.stage, progress=shown)
        shown.stage("Searching the index")
        found = identify_with_index(gallery, embedded, chosen, top_k, score, _search_option(ann))
    for photo, result, count in zip(photos, found["results"], embedded.faces_detected):
        result.update({"photo": str(photo), "faces_detected": int(count)})
    strangers = expected_false_alarm(loaded, chosen, people)
    if as_json:
        typer.echo(json.dumps({"run": str(loaded.path), "index": str(index_dir), "metric": gallery.manifest["metric"],
                               "score": score, "threshold": chosen, "threshold_rule": rule,
                               "decision_rule": decision.decision_rule, "false_alarm": decision.false_alarm,
                               "people": people, "expected_false_alarm": strangers, "search": found["search"],
                               "photos": found["results"]}))
        return
    _print_identification(found["results"], f"facetrip identify ({escape(str(index_dir))}: {people:,} people, {score} score)")
    console.print(f"Known when the best {gallery.manifest['metric']} distance is at most {chosen:.4f} ({escape(rule)}); "
                  f"{found['search']} search.", style="dim", highlight=False, soft_wrap=True)
    if strangers is not None and strangers > 0.1 and decision.decision_rule == "pair":
        console.print(f"[yellow]Note:[/] with {people:,} people this threshold takes about {strangers:.0%} of strangers for "
                      f"someone (from the run's calibration pairs); without --threshold and --far, identify names at most the "
                      f"run's identify.false_alarm (1% by default) of strangers.", highlight=False, soft_wrap=True)


def _print_identification(results: list, title: str) -> None:
    """One table row per photo: the decision, the best distance, and the next two people (all k in --json)."""
    from rich.markup import escape

    table = Table(title=title)
    for column in ("photo", "decision", "distance", "runners-up"):
        table.add_column(column)
    for result in results:
        shown = {"known": f"[bold green]{escape(str(result['person']))}[/]", "unknown": "[bold red]unknown[/]",
                 "no face": "[yellow]no face found: skipped[/]"}[result["decision"]]
        if result["decision"] == "unknown" and result["matches"]:
            shown += f" (nearest: {escape(result['matches'][0]['person'])})"
        others = ", ".join(f"{escape(match['person'])} {match['distance']:.3f}" for match in result["matches"][1:3])
        distance = "-" if result["distance"] is None else f"{result['distance']:.4f}"
        table.add_row(escape(shown_path(result["photo"])), shown, distance, others)
    console.print(table)


@app.command()
@maps_errors(*IDENTIFICATION_ERRORS)
def cluster(
    run: Path = typer.Argument(..., help="The run whose model embeds the photos."),
    photos: list[Path] = typer.Argument(..., help="Photos, or folders of photos (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for clusters.csv, unclustered.csv, the contact sheets and clusters.html: new, empty, or an earlier clustering's with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier clustering in the folder, or write beside files of other names there (never replacing them)."),
    algorithm: str = typer.Option("average", "--algorithm", help="average | complete (agglomerative linkage) | chinese_whispers | connected (threshold graph) | hdbscan (ignores the threshold)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    far: Optional[float] = typer.Option(None, "--far", help=FAR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Group unlabelled photos by person: clusters.csv (file, cluster), one contact sheet per cluster, clusters.html."""
    import json

    from rich.markup import escape

    from facetrip.identification.clustering import ALGORITHMS
    from facetrip.identification.workflows import check_cluster_folder, cluster_photos, run_threshold, write_clustering

    if algorithm not in ALGORITHMS:
        fail(f"--algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}.")
    if threshold is not None and far is not None:
        fail("Give --threshold X or --far F, not both.")
    missing = [str(path) for path in photos if not path.exists()]
    if missing:
        fail(f"{missing[0]}: no such file or folder.")
    output_folder = check_cluster_folder(output, overwrite)  # before anything is computed or written
    setup_logging()
    loaded = _load_run(run)
    try:
        chosen, rule = run_threshold(loaded, threshold, far)
        with progress("Clustering") as shown:
            found = cluster_photos(loaded, photos, chosen, algorithm, on_stage=shown.stage, out_dir=output, progress=shown)
        alone, no_face = int((found.clusters == -1).sum()), int((found.clusters == -2).sum())
        summary = {"run": str(loaded.path), "algorithm": algorithm, "metric": loaded.metadata["metric"], "threshold": chosen,
                   "threshold_rule": rule, "photos": len(found.files), "clusters": found.num_clusters,
                   "alone": alone, "no_face": no_face, "unreadable": len(found.unreadable), "seconds": found.seconds}
        written = write_clustering(output, found, summary, output_folder)
    except OSError as error:
        fail(f"Cannot write into {output}: {error.strerror or error}; choose another folder with -o.")
    if as_json:
        typer.echo(json.dumps({**summary, "files": written}))
        return
    console.print(f"{summary['photos']:,} photos: {found.num_clusters:,} clusters of two or more, {alone:,} alone, "
                  f"{no_face:,} without a face, {len(found.unreadable):,} unreadable ({algorithm}, threshold {chosen:.4f}: "
                  f"{escape(rule)}).", highlight=False, soft_wrap=True)
    console.print(f"Wrote {escape(written['csv'])}, {escape(written['unclustered'])} and {len(written['sheets'])} contact "
                  f"sheets (cluster_NNN.png) to {escape(str(output))}/; open {escape(written['page'])} to see them.",
                  highlight=False, soft_wrap=True)
