"""The one way to embed images with a model, and to write embeddings out for users.

    faces (encoded photos, as :mod:`facetrip.data.model_input` prepares them)
        -> tf.data decode + resize -> model.predict -> (N, D) float32 embeddings

Training (the centres of the classification term, offline mining), the threshold
calibration, ``evaluate``, ``mine`` and ``embed`` all embed through :func:`embed_faces`;
a loaded run (:class:`facetrip.runs.loaded_run.Run`) embeds a user's photo files through the
same model-input path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from facetrip.data.images import is_image_file


def embed_faces(model, faces, image_size, channels, batch_size: int = 128):
    """(N, D) float32 embeddings of every image of ``faces``, in order, through the tf.data input pipeline.

    Args:
        model: a Keras model from (B, H, W, C) images in [0, 1] to (B, D) embeddings.
        faces: :class:`~facetrip.data.FaceImages` of encoded photos (face chips, when the model reads them).
        image_size: (height, width) of the model's input.
        channels: 1 (grey) or 3 (RGB).
        batch_size: images per predict batch.

    Returns:
        (N, D) float32 array, row i the embedding of ``faces.encoded[i]``.
    """
    from facetrip.data import image_dataset

    dataset = image_dataset(faces, tuple(image_size), channels, batch_size=batch_size).map(lambda images, labels: images)
    return np.asarray(model.predict(dataset, verbose=0), np.float32)


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
