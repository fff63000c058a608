"""Importing TensorFlow quietly.

`import tensorflow` prints C++ start-up lines (oneDNN notice, missing CUDA drivers,
cuInit failures) straight to file descriptor 2, before TensorFlow's own log level
applies. Commands call :func:`import_tensorflow` so users see their results, not that.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def silenced_stderr():
    """Point file descriptor 2 at /dev/null for the duration (no-op where it has no descriptor)."""
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(descriptor)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
        yield
    finally:
        os.dup2(saved, descriptor)
        os.close(devnull)
        os.close(saved)


def import_tensorflow():
    """Import TensorFlow with its start-up chatter hidden; returns the module.

    Python exceptions still propagate (and are shown) once stderr is restored.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with silenced_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs its own CUDA lines
    return tf
