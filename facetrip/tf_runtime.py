"""Importing TensorFlow quietly.

`import tensorflow` prints C++ start-up lines (oneDNN notice, missing CUDA drivers,
cuInit failures) straight to file descriptor 2, before TensorFlow's own log level
applies. Commands call :func:`import_tensorflow` so users see their results, not that.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys


@contextlib.contextmanager
def silenced_stderr():
    """Point file descriptor 2 at /dev/null for the duration (no-op where it has no descriptor)."""
    with _silenced_descriptor(sys.stderr):
        yield


@contextlib.contextmanager
def _silenced_descriptor(stream):
    """Point ``stream``'s file descriptor at /dev/null for the duration (no-op where it has none)."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        yield
        return
    stream.flush()
    saved = os.dup(descriptor)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
        yield
    finally:
        os.dup2(saved, descriptor)
        os.close(devnull)
        os.close(saved)


def is_verbose() -> bool:
    """Whether ``facetrip --verbose`` asked for TensorFlow's own output."""
    return os.environ.get(VERBOSE_VARIABLE) == "1"


@contextlib.contextmanager
def quiet_tensorflow():
    """Hide what TensorFlow prints while it works (converter and SavedModel chatter on stdout and stderr).

    Python's ``print`` output goes to a buffer, and file descriptors 1 and 2 (where its C++
    code writes) to /dev/null, for the duration; with ``--verbose`` everything is shown.
    """
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), _silenced_descriptor(sys.__stdout__), silenced_stderr():
        yield


# Set by `facetrip --verbose`: TensorFlow's lines are shown, not hidden.
VERBOSE_VARIABLE = "FACETRIP_VERBOSE"


def show_tensorflow_logs() -> None:
    """Let TensorFlow's start-up and C++ log lines through, for this process and its children (``--verbose``)."""
    os.environ[VERBOSE_VARIABLE] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")


def import_tensorflow():
    """Import TensorFlow with its start-up chatter hidden (unless ``--verbose``); returns the module.

    Python exceptions still propagate (and are shown) once stderr is restored.
    """
    verbose = is_verbose()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with contextlib.nullcontext() if verbose else silenced_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs its own CUDA lines
    if not verbose:  # its Python warnings too (tf.function retracing notes, deprecations)
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    return tf
