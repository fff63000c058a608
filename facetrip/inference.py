"""Using a trained run: embed images, verify a pair of photos.

Every image goes through :func:`facetrip.data.read_image_bytes` and
:func:`facetrip.data.preprocess_encoded`, the path the training images took.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.data.images import is_image_file, preprocess_encoded, read_image_bytes
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

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        metadata = read_metadata(run_dir)  # checks the format before touching the model
        check_backbone_available(metadata.get("backbone", ""))
        return cls(Path(run_dir), load_embedding_model(run_dir), metadata)

    def embed_files(self, paths, batch_size: int = 64) -> np.ndarray:
        """(N, D) embeddings of image files, in order; raises ImageReadError naming a bad file."""
        return self.embed_images(self.preprocess_files(paths), batch_size)

    def preprocess_files(self, paths) -> np.ndarray:
        """(N, H, W, C) model inputs of image files, in order; raises ImageReadError naming a bad file."""
        return self.preprocess_encoded([read_image_bytes(path) for path in paths])

    def preprocess_encoded(self, encoded) -> np.ndarray:
        """(N, H, W, C) model inputs of encoded images (bytes), through :func:`preprocess_encoded`."""
        return np.stack([preprocess_encoded(data, self.image_size, self.channels).numpy() for data in encoded])

    def embed_encoded(self, encoded, batch_size: int = 64) -> np.ndarray:
        """(N, D) embeddings of encoded images (bytes), through :func:`preprocess_encoded`."""
        return self.embed_images(self.preprocess_encoded(encoded), batch_size)

    def embed_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings of preprocessed (N, H, W, C) images in [0, 1]; the model is a black box."""
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0), np.float32)


def check_backbone_available(backbone: str) -> None:
    """Raise :class:`RunError` (what to install) when a run's pretrained backbone cannot run here."""
    from facetrip.model import PRETRAINED_BACKBONES

    if backbone in PRETRAINED_BACKBONES:
        from facetrip.data.alignment import AlignmentUnavailableError
        from facetrip.pretrained import check_available

        try:
            check_available()
        except AlignmentUnavailableError as error:
            raise RunError(str(error)) from None


def distance(first: np.ndarray, second: np.ndarray, metric: str) -> float:
    """d(first, second) for one pair of embeddings under the run's metric."""
    from facetrip.evaluation import pair_distances

    distances, _ = pair_distances(np.stack([first, second]), np.array([0, 1]), metric)
    return float(distances[0])


def verify(run: Run, first_image: str | Path, second_image: str | Path) -> dict[str, Any]:
    """Compare two photos: distance, the run's threshold, and the verdict.

    Returns:
        ``{"distance", "threshold", "same_person", "metric", "run", "images"}``; ``same_person``
        is ``distance <= threshold`` (None when the run has no calibrated threshold). Runs
        with a pretrained backbone that finds faces itself add ``faces_found``: for each
        image, whether dlib's detector found a face (if not, the whole image was used).
    """
    from facetrip.model import PRETRAINED_BACKBONES

    images = run.preprocess_files([first_image, second_image])  # (2, H, W, C)
    first, second = run.embed_images(images)
    value = distance(first, second, run.metadata["metric"])
    threshold = run.metadata.get("threshold")
    result = {
        "images": [str(first_image), str(second_image)],
        "distance": value,
        "threshold": threshold,
        "same_person": None if threshold is None else bool(value <= threshold),
        "metric": run.metadata["metric"],
        "run": str(run.path),
    }
    if run.metadata.get("backbone") in PRETRAINED_BACKBONES:
        from facetrip.pretrained import faces_found

        result["faces_found"] = [bool(found) for found in faces_found(images)]
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


def write_embeddings(output_dir: str | Path, embeddings: np.ndarray, labels, paths) -> dict[str, Path]:
    """embeddings.npy, metadata.tsv (label, path) and a TensorBoard Embedding Projector set-up.

    The projector reads ``output_dir`` as a TensorBoard log dir: a checkpoint of the
    embedding variable, ``projector_config.pbtxt`` and the metadata file; ``tensors.tsv``
    is also written for projector.tensorflow.org.
    """
    import tensorflow as tf
    from tensorboard.plugins import projector

    from facetrip.runs import atomic_write_bytes, atomic_write_text

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    atomic_write_bytes(output_dir / "embeddings.npy", buffer.getvalue())
    rows = ["label\tpath", *(f"{label}\t{path}" for label, path in zip(labels, paths))]
    atomic_write_text(output_dir / "metadata.tsv", "\n".join(rows) + "\n")
    atomic_write_text(output_dir / "tensors.tsv", "\n".join("\t".join(f"{value:.6g}" for value in row) for row in embeddings) + "\n")
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings))
    checkpoint.save(str(output_dir / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(str(output_dir), config)
    return {name: output_dir / name for name in ("embeddings.npy", "metadata.tsv", "tensors.tsv", "projector_config.pbtxt")}
