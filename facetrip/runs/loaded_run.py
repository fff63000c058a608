"""A loaded run: its model, its metadata, and the path from a user's photo to its model's input.

Every photo reaches the model through :mod:`facetrip.data.model_input`, the path the training
images took: its aligned face chip (for runs on face chips), decoded and resized.
``evaluate``, ``verify``, ``embed``, ``mine``, ``export`` and ``identify`` all load runs with
:meth:`Run.load`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.data.model_input import decode_inputs
from facetrip.runs.layout import RunError
from facetrip.runs.metadata import read_metadata
from facetrip.runs.model_file import load_embedding_model


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

    @property
    def aligned(self) -> str:
        """How the photos of the run's own source were aligned already (``data.aligned``): none, dlib or arcface."""
        return str(self.metadata.get("aligned", "none"))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        metadata = read_metadata(run_dir)  # checks the format before touching the model
        check_backbone_supported(run_dir, metadata.get("backbone", ""))
        return cls(Path(run_dir), load_embedding_model(run_dir), metadata)

    def inputs_of_files(self, paths) -> tuple[np.ndarray, list[int] | None]:
        """Model inputs of photo files, in order, through :mod:`facetrip.data.model_input`.

        Returns:
            ``((N, H, W, C) float32 in [0, 1], faces detected per photo)``; None instead of the
            counts for runs that read whole images.

        Raises:
            ImageReadError: naming the first missing or unreadable file.
        """
        from facetrip.data.model_input import file_inputs

        encoded, faces_detected = file_inputs(paths, self.face_chips)
        return decode_inputs(encoded, self.image_size, self.channels), faces_detected

    def inputs_of_encoded(self, encoded) -> tuple[np.ndarray, list[int] | None]:
        """Model inputs of encoded photos (bytes), as :meth:`inputs_of_files`."""
        from facetrip.data.model_input import encoded_inputs

        prepared, faces_detected = encoded_inputs(encoded, self.face_chips)
        return decode_inputs(prepared, self.image_size, self.channels), faces_detected

    def faces_of_files(self, paths, progress=None):
        """Photo files as the encoded images the model reads, left encoded: an embedding decodes a batch at a time.

        ``progress``, if given, is called as ``progress(done, total)`` after each photo.

        Returns:
            ``(FaceImages, faces detected per photo)``: one unlabelled image per file, in order
            (the face chip for runs on chips); None instead of the counts for runs that read whole images.

        Raises:
            ImageReadError: naming the first missing or unreadable file.
        """
        from facetrip.data import FaceImages
        from facetrip.data.model_input import file_inputs

        encoded, faces_detected = file_inputs(paths, self.face_chips, progress)
        images = np.empty(len(encoded), dtype=object)  # (N,) bytes
        images[:] = encoded
        faces = FaceImages(encoded=images, labels=np.zeros(len(encoded), np.int64), identity_names=["?"],
                           file_names=np.asarray([str(path) for path in paths], dtype=str), channels=3, source="files")
        return faces, faces_detected

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

    def load_faces(self, source: str, data_dir: str | None = None, aligned: str | None = None, progress=None):
        """A source's photos as this run's model reads them, from its prepared set: ``(faces, report)``.

        Args:
            source: a data source name.
            data_dir: where prepared sets live.
            aligned: the source's photos are aligned already (``dlib``, ``arcface``), or ``none``;
                None: the run's own ``data.aligned`` for its own source, ``none`` for another.
            progress: called as ``progress(done, total)`` while the set is prepared (its first
                use); None to log a line at most every 30 s.
        """
        from facetrip.data.records import load_model_faces, logged_progress
        from facetrip.data.sources import is_same_source

        if aligned is None:
            aligned = self.aligned if is_same_source(source, self.metadata["source"]) else "none"

        return load_model_faces(source, data_dir=data_dir, face_chips=self.face_chips, aligned=aligned,
                                progress=progress or logged_progress(f"Preparing {source}"))

    def prepare_faces(self, faces, progress=None):
        """A data set as this run's model reads it (aligned face chips when the run uses them): ``(faces, report)``.

        ``progress``, if given, is called as ``progress(done, total)`` while photos are aligned.
        """
        from facetrip.data.model_input import prepare_faces

        return prepare_faces(faces, self.face_chips, progress)


# Backbones of older facetrip versions that this one cannot run.
_RETIRED_BACKBONES = {
    "dlib_resnet": "the frozen dlib backbone that ran outside TensorFlow, replaced by the native face_resnet",
}


def check_backbone_supported(run_dir, backbone: str) -> None:
    """Raise :class:`RunError` (what to do) when a run's backbone cannot run in this version."""
    if backbone in _RETIRED_BACKBONES:
        raise RunError(f"{run_dir} was trained with {_RETIRED_BACKBONES[backbone]}: train it again with facetrip train.")
