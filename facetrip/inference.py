"""Using a trained run: embed images, verify a pair of photos.

Every photo reaches the model through :mod:`facetrip.model_input`, the path the training
images took: its aligned face chip (for runs on face chips), decoded and resized.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.data.images import is_image_file
from facetrip.model_input import decode_inputs
from facetrip.runs import RunError, load_embedding_model, read_metadata


@dataclasses.dataclass
class Run:
    """A loaded run: its directory, model and metadata."""

    path: Path
    model: Any
    metadata: dict

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["image_size"])

    @property
    def channels(self) -> int:
        return int(self.metadata["channels"])

    @property
    def face_chips(self) -> bool:
        """Whether the model reads aligned face chips (runs that predate them read whole images)."""
        return bool(self.metadata.get("face_chips", False))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        metadata = read_metadata(run_dir)  # checks the format before touching the model
        check_backbone_supported(run_dir, metadata.get("backbone", ""))
        return cls(Path(run_dir), load_embedding_model(run_dir), metadata)

    def inputs_of_files(self, paths) -> tuple[np.ndarray, list[int] | None]:
        """Model inputs of photo files, in order, through :mod:`facetrip.model_input`.

        Returns:
            ``((N, H, W, C) float32 in [0, 1], faces detected per photo)``; None instead of the
            counts for runs that read whole images.

        Raises:
            ImageReadError: naming the first missing or unreadable file.
        """
        from facetrip.model_input import file_inputs

        encoded, faces_detected = file_inputs(paths, self.face_chips)
        return decode_inputs(encoded, self.image_size, self.channels), faces_detected

    def inputs_of_encoded(self, encoded) -> tuple[np.ndarray, list[int] | None]:
        """Model inputs of encoded photos (bytes), as :meth:`inputs_of_files`."""
        from facetrip.model_input import encoded_inputs

        prepared, faces_detected = encoded_inputs(encoded, self.face_chips)
        return decode_inputs(prepared, self.image_size, self.channels), faces_detected

    def preprocess_files(self, paths) -> np.ndarray:
        """(N, H, W, C) model inputs of image files, in order; raises ImageReadError naming a bad file."""
        return self.inputs_of_files(paths)[0]

    def embed_files(self, paths, batch_size: int = 64) -> np.ndarray:
        """(N, D) embeddings of image files, in order; raises ImageReadError naming a bad file."""
        return self.embed_images(self.preprocess_files(paths), batch_size)

    def embed_encoded(self, encoded, batch_size: int = 64) -> np.ndarray:
        """(N, D) embeddings of encoded photos (bytes)."""
        return self.embed_images(self.inputs_of_encoded(encoded)[0], batch_size)

    def embed_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings of model inputs (N, H, W, C) in [0, 1]; the model is a black box."""
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0), np.float32)

    def prepare_faces(self, faces):
        """A data set as this run's model reads it (aligned face chips when the run uses them): ``(faces, report)``."""
        from facetrip.model_input import prepare_faces

        return prepare_faces(faces, self.face_chips)


# Backbones of older facetrip versions that this one cannot run.
_RETIRED_BACKBONES = {
    "dlib_resnet": "the frozen dlib backbone that ran outside TensorFlow, replaced by the native face_resnet",
}


def check_backbone_supported(run_dir, backbone: str) -> None:
    """Raise :class:`RunError` (what to do) when a run's backbone cannot run in this version."""
    if backbone in _RETIRED_BACKBONES:
        raise RunError(f"{run_dir} was trained with {_RETIRED_BACKBONES[backbone]}: train it again with facetrip train.")


def distance(first: np.ndarray, second: np.ndarray, metric: str) -> float:
    """d(first, second) for one pair of embeddings under the run's metric."""
    from facetrip.evaluation import pair_distances

    distances, _ = pair_distances(np.stack([first, second]), np.array([0, 1]), metric)
    return float(distances[0])


