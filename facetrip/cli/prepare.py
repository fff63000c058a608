"""`facetrip prepare`: a source's photos turned once into a prepared face set on disk.

Parses, calls :func:`facetrip.data.records.load_model_faces`, renders with rich; the
command is registered on the app in :mod:`facetrip.cli`.
"""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from facetrip.cli.core import app, console, maps_errors, progress, setup_logging

# The failed photos a run of `prepare` names one by one; the rest are counted.
SHOWN_FAILURES = 20


@app.command(name="prepare")
@maps_errors("facetrip.data:DataError")
def prepare(
    source: str = typer.Argument("orl_faces", help="orl_faces, folder:PATH (PATH/<identity>/<photo>), rec:PATH "
                                                   "(insightface train.rec + train.idx) or tfds:NAME."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where prepared sets live (default: ~/tensorflow_datasets)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0: every core)."),
    aligned: str = typer.Option("none", "--aligned", help="none: find each face; dlib: the photos are dlib face chips; "
                                                          "arcface: 112x112 ArcFace crops (implied for rec:)."),
    face_chips: bool = typer.Option(True, "--face-chips/--no-face-chips", help="Store face chips (the default), or whole "
                                                                                "images for models that read them."),
    chip_format: str = typer.Option("png", "--chip-format", help="png: lossless chips; jpeg: quality 95, about a "
                                                                 "quarter of the disk, the same LFW accuracy."),
    beam_runner: str = typer.Option("", "--beam-runner", help="Prepare as an Apache Beam pipeline on this runner "
                                                              "(DirectRunner, DataflowRunner, ...; needs facetrip[beam])."),
    beam_options: str = typer.Option("", "--beam-options", help='The Beam runner\'s options, e.g. "--direct_num_workers=2".'),
) -> None:
    """Prepare a source once: every photo decoded, its face found and cut as a 150 x 150 chip, stored as ArrayRecord shards.

    Later commands (train, evaluate, embed, mine, index) read the prepared set by random
    access. An interrupted preparation resumes from the shards it finished; a photo that
    fails is listed here and left out, never a reason to stop.
    """
    from facetrip.tf_runtime import import_tensorflow

    if beam_options and not beam_runner:
        beam_runner = "DirectRunner"
    setup_logging()
    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.data.records import load_model_faces

    tfds.disable_progress_bar()
    started = time.monotonic()
    with progress(f"Preparing {source}") as shown:
        faces, report = load_model_faces(source, data_dir=data_dir, face_chips=face_chips, aligned=aligned,
                                         workers=workers, beam_runner=beam_runner, beam_options=beam_options,
                                         progress=shown, chip_format=chip_format)
    seconds = time.monotonic() - started
    prepared = faces.encoded.prepared
    failed = int(prepared.failed.sum())
    failures = prepared.failures(SHOWN_FAILURES)
    table = Table(title=f"facetrip prepare {escape(prepared.source)}", show_header=False)
    table.add_row("prepared set", escape(str(prepared.path)))
    stored_as = ", JPEG chips" if prepared.path.parent.name.endswith("_jpeg") else ""
    table.add_row("records", f"{len(prepared):,} ({prepared.mode}{stored_as}) in {len(prepared.shard_paths())} shards")
    table.add_row("usable photos", f"{len(faces):,} of {len(faces.identity_names):,} identities")
    table.add_row("failed photos", f"{failed:,}")
    if report is not None:
        table.add_row("faces", escape(report.summary()))
    table.add_row("time", f"{seconds:.1f} s ({len(prepared) / max(seconds, 1e-9):,.0f} photos/s)")
    console.print(table)
    for name, error in failures:
        console.print(f"  failed: {escape(name)}: {escape(error)}", highlight=False, soft_wrap=True)
    if failed > len(failures):
        console.print(f"  ... and {failed - len(failures):,} more", highlight=False)
