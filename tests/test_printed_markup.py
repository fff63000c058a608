"""Every command prints the paths, sources and names the user gave letter for letter, never as rich markup.

Read as markup, a data source ``folder:photos[/]x`` would end `facetrip train` with rich's
MarkupError once the run directory is made, and an identity folder ``[bold]bob`` would print as
a bold ``bob``. Here every name a command prints (the data source, identity folders, photos, the
run directory, output paths) holds ``[/]``, ``[bold]`` or ``[link=https://example.com]x[/link]``:
each command ends as expected, with no traceback, and prints each of them as given. The
evaluation report is the one `train` prints when it has evaluated the run (`facetrip evaluate`
prints it alike).
"""

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from conftest import TINY
from facetrip.data.orl import orl_faces_root

CLOSING = "[/]"
BOLD = "[bold]"
LINK = "[link=https://example.com]x[/link]"

# Relative to the working folder of the tests, so that a printed path stays short enough not to wrap.
SOURCE_FOLDER = f"faces{CLOSING}x {LINK}"  # the folders 'faces[', ']x [link=https:', 'example.com]x[', 'link]'
SOURCE = f"folder:{SOURCE_FOLDER}"
RUN = f"runs {BOLD}/run{CLOSING}x"
GALLERY = f"gallery{CLOSING}x"
PROBES = f"probes{CLOSING}x"
OUT = f"out {BOLD}"

# The identity folders of the source, all named with rich markup: whichever a command prints shows it.
IDENTITIES = {f"{BOLD}bob": 1, **{f"{BOLD}s{number}": number for number in range(2, 13)}}

# Wide enough that no printed line wraps within a path (a table's title still wraps at the table's width).
WIDE = {"COLUMNS": "200"}


def run_cli(*arguments):
    """The facetrip CLI in-process, on a 200-column console."""
    from typer.testing import CliRunner

    from facetrip.cli import app

    return CliRunner().invoke(app, [str(argument) for argument in arguments], env=WIDE)


def assert_printed(result, *texts: str, exit_code: int = 0) -> None:
    """The command ended with ``exit_code``, without a traceback or a MarkupError, and printed each of ``texts``.

    A table's title wraps at the table's width: the output is compared with its runs of white space as one space.
    """
    from rich.errors import MarkupError

    assert not isinstance(result.exception, MarkupError), result.exception
    assert result.exit_code == exit_code, (result.exception, result.output)
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    printed = " ".join(result.output.split())
    for text in texts:
        assert " ".join(text.split()) in printed, f"{text!r} not printed as given:\n{result.output}"


def copy_photos(person: int, photos, folder: Path, names=None) -> None:
    """ORL photos of one person into ``folder``, under their own names or ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo, name in zip(photos, names or [f"{photo}.pgm" for photo in photos]):
        shutil.copyfile(orl_faces_root() / f"s{person}" / f"{photo}.pgm", folder / name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder holding the source, a gallery and probe photos, all named with rich markup."""
    root = tmp_path_factory.mktemp("markup")
    for identity, person in IDENTITIES.items():
        copy_photos(person, range(1, 11), root / SOURCE_FOLDER / identity)
    copy_photos(1, range(1, 6), root / GALLERY / f"{BOLD}bob")
    copy_photos(2, range(1, 6), root / GALLERY / f"{BOLD}eve")
    copy_photos(1, [9], root / PROBES, [f"{BOLD}1.pgm"])
    copy_photos(2, [9], root / PROBES, [f"{BOLD}2.pgm"])
    # 5 training identities; no threshold check on ORL's people
    config = Path(TINY).read_text().replace("[train]\n", '[train]\nstranger_check = ""\n', 1)
    (root / f"tiny {BOLD}.toml").write_text(config + "\n[split]\ntest = 4\ndev = 3\n")
    return root


