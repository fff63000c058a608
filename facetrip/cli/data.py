"""`facetrip data`: what training would get from a source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from facetrip.cli.core import (
    DATA_DIR_HELP, DATA_HELP, app, console, literal, load_prepared_source, load_source, maps_errors, progress,
    setup_logging,
)


@app.command()
@maps_errors("facetrip.data:DataError")
def data(
    source: str = typer.Argument("orl_faces", help=DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    test: float = typer.Option(10, help="Test identities: a count (>= 1) or a fraction (< 1)."),
    dev: float = typer.Option(5, help="Dev identities: a count (>= 1) or a fraction (< 1)."),
    seed: int = typer.Option(0, help="Seed of the identity split and the sampler."),
    identities_per_batch: int = typer.Option(16, "-P", help="P: identities per batch."),
    images_per_identity: int = typer.Option(4, "-K", help="K: images per identity."),
    face_chips: bool = typer.Option(True, "--face-chips/--no-face-chips", help="Also align every photo's face (cached), as training does, and count the photos without a detected face."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write the photos to this new (or empty) folder as EXPORT/<identity>/<photo>, usable as folder:EXPORT and by verify / embed; an earlier export is never replaced."),
) -> None:
    """Prepare a data source and show what training would get from it: identities, split, P x K batches, faces found."""
    import numpy as np

    from facetrip.data import PKSampler, split_identities

    setup_logging()
    report = None
    if export is not None:  # the photos as they are, into a folder checked before anything is loaded
        from facetrip.data.folder_export import check_export_folder

        check_export_folder(export)
        faces = load_source(source, data_dir)
    else:  # the prepared set (prepared now, the first time), as training reads it
        faces, report = load_prepared_source(source, data_dir, face_chips)
    split = split_identities(faces.identity_names, dev=dev, test=test, seed=seed)
    train = faces.restricted_to(split.train)
    sampler = PKSampler(train.labels, identities_per_batch, images_per_identity, seed=seed)
    if export is not None:
        from facetrip.data.folder_export import export_faces

        written = export_faces(faces, export)

    counts = faces.images_per_identity()
    from rich.markup import escape

    table = Table(title=escape(f"{faces.source}"), show_header=False)
    table.add_row("images", f"{len(faces)}")
    table.add_row("identities", f"{len(counts)} ({int((counts >= 2).sum())} with two or more images)")
    table.add_row("images per identity", f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")
    table.add_row("channels", f"{faces.encoded.prepared.channels if faces.model_input else faces.channels}")
    table.add_row("split (identities)", f"train {len(split.train)}, dev {len(split.dev)}, test {len(split.test)} (seed {seed})")
    table.add_row("train images", f"{len(train)}")
    table.add_row("P x K batches per epoch", f"{sampler.batches_per_epoch} of {sampler.batch_size} images")
    if face_chips and report is None:
        from facetrip.data.model_input import prepare_faces

        with progress("Aligning faces", len(faces)) as shown:
            _, report = prepare_faces(faces, True, shown)
    if report is not None:
        table.add_row("face chips", escape(report.summary()))
    if export is not None:
        table.add_row("exported", f"{written} photos to {literal(export)}/<identity>/")
    console.print(table)
