"""facetrip: triplet-loss face embeddings.

From Python (:mod:`facetrip.python_api`)::

    import facetrip

    run = facetrip.load_run("runs/tour")
    run.embed(photos), run.verify(photo1, photo2), run.identify(photos, "people.idx"), run.threshold
    facetrip.train("configs/scratch.toml", "runs/scratch")

``import facetrip`` imports neither the Python API nor TensorFlow: the API's names are
imported on first use, and TensorFlow when a run is loaded or trained.
"""

__version__ = "0.1.0"

# The names of facetrip.python_api that facetrip itself offers.
_PYTHON_API = ("Identification", "Match", "TrainedRun", "Verification", "load_run", "train")

__all__ = ["__version__", *_PYTHON_API]


def __getattr__(name: str):
    """``facetrip.load_run`` and the other names of :mod:`facetrip.python_api`, imported on first use.

    The package sits on the lowest floor, since every module reads ``__version__``; the API
    it offers sits on the top one, so it is imported only here, by name, when first asked for.
    """
    if name in _PYTHON_API:
        import importlib

        value = getattr(importlib.import_module("facetrip.python_api"), name)
        globals()[name] = value  # asked once
        return value
    raise AttributeError(f"module 'facetrip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PYTHON_API})
