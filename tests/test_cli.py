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


def test_version_keeps_tensorflow_startup_lines_out_of_stderr():
    result = subprocess.run([sys.executable, "-m", "facetrip.cli", "version"], capture_output=True, text=True)
    assert result.returncode == 0 and "tensorflow" in result.stdout
    assert "oneDNN" not in result.stderr and "cuda" not in result.stderr.lower(), result.stderr
