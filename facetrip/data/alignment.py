"""dlib for the rest of the package: imported with a clear message when missing, called on one thread.

The landmark models come from the ``dlib-bin`` (detector, predictor code) and
``face_recognition_models`` (the model files) wheels; nothing is downloaded at run time.
The face network's chips are cut by :mod:`facetrip.data.face_chips` (dlib's own
``get_face_chip``).
"""

from __future__ import annotations

import concurrent.futures
import threading

from facetrip.data.errors import DataError


class AlignmentUnavailableError(DataError):
    """The landmark models (dlib-bin, face_recognition_models) are not installed."""


# Every dlib call runs on this one Python thread. TensorFlow calls ``tf.numpy_function``
# from its own C++ threads, whose Python thread states come and go; dlib's pybind11 binding
# caches a thread state and crashed (segfault in take_gil) when called from them.
_DLIB_THREAD_NAME = "facetrip-dlib"
_DLIB_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=_DLIB_THREAD_NAME)


def import_dlib(what_needs_it: str):
    """``(dlib, face_recognition_models)``, or :class:`AlignmentUnavailableError` saying what to install.

    Args:
        what_needs_it: the start of the error message, e.g. "Face landmarks need".
    """
    try:
        import dlib
        import face_recognition_models
    except ImportError as error:
        raise AlignmentUnavailableError(
            f"{what_needs_it} dlib and its models ({error.name} is missing): pip install dlib-bin face_recognition_models."
        ) from None
    return dlib, face_recognition_models


def on_dlib_thread(function, *args):
    """``function(*args)`` run on facetrip's dlib thread (directly when already on it)."""
    if threading.current_thread().name.startswith(_DLIB_THREAD_NAME):
        return function(*args)
    return _DLIB_THREAD.submit(function, *args).result()
