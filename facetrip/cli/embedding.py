"""`facetrip embed` and `facetrip mine`: embeddings of photos, and the hard triplets of a split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facetrip.cli.core import (
    DATA_DIR_HELP, DATA_HELP, RUN_HELP, _load_run, _number_or_word, _one_run, _print_face_counts, _split_of_run, app,
    console, fail, literal, maps_errors, progress, setup_logging,
)


@app.command()
@maps_errors("facetrip.runs:OutputFolderError")
def embed(
    inputs: Optional[list[Path]] = typer.Argument(None, help="Image files or folders (folder name = label)."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    data_source: Optional[str] = typer.Option(None, "--data", help="Embed a data source instead of files: " + DATA_HELP),
    split: str = typer.Option("test", help="With --data (or no inputs): train | dev | test | all identities of the run's split."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default RUN/embeddings-SPLIT or RUN/embeddings): new, empty, or earlier embeddings' with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier embeddings in the folder, or write beside files of other names there (never replacing them)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (files written, faces found per photo), for scripts."),
) -> None:
    """Embed images with a run's model: embeddings.npy, metadata.tsv and TensorBoard projector files."""
    import json

    import numpy as np

    from facetrip.data import DataError, ImageReadError
    from facetrip.embedding import (check_embeddings_folder, collect_images, embed_faces_to_file, scratch_npy_path,
                                    write_embeddings)

    setup_logging()
    loaded = _load_run(run)
    target = output or loaded.path / ("embeddings" if inputs else f"embeddings-{split}")
    output_folder = check_embeddings_folder(target, overwrite)  # before anything is embedded or written
    faces_detected = None
    try:
        if inputs:
            paths, labels = collect_images(inputs)
            if not paths:
                fail("No image files found in the given inputs.")
            with progress("Aligning faces" if loaded.face_chips else "Reading photos", len(paths)) as shown:
                faces, faces_detected = loaded.faces_of_files(paths, progress=shown)
        else:
            faces = _split_of_run(loaded, split, data_source, data_dir)
            if not len(faces):
                fail(f"The {split} split of {faces.source} holds no images.")
            labels = np.asarray(faces.identity_names, dtype=object)[faces.labels]  # (N,) shared name strings
            paths = faces.file_names  # read from the prepared set a chunk at a time, as metadata.tsv is written
    except (DataError, ImageReadError) as error:
        fail(str(error))
    import tensorflow as tf

    # Batch by batch into a scratch file beside the output, then into the output files a chunk
    # of rows at a time: a split of any size embeds in memory bounded by the batch.
    with scratch_npy_path(target, target.parent) as scratch:
        try:
            with progress("Embedding", len(faces)) as shown:
                embeddings = embed_faces_to_file(loaded.model, faces, loaded.image_size, loaded.channels, scratch,
                                                 progress=shown)
        except OSError as error:  # the scratch file: a full disk
            fail(f"Cannot write the embeddings to the scratch file {scratch}: {error.strerror or error}.")
        num_embeddings, embedding_dim = embeddings.shape
        try:
            written = write_embeddings(target, embeddings, labels, paths, faces_detected, output_folder)
        except (OSError, tf.errors.OpError) as error:  # a read-only run directory, or a file where the folder must go
            reason = ("a file is in the way" if target.exists() and not target.is_dir()
                      else getattr(error, "strerror", None) or (str(error).splitlines() or [""])[0])
            fail(f"Cannot write the embeddings into {target}: {reason}; choose another folder with --output.")
        del embeddings  # unmapped before the scratch file goes
    if as_json:
        from facetrip.data.model_input import file_face_detectors

        try:
            detectors = file_face_detectors(paths) if faces_detected is not None else [None] * len(paths)
        except ImageReadError as error:  # a photo gone or changed since it was embedded: what is written stays
            fail(f"{str(error).rstrip('.')} (since it was embedded). The embeddings are written to {target}/, but "
                 f"which detector found each face cannot be read back for the JSON: run again with the photos in place.")
        photos = [{"path": str(path), "label": label,
                   **({} if count is None else {"faces_detected": int(count), "face_detector": detector})}
                  for path, label, count, detector in zip(paths, labels, faces_detected or [None] * len(paths), detectors)]
        typer.echo(json.dumps({"output": str(target), "files": {name: str(path) for name, path in written.items()},
                               "embedding_dim": int(embedding_dim), "photos": photos}))
        return
    if faces_detected is not None:
        _print_face_counts(paths, faces_detected, inputs=inputs)  # names that are not UTF-8 as \xHH escapes
    console.print(
        f"Wrote {num_embeddings} embeddings of size {embedding_dim} to {literal(target)}/ "
        f"({', '.join(literal(path.name) for path in written.values())}); view with: tensorboard --logdir {literal(target)}",
        highlight=False, soft_wrap=True,
    )


