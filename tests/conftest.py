"""Shared test set-up: quiet TensorFlow, make `tests/reference.py` importable, seeded data."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# dlib descriptors cached on disk go to a fresh folder per test session, not ~/.cache
os.environ["FACETRIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="facetrip-test-cache-")
# and their keyed tags use a key of the session's own, not the user's ~/.config/facetrip/cache.key
os.environ["FACETRIP_CACHE_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="facetrip-test-key-"), "cache.key")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

METRICS = ("euclidean", "squared", "cosine")
MARGINS = (0.0, 0.2, 0.5, "soft")


def pk_labels(num_identities: int, images_per_identity: int) -> np.ndarray:
    return np.repeat(np.arange(num_identities), images_per_identity)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds storage folder for the whole session (ORL is prepared once)."""
    return str(tmp_path_factory.mktemp("tfds"))


REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "tiny.toml")


def run_cli(*arguments):
    """Invoke the facetrip CLI in-process (Typer's test runner)."""
    from typer.testing import CliRunner

    from facetrip.cli import app

    return CliRunner().invoke(app, [str(argument) for argument in arguments])


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir):
    """A tiny batch_all run trained once per session: (run_dir, the command's output)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli("train", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--strategy", "batch_all")
    assert result.exit_code == 0, result.output
    return run_dir, result.output


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory, data_dir):
    """The pretrained face network as a run: chips of ORL, no training, threshold calibrated on ORL's dev people."""
    run_dir = tmp_path_factory.mktemp("runs") / "pretrained"
    result = run_cli("train", "--epochs", "0", "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty face-chip cache folder and an empty memo; yields the cache root."""
    from facetrip.data import chip_cache

    monkeypatch.setenv("FACETRIP_CACHE_DIR", str(tmp_path / "cache"))
    chip_cache._memo.clear()
    yield tmp_path / "cache"
    chip_cache._memo.clear()


@pytest.fixture
def detector_calls(monkeypatch):
    """Counts how often the face detector runs in this process."""
    from facetrip.data import face_detection

    calls = []
    detect = face_detection._detect_faces

    def counting(rgb):
        calls.append(rgb.shape)
        return detect(rgb)

    monkeypatch.setattr(face_detection, "_detect_faces", counting)
    return calls
