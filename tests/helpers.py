"""Helpers several test modules share: where the benchmark data lives, and facetrip's rule for bad input."""

import os
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The read-only benchmark sets (LFW, Yale B, CFP) beside the repository; tests that need one
# skip with a reason when it is absent.
SHARED_DATA = Path(os.environ.get("FACETRIP_SHARED_DATA") or REPO.parent / "shared" / "data")


def one_line_error(result, *fragments: str) -> str:
    """Assert a CLI call failed as facetrip's rule says: exit 2, one ``Error:`` line on stderr, no traceback.

    Args:
        result: what :func:`conftest.run_cli` returned (Typer's test runner).
        fragments: texts the line must contain (white space folded).

    Returns:
        The line.
    """
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert " ".join(fragment.split()) in " ".join(lines[0].split()), (fragment, lines[0])
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) -> its kind and, for a plain file, the SHA-256 of its bytes.

    Two digests are equal only when no file was added, removed, replaced or changed byte for byte.
    """
    import hashlib
    import stat

    digest = {}
    for path in sorted(Path(root).rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            digest[str(path.relative_to(root))] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(mode):
            digest[str(path.relative_to(root))] = "link " + os.readlink(path)
        else:
            digest[str(path.relative_to(root))] = "folder" if stat.S_ISDIR(mode) else "other"
    return digest


def call_within(seconds: float, function, fifo: Path):
    """``function()``'s result (or its exception, raised here); the test fails if it is still running after ``seconds``.

    A call stuck opening ``fifo`` is then let go (the FIFO is opened for writing and closed,
    so the reader sees its end) before the test fails, so no thread is left waiting.
    """
    outcome = {}

    def call():
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        deadline = time.monotonic() + seconds
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds once a reader waits
            except OSError:
                time.sleep(0.05)
            thread.join(0.2)
        pytest.fail(f"still waiting on the FIFO {fifo.name} after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def assert_resume_equals_uninterrupted(config, tmp_path) -> None:
    """Train ``config`` twice: once through, once stopped after epoch 1's checkpoint and resumed; assert the two
    runs end with the same weights and the same metrics.csv (every loss)."""
    import keras
    import numpy as np

    from facetrip.runs import load_embedding_model
    from facetrip.training import train

    class Interrupt(Exception):
        pass

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Interrupt

    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    train(config, uninterrupted)
    with pytest.raises(Interrupt):
        train(config, interrupted, callbacks=[StopAfterFirstEpoch()])
    train(config, interrupted, resume=True)
    for mine, theirs in zip(load_embedding_model(interrupted).get_weights(),
                            load_embedding_model(uninterrupted).get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert (interrupted / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()
