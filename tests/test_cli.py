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
    ):
        result = subprocess.run([sys.executable, "-m", "facetrip.cli", *arguments], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2, result.stderr
