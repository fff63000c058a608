"""Export a run's embedding model for serving: a TensorFlow SavedModel or a TFLite model.

Both take what :mod:`facetrip.data.model_input` makes of a photo, as 8-bit pixels, and return
unit embeddings:

    serve(images: uint8 (B, H, W, C)) -> {"embeddings": float32 (B, D)}, each row of norm 1

For runs on face chips (the default) ``(H, W, C) = (150, 150, 3)``: the aligned face chip
that :func:`facetrip.data.face_chips.chip_from_file` (a file) or
:func:`~facetrip.data.face_chips.chip_from_pixels` (an RGB array) cuts: dlib's HOG face
detector on the photo at its own resolution (longer side scaled into the range the
detector needs), dlib's 5 landmarks on the largest face, then ``dlib.get_face_chip`` with
size 150 and padding 0.25. A server must cut chips the same way, ideally by calling that
function; ``export.json`` beside the model names the alignment version, the input, the
distance and the run's calibrated threshold. Test-time augmentation (the mirror image) is
inside the exported model, as in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facetrip.runs.output_folder import CommandOutput, check_output_folder

FORMATS = ("savedmodel", "tflite")
EXPORT_INFO_FILE = "export.json"
EXPORT_OUTPUT = CommandOutput("facetrip export", ("savedmodel", "model.tflite", EXPORT_INFO_FILE))


class ExportError(ValueError):
    """A run or format that cannot be exported: one line saying why."""


def serving_model(model, image_size: tuple[int, int], channels: int):
    """A Keras model from uint8 images (B, H, W, C) to (B, D) float32 unit embeddings: ``model(images / 255)``."""
    import keras

    images = keras.Input(shape=(*image_size, channels), dtype="uint8", name="images")
    inputs = keras.layers.Rescaling(1.0 / 255.0, dtype="float32", name="to_unit_range")(images)  # (B, H, W, C) in [0, 1]
    embeddings = keras.layers.Activation("linear", dtype="float32", name="embeddings")(model(inputs))  # (B, D)
    return keras.Model(images, embeddings, name="facetrip_serving")


def serving_function(model, image_size: tuple[int, int], channels: int):
    """A tf.function from uint8 images (B, H, W, C) to ``{"embeddings": (B, D) float32}``, for the SavedModel."""
    import tensorflow as tf

    serving = serving_model(model, image_size, channels)

    @tf.function(input_signature=[tf.TensorSpec([None, *image_size, channels], tf.uint8, name="images")])
    def serve(images):
        return {"embeddings": serving(images, training=False)}

    return serving, serve


def export_run(run_dir: str | Path, export_format: str = "savedmodel", output: str | Path | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Write the run's model in a serving format, with ``export.json`` describing its input.

    The folder is checked before anything else (:func:`facetrip.runs.check_output_folder`):
    new or empty, or an earlier export's with ``overwrite``. An earlier export's files that
    this one does not write again are removed, the plain files its record lists only: a
    ``savedmodel/`` folder of an earlier export stays (and stays the export's).

    Args:
        run_dir: a finished run directory.
        export_format: ``savedmodel`` (a folder) or ``tflite`` (one ``model.tflite`` file).
        output: the folder to write into (default ``RUN/export-FORMAT``).
        overwrite: replace an earlier export in the folder, or write beside files of other names there.

    Returns:
        What ``export.json`` holds, plus ``path`` (the model written).

    Raises:
        ExportError, RunError, OutputFolderError: one line saying what is wrong.
    """
    import tensorflow as tf

    from facetrip.runs.loaded_run import Run
    from facetrip.runs import atomic_write_bytes, atomic_write_json
    from facetrip.tf_runtime import quiet_tensorflow

    if export_format not in FORMATS:
        raise ExportError(f"Unknown export format {export_format!r}: choose one of {', '.join(FORMATS)}.")
    target = Path(output) if output is not None else Path(run_dir) / f"export-{export_format}"
    folder = check_output_folder(target, EXPORT_OUTPUT, overwrite)  # before anything is loaded or written
    run = Run.load(run_dir)
    serving, serve = serving_function(run.model, run.image_size, run.channels)
    if export_format == "tflite":
        # Converted from the Keras model: converting the SavedModel's tf.function gave NaN
        # embeddings in TF 2.21's converter, the Keras graph converts exactly (1e-7).
        model_path = target / "model.tflite"
        with quiet_tensorflow():  # the converter prints the graph's captures and its C++ notes
            converted = tf.lite.TFLiteConverter.from_keras_model(serving).convert()
        folder.claim([model_path.name, EXPORT_INFO_FILE])
        atomic_write_bytes(model_path, converted)
    else:
        module = tf.Module()
        module.serving = serving  # tracks the weights
        module.serve = serve
        model_path = target / "savedmodel"
        folder.claim([model_path.name, EXPORT_INFO_FILE])
        with quiet_tensorflow():
            tf.saved_model.save(module, str(model_path), signatures={"serving_default": serve})
    metadata = run.metadata
    info = {
        "format": export_format,
        "model": model_path.name,
        "signature": "serving_default",
        "input": {"name": "images", "dtype": "uint8", "shape": [None, *run.image_size, run.channels],
                  "what": ("aligned face chips (facetrip.data.face_chips.chip_from_file)" if run.face_chips
                           else "whole photos resized to the input size (antialiased), grey or RGB as channels says")},
        "output": {"name": "embeddings", "dtype": "float32", "shape": [None, metadata.get("embedding_dim")],
                   "norm": "L2-normalised"},
        "chip": metadata.get("chip"),
        "metric": metadata.get("metric"),
        "threshold": metadata.get("threshold"),
        "flip_tta": metadata.get("flip_tta"),
        "run": str(run_dir),
        "facetrip_version": metadata.get("facetrip_version"),
    }
    atomic_write_json(target / EXPORT_INFO_FILE, info)
    folder.finish()
    return {**info, "path": str(model_path)}
