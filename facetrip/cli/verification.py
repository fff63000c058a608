"""`facetrip verify`: are two photos of the same person?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from facetrip.cli.core import (
    RUN_HELP, _load_run, _print_face_counts, app, console, fail, literal, maps_errors, shown_path,
)


@app.command()
@maps_errors("facetrip.data:ImageReadError", "facetrip.evaluation.calibration:CalibrationError")
def verify(
    first_image: Path = typer.Argument(..., help="First photo (jpg, png, pgm, bmp, ...; grey or colour, any size)."),
    second_image: Path = typer.Argument(..., help="Second photo."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide with this distance threshold instead of the run's."),
    far: Optional[float] = typer.Option(
        None, "--far", help="Decide with the threshold for this false accept rate (0.001 = 0.1%) on the run's dev pairs."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts."),
) -> None:
    """Are two photos the same person? Prints the distance, the run's threshold and the verdict."""
    import json

    from facetrip.data.images import decode_file
    from facetrip.evaluation.calibration import CalibrationError, check_target_far
    from facetrip.verification import verify as verify_pair

    if threshold is not None and far is not None:
        fail("Give --threshold X or --far F, not both.")
    try:
        if far is not None:
            check_target_far(far)
    except CalibrationError as error:
        fail(f"--far: {error}")
    for image in (first_image, second_image):  # fail on a bad file before loading TensorFlow
        decode_file(image)
    loaded = _load_run(run)
    result = verify_pair(loaded, first_image, second_image, threshold=threshold, far=far)
    if as_json:
        typer.echo(json.dumps(result))
        return
    verdict = {True: "[bold green]same person[/]", False: "[bold red]different people[/]", None: "no threshold in this run"}
    table = Table(title=f"facetrip verify ({literal(loaded.path)})")
    for column in ("image 1", "image 2"):
        table.add_column(column, overflow="fold")  # long paths fold; the verdict stays whole
    for column in (f"{result['metric']} distance", "threshold"):
        table.add_column(column, max_width=10)
    table.add_column("verdict", no_wrap=True)
    shown_threshold = "-" if result["threshold"] is None else f"{result['threshold']:.4f}"
    # as given: two photos named 1.png in different folders must stay apart
    table.add_row(escape(shown_path(first_image)), escape(shown_path(second_image)), f"{result['distance']:.4f}",
                  shown_threshold, verdict[result["same_person"]])
    console.print(table)
    console.print(f"Threshold: {literal(result['threshold_rule'])}.", style="dim", highlight=False, soft_wrap=True)
    if "threshold_warning" in result:
        console.print(f"[yellow]Note:[/] {escape(result['threshold_warning'])}", highlight=False, soft_wrap=True)
    if "faces_detected" in result:
        _print_face_counts([first_image, second_image], result["faces_detected"])