@app.command()
@maps_errors("facetrip.runs:OutputFolderError")
def mine(
    run_argument: Optional[Path] = typer.Argument(None, metavar="[RUN]", help="The run (the same as --run RUN)."),
    offline: bool = typer.Option(True, "--offline/--no-offline", help="Offline mining over a whole split (the only mode)."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    split: str = typer.Option("train", help="train | dev | test | all identities of the run's split."),
    margin: Optional[str] = typer.Option(None, help="Margin of the categories (default: the run's; 'soft' counts as 0)."),
    max_triplets: int = typer.Option(100_000, help="Most hard + semi-hard triplets to keep."),
    seed: int = typer.Option(0, help="Seed of the selection."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Triplets file (default RUN/triplets-SPLIT.npz): new, or an earlier one of facetrip mine's with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the triplets file facetrip mine wrote there earlier (never a file of other content)."),
) -> None:
    """Count easy / semi-hard / hard triplets of a split with a run's model and save hard + semi-hard ones."""
    run = _one_run(run_argument, run)
    from facetrip.mining import TRIPLET_CATEGORIES, mine_triplets, save_triplets
    from facetrip.mining.triplet_files import is_triplets_file
    from facetrip.embedding import embed_faces_to_file, scratch_npy_path
    from facetrip.runs import check_output_file

    if not offline:
        fail("Only offline mining (--offline) exists: online mining happens inside the loss during training.")
    setup_logging()
    loaded = _load_run(run)
    if margin is None and "margin" not in loaded.metadata:
        fail(f"{loaded.path}/metadata.json records no margin: give one with --margin.")
    chosen_margin = _number_or_word(margin, "loss.margin", "--margin") if margin is not None else loaded.metadata["margin"]
    chosen_margin = 0.0 if chosen_margin == "soft" else float(chosen_margin)
    target = output or loaded.path / f"triplets-{split}.npz"

    def check_target() -> None:  # a file facetrip did not write is never replaced; its own, with --overwrite
        check_output_file(target, is_triplets_file, "a facetrip triplets file", "facetrip mine", overwrite)

    check_target()  # before anything is embedded or written
    faces = _split_of_run(loaded, split, None, data_dir)
    # Embedded a batch at a time into a scratch file, which the mining reads a chunk of rows at a time.
    with progress("Embedding", len(faces)) as shown, scratch_npy_path(target.parent, loaded.path) as scratch:
        try:
            embeddings = embed_faces_to_file(loaded.model, faces, loaded.image_size, loaded.channels, scratch,
                                             progress=shown)  # (N, D)
        except OSError as error:  # the scratch file: a full disk
            fail(f"Cannot write the embeddings to the scratch file {scratch}: {error.strerror or error}.")
        shown.stage("Mining triplets")
        result = mine_triplets(embeddings, faces.labels, chosen_margin, metric=loaded.metadata["metric"],
                               max_triplets=max_triplets, seed=seed)
        del embeddings
    check_target()  # again: a file may have come since
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_triplets(target, result, file_names=faces.file_names, source=faces.source)
    except OSError as error:  # a read-only run directory, or a folder where the file must go
        fail(f"Cannot write {target}: {error.strerror or error}; choose another file with --output.")
    total = max(result.counts["total"], 1)
    table = Table(title=f"{literal(faces.source)} {literal(split)}: {len(faces)} images, margin {chosen_margin}, "
                        f"{literal(loaded.metadata['metric'])}")
    table.add_column("category")
    table.add_column("triplets", justify="right")
    table.add_column("share", justify="right")
    for category in TRIPLET_CATEGORIES:
        table.add_row(category.replace("_", "-"), f"{result.counts[category]:,}", f"{result.counts[category] / total:.1%}")
    table.add_row("total valid", f"{result.counts['total']:,}", "100%")
    console.print(table)
    console.print(f"Saved {len(result.triplets):,} hard + semi-hard triplets to {literal(target)}", highlight=False,
                  soft_wrap=True)