@pytest.fixture(scope="module")
def markup_run(workdir, data_dir):
    """A run of one epoch on the source, trained and evaluated into RUN: the command's output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        return run_cli("train", "--config", f"tiny {BOLD}.toml", "--data", SOURCE, "--run-dir", RUN,
                       "--data-dir", data_dir, "--epochs", "1")


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    """The test runs in the working folder: the commands are given the relative names above."""
    monkeypatch.chdir(workdir)
    return workdir


def test_literal_prints_markup_as_text():
    import io
    import os

    from facetrip.cli.core import literal

    console = Console(width=200, record=True, file=io.StringIO())
    for text in (CLOSING, f"{BOLD}bob", LINK, "C:\\photos\\", f"photos{CLOSING}x"):
        console.print(f"[yellow]{literal(text)}[/]")
        assert console.export_text().strip() == text
    console.print(literal(Path("runs") / f"{BOLD}run"))
    assert console.export_text().strip() == f"runs/{BOLD}run"
    assert literal(os.fsdecode(b"caf\xe9 [bold]")) == "caf\\xe9 \\[bold]"  # not UTF-8: \xHH, as names are shown


@pytest.mark.slow
def test_train_and_its_evaluation_print_the_source_run_directory_and_identities_as_given(markup_run, workdir):
    """The whole run is written: printing the names ends no run half-way."""
    assert_printed(markup_run, f"on {SOURCE},", f"-> {RUN}", f"Loading {SOURCE} and building",
                   f"Done: {RUN}  threshold", f"facetrip evaluate {RUN}", f"identities of {SOURCE} never trained on",
                   f"to {RUN}/")
    errors = next(line for line in markup_run.output.splitlines() if line.startswith("Errors at the model's"))
    assert f"rejected for {BOLD}" in errors, markup_run.output  # an identity name, as its folder is named
    run_dir = workdir / RUN
    assert {"config.toml", "metadata.json", "metrics.json", "roc.png"} <= {path.name for path in run_dir.iterdir()}


@pytest.mark.slow
def test_evaluate_mine_and_export_print_paths_and_sources_as_given(markup_run, in_workdir, data_dir):
    assert_printed(markup_run)
    assert_printed(run_cli("evaluate", f"{RUN} {BOLD}missing"), f"{RUN} {BOLD}missing", exit_code=2)  # no such run
    triplets = Path(OUT) / f"triplets{CLOSING}x.npz"
    triplets.parent.mkdir(parents=True, exist_ok=True)
    assert_printed(run_cli("mine", RUN, "--data-dir", data_dir, "-o", triplets),
                   f"{SOURCE} train:", f"triplets to {triplets}")
    exported = Path(OUT) / f"export{CLOSING}x"
    assert_printed(run_cli("export", RUN, "-o", exported), f"Wrote {exported}/savedmodel:")
    assert_printed(run_cli("export", RUN, "--format", CLOSING), f"format '{CLOSING}'", exit_code=2)


@pytest.mark.slow
def test_embed_verify_index_identify_and_cluster_print_paths_and_names_as_given(markup_run, in_workdir):
    assert_printed(markup_run)
    embeddings = Path(OUT) / f"embeddings{CLOSING}x"
    assert_printed(run_cli("embed", PROBES, "--run", RUN, "-o", embeddings), f"to {embeddings}/",
                   f"--logdir {embeddings}")
    first, second = (f"{PROBES}/{BOLD}{number}.pgm" for number in (1, 2))
    assert_printed(run_cli("verify", first, second, "--run", RUN), f"facetrip verify ({RUN})", first, second)
    index = Path(OUT) / f"index{CLOSING}x"
    assert_printed(run_cli("index", RUN, GALLERY, "-o", index), f"of folder:{GALLERY}:", f"{index} holds")
    result = run_cli("identify", RUN, first, second, "--index", index)
    assert_printed(result, f"facetrip identify ({index}:", first, second, f"{BOLD}bob", f"{BOLD}eve")
    clusters = Path(OUT) / f"clusters{CLOSING}x"
    assert_printed(run_cli("cluster", RUN, GALLERY, "-o", clusters), str(clusters))


@pytest.mark.slow
def test_data_and_prepare_print_the_source_as_given(markup_run, in_workdir, data_dir):
    assert_printed(markup_run)
    exported = Path(OUT) / f"photos{CLOSING}x"
    assert_printed(run_cli("data", SOURCE, "--data-dir", data_dir, "--no-face-chips", "--test", "4", "--dev", "3",
                           "-P", "4", "-K", "2", "--export", exported), SOURCE, f"photos to {exported}/<identity>/")
    assert_printed(run_cli("prepare", SOURCE, "--data-dir", data_dir, "--no-face-chips"), f"facetrip prepare {SOURCE}")
