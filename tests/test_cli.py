import subprocess
import sys
import time

from typer.testing import CliRunner

from facetrip import __version__
from facetrip.cli import app


def test_help_answers_without_importing_tensorflow():
    """`facetrip --help` must not pay TensorFlow's multi-second import."""
    code = "import sys; from facetrip.cli import app; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "facetrip.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "triplet" in result.stdout
    assert elapsed < 5.0  # generous for a loaded CI machine; it takes ~0.3 s here


def test_version_command():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert f"facetrip {__version__}" in result.stdout and "tensorflow" in result.stdout
    import dlib

    assert f"dlib {dlib.__version__}" in result.stdout  # the default backbone's library is installed


def test_version_keeps_tensorflow_startup_lines_out_of_stderr():
    result = subprocess.run([sys.executable, "-m", "facetrip.cli", "version"], capture_output=True, text=True)
    assert result.returncode == 0 and "tensorflow" in result.stdout
    assert "oneDNN" not in result.stderr and "cuda" not in result.stderr.lower(), result.stderr


def test_data_command_summarises_orl(tmp_path):
    result = CliRunner().invoke(app, ["data", "orl_faces", "--data-dir", str(tmp_path), "-P", "8"])
    assert result.exit_code == 0, result.output
    assert "400" in result.stdout and "40 (40 with two or more images)" in result.stdout
    assert "train 25, dev 5, test 10" in result.stdout
    assert "400 photos aligned" in " ".join(result.stdout.split())  # the face chips training would get


def test_bad_data_source_gives_one_line_and_exit_code_2(tmp_path):
    """No traceback: one sentence on stderr saying what to change."""
    for arguments, expected in (
        (["data", f"folder:{tmp_path / 'missing'}"], "does not exist"),
        (["data", f"folder:{tmp_path}"], "no images in the expected layout"),
        (["data", "orl_faces", "--data-dir", str(tmp_path), "-P", "30"], "lower -P"),
        (["data", f"folder:{tmp_path / 'faces [/] [bold]x'}"], "faces [/] [bold]x does not exist"),  # not markup
    ):
        result = subprocess.run([sys.executable, "-m", "facetrip.cli", *arguments], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2, result.stderr


def test_without_a_terminal_training_logs_the_first_and_last_epoch_and_then_every_so_often(monkeypatch):
    """In a log there is no live bar: 10 epochs at a 30 s interval, all within a second, give 2 lines;
    with an interval of 0 every epoch gets its line."""
    import io

    from rich.console import Console

    import facetrip.cli.train as cli

    def epoch_lines(interval: float) -> list[str]:
        log = io.StringIO()
        monkeypatch.setattr(cli, "console", Console(file=log, force_terminal=False, width=200))
        callback = cli.rich_progress_callback(10, log_line_seconds=interval)
        callback.set_params({"steps": 3})
        callback.on_train_begin()
        for epoch in range(10):
            callback.on_epoch_begin(epoch)
            for step in range(3):
                callback.on_train_batch_end(step, {"loss": 0.5})
            callback.on_epoch_end(epoch, {"loss": 0.5, "fraction_positive_triplets": 0.1})
        callback.on_train_end()
        assert callback.progress is None  # no live bar in a log
        return [line for line in log.getvalue().splitlines() if line.startswith("epoch")]

    assert [line.split()[1] for line in epoch_lines(30.0)] == ["1/10", "10/10"]
    assert len(epoch_lines(0.0)) == 10


def test_version_flag_prints_the_versions():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"facetrip {__version__} ") and "tensorflow" in result.output


def test_every_command_takes_the_run_as_an_argument_or_as_run(finished_run, tmp_path, data_dir):
    """`mine RUN` and `mine --run RUN` write the same triplets; `export --run RUN` works; two different runs are refused."""
    import numpy as np

    run_dir, _ = finished_run
    outputs = []
    for form in ([str(run_dir)], ["--run", str(run_dir)]):
        output = tmp_path / f"triplets-{len(outputs)}.npz"
        result = CliRunner().invoke(app, ["mine", *form, "--offline", "--data-dir", data_dir, "-o", str(output)])
        assert result.exit_code == 0, result.output
        outputs.append(dict(np.load(output)))
    assert outputs[0].keys() == outputs[1].keys()
    for key in outputs[0]:
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    result = CliRunner().invoke(app, ["export", "--run", str(run_dir), "--format", "savedmodel", "-o", str(tmp_path / "served")])
    assert result.exit_code == 0, result.output
    for command in (["evaluate", str(run_dir), "--run", str(tmp_path)], ["mine", str(run_dir), "--run", str(tmp_path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "Two runs given" in result.output


def test_photos_are_named_by_their_path_within_the_folder_given(tmp_path):
    """``04.jpg`` says nothing in CFP's layout: a photo is named within the innermost folder given that holds it."""
    import os
    from pathlib import Path

    from facetrip.cli.core import shown_path

    frontal = tmp_path / "cfp" / "001" / "frontal"
    frontal.mkdir(parents=True)
    photo = frontal / "04.jpg"
    assert shown_path(photo, [tmp_path / "cfp"]) == "001/frontal/04.jpg"
    assert shown_path(photo, [tmp_path, tmp_path / "cfp"]) == "001/frontal/04.jpg"
    assert shown_path(photo, [tmp_path / "elsewhere", photo]) == str(photo)  # a file given: named as given
    assert shown_path(Path("photos") / "a.jpg") == "photos/a.jpg"
    assert shown_path(frontal / os.fsdecode(b"n\xe9.jpg"), [frontal]) == "n\\xe9.jpg"  # not UTF-8: escaped


def test_a_command_turns_the_errors_it_lists_into_one_line_and_its_exit_code(capsys):
    """`maps_errors` names each error as "module:Name", read only when an exception reaches the command."""
    import inspect
    import pkgutil

    import pytest
    import typer

    import facetrip.cli
    from facetrip.cli.core import error_classes, maps_errors
    from facetrip.runs import RunError

    @maps_errors("facetrip.runs:RunError", KeyError, code=3)
    def command(error: Exception, flag: int = 1) -> None:
        """A command."""
        raise error

    assert inspect.signature(command) == inspect.signature(command.__wrapped__)  # what Typer reads
    with pytest.raises(typer.Exit) as ended:
        command(RunError("runs/x [bold] is not a run."))
    assert ended.value.exit_code == 3
    assert capsys.readouterr().err.strip() == "Error: runs/x [bold] is not a run."
    with pytest.raises(ValueError):  # not listed: passed on as it is
        command(ValueError("a bug"))

    modules = [facetrip.cli.core] + [__import__(f"facetrip.cli.{name}", fromlist=["_"])
                                     for _, name, _ in pkgutil.iter_modules(facetrip.cli.__path__)]
    mapped = {function.__name__: function.mapped_errors for module in modules for function in vars(module).values()
              if hasattr(function, "mapped_errors")}
    assert {"train", "evaluate", "verify", "identify", "_load_run"} <= mapped.keys()
    for errors in mapped.values():  # every name names an exception class
        assert all(issubclass(error, Exception) for error in error_classes(errors))