def verify(run: Run, first_image: str | Path, second_image: str | Path, threshold: float | None = None,
           far: float | None = None) -> dict[str, Any]:
    """Compare two photos: distance, the threshold, and the verdict.

    Args:
        run: the loaded run.
        first_image, second_image: photo files.
        threshold: decide with this threshold instead of the run's.
        far: decide with the threshold for this false accept rate on the run's saved
            calibration distances (:func:`facetrip.calibration.verification_threshold`).

    Returns:
        ``{"distance", "threshold", "threshold_rule", "same_person", "metric", "run", "images"}``;
        ``same_person`` is ``distance <= threshold`` (None when there is no threshold) and
        ``threshold_rule`` says how the threshold was chosen. Runs
        on face chips add ``faces_detected`` (faces the detector found in each photo: 0 means
        the whole photo was used as the face, 2 or more that the one at the centre, else the
        largest, was used) and
        ``faces_found`` (at least one).

    Raises:
        CalibrationError: both ``threshold`` and ``far``, ``far`` outside (0, 1), or ``far``
            for a run that saved no calibration distances.
    """
    from facetrip.evaluation.calibration import verification_threshold

    threshold, threshold_rule = verification_threshold(run.metadata, threshold, far)  # before any image is embedded
    images, faces_detected = run.inputs_of_files([first_image, second_image])  # (2, H, W, C)
    first, second = run.embed_images(images)
    value = distance(first, second, run.metadata["metric"])
    result = {
        "images": [str(first_image), str(second_image)],
        "distance": value,
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "same_person": None if threshold is None else bool(value <= threshold),
        "metric": run.metadata["metric"],
        "run": str(run.path),
    }
    if run.face_chips:
        result["faces_detected"] = [int(count) for count in faces_detected]
        result["faces_found"] = [count > 0 for count in faces_detected]
    return result


def collect_images(inputs) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (recursively); the label is the parent folder's name."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(path for path in item.rglob("*") if path.is_file() and is_image_file(path)))
        else:
            paths.append(item)
    return paths, [path.parent.name for path in paths]


def write_embeddings(output_dir: str | Path, embeddings: np.ndarray, labels, paths, faces_detected=None) -> dict[str, Path]:
    """embeddings.npy, metadata.tsv (label, path[, faces detected]) and a TensorBoard Embedding Projector set-up.

    The projector reads ``output_dir`` as a TensorBoard log dir: a checkpoint of the
    embedding variable, ``projector_config.pbtxt`` and the metadata file; ``tensors.tsv``
    is also written for projector.tensorflow.org.

    metadata.tsv has one row per embedding, each with the header's number of fields, what
    the names hold: in labels and paths a backslash is written ``\\\\``, a tab ``\\t``, a
    newline ``\\n``, a carriage return ``\\r``, other control and line-separating characters
    ``\\xHH`` / ``\\uHHHH``, and each byte of a file name that is not UTF-8 ``\\xHH``.
    Every file's content is built before the first is written, so a name that cannot be
    written leaves no half-written output.

    Args:
        output_dir: the folder to write into (created if missing).
        embeddings: (N, D) float32 embeddings.
        labels: (N,) label of each embedding (its folder or identity name).
        paths: (N,) the file each embedding came from.
        faces_detected: (N,) faces found in each photo, or None (no column).

    Returns:
        ``{file name: path}`` of embeddings.npy, metadata.tsv, tensors.tsv and projector_config.pbtxt.
    """
    import re

    import tensorflow as tf
    from tensorboard.plugins import projector

    from facetrip.runs import atomic_write_bytes

    short_escapes = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    # What a TSV reader could take for a field or row end: the projector splits on tab and
    # newline, Python's str.splitlines() on \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029 too;
    # lone surrogates are the bytes of names that are not UTF-8 (Python's surrogateescape).
    needs_escape = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

    def escaped(match: re.Match) -> str:
        character = match.group()
        if character in short_escapes:
            return short_escapes[character]
        if "\udc80" <= character <= "\udcff":  # the byte 0x80-0xff that was not UTF-8
            return f"\\x{ord(character) - 0xDC00:02x}"
        return f"\\x{ord(character):02x}" if ord(character) <= 0xFF else f"\\u{ord(character):04x}"

    def field(value) -> str:
        return needs_escape.sub(escaped, str(value))

    if faces_detected is None:
        rows = ["label\tpath", *(f"{field(label)}\t{field(path)}" for label, path in zip(labels, paths))]
    else:
        rows = ["label\tpath\tfaces_detected",
                *(f"{field(label)}\t{field(path)}\t{int(count)}" for label, path, count in zip(labels, paths, faces_detected))]
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    contents = {
        "embeddings.npy": buffer.getvalue(),
        "metadata.tsv": ("\n".join(rows) + "\n").encode("utf-8"),
        "tensors.tsv": ("\n".join("\t".join(f"{value:.6g}" for value in row) for row in embeddings) + "\n").encode("utf-8"),
    }

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        atomic_write_bytes(output_dir / name, content)
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings))
    checkpoint.save(str(output_dir / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(str(output_dir), config)
    return {name: output_dir / name for name in ("embeddings.npy", "metadata.tsv", "tensors.tsv", "projector_config.pbtxt")}
