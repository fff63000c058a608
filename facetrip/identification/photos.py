"""Photos in, embeddings out: the one bridge between identification and a loaded run.

Every photo reaches the model as training images did (:meth:`facetrip.runs.loaded_run.Run.prepare_faces`:
aligned face chips for runs on chips, in worker processes for many photos, cached), and is
embedded in batches (:func:`facetrip.embedding.embed_faces`), so a gallery of thousands of
photos never sits in memory as decoded images; `index` writes the embeddings of a gallery to
a memory-mapped file a batch at a time (:func:`facetrip.embedding.embed_faces_to_file`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from facetrip.identification.index import WHOLE_IMAGE


@dataclasses.dataclass
class Photos:
    """Photos read from files or a data source, still encoded.

    Attributes:
        faces: :class:`~facetrip.data.FaceImages` (labels: the person, or 0 for unlabelled photos).
        skipped: ``(file, reason)`` of each file that could not be read.
    """

    faces: object
    skipped: list[tuple[str, str]]


@dataclasses.dataclass
class Embedded:
    """Photos as the model saw them, and their embeddings.

    Attributes:
        embeddings: (N, D) float32.
        faces_detected: (N,) int64 faces found on each photo; :data:`WHOLE_IMAGE` for runs without face chips.
        model_images: (N,) the encoded images the model read (the face chips, or the photos).
    """

    embeddings: np.ndarray
    faces_detected: np.ndarray
    model_images: np.ndarray

    @property
    def face_found(self) -> np.ndarray:
        """(N,) bool: a face was found (always True for runs that read whole images)."""
        return self.faces_detected != 0


def image_files(inputs) -> list[Path]:
    """The image files among files and folders (folders searched recursively, sorted), in order, each once."""
    from facetrip.embedding import collect_images

    paths, _ = collect_images(inputs)
    seen, unique = set(), []
    for path in paths:
        if path not in seen:
            seen.add(path)
            unique.append(path)
    return unique


def read_files(paths, labels, identity_names: list[str], source: str, skip_unreadable: bool, progress=None) -> Photos:
    """Photo files as encoded :class:`~facetrip.data.FaceImages`.

    Args:
        paths: the files.
        labels: (N,) int label of each.
        identity_names: name of each label.
        source: what to call the set.
        skip_unreadable: leave out (and list) files that cannot be read; else raise on the first.
        progress: called as ``progress(done, total)`` after each file, or None.

    Raises:
        ImageReadError: a file cannot be read, and ``skip_unreadable`` is off.
    """
    from facetrip.data import FaceImages, ImageReadError, read_image_bytes

    paths = list(paths)
    encoded, kept_labels, names, skipped = [], [], [], []
    for path, label in zip(paths, labels):
        try:
            data = read_image_bytes(path)  # checked: bytes TensorFlow decodes as PIL did
        except ImageReadError as error:
            if not skip_unreadable:
                raise
            skipped.append((str(path), str(error)))
        else:
            encoded.append(data)
            kept_labels.append(int(label))
            names.append(str(path))
        if progress is not None:
            progress(len(encoded) + len(skipped), len(paths))
    encoded_array = np.empty(len(encoded), dtype=object)
    encoded_array[:] = encoded
    faces = FaceImages(encoded=encoded_array, labels=np.asarray(kept_labels, np.int64), identity_names=list(identity_names),
                       file_names=np.asarray(names, dtype=str), channels=3, source=source)
    return Photos(faces, skipped)


def gallery_photos(gallery: str, data_dir: str | None = None, run=None, progress=None) -> Photos:
    """The photos of known people: ``GALLERY/<person>/<photo>`` read from disk, or any data source spec.

    A folder (or ``folder:PATH``) is read file by file, each photo named by its path; other
    sources (``orl_faces``, ``rec:PATH``, ``tfds:NAME``) come from their prepared set, as
    ``run``'s model reads them (:meth:`facetrip.runs.loaded_run.Run.load_faces`), or as
    they are when no run is given. ``progress(done, total)``, if given, is told of the files
    read, or of the photos prepared when the source's set is prepared now.

    Raises:
        DataError: an unknown source, or a folder without ``<person>/<photo>`` images.
    """
    from facetrip.data import load_faces, parse_source

    spec = parse_source(gallery)
    if spec.kind != "folder":
        if run is not None:
            return Photos(run.load_faces(gallery, data_dir, progress=progress)[0], [])
        return Photos(load_faces(gallery, data_dir=data_dir), [])
    from facetrip.data.folder import list_identity_images

    root = Path(spec.name).expanduser()
    people = list_identity_images(root)
    names = list(people)
    paths = [path.resolve() for name in names for path in people[name]]
    labels = [label for label, name in enumerate(names) for _ in people[name]]
    return read_files(paths, labels, names, f"folder:{root}", skip_unreadable=True, progress=progress)


def unlabelled_photos(inputs, skip_unreadable: bool, outside: str | Path | None = None, progress=None) -> Photos:
    """Photo files and folders (recursively) as one unlabelled set, files named by their absolute path.

    Files inside the folder ``outside`` are left out; ``progress`` as :func:`read_files`'.
    """
    paths = [path.resolve() for path in image_files(inputs)]
    if outside is not None:
        excluded = Path(outside).resolve()
        paths = [path for path in paths if excluded not in path.parents]
    return read_files(paths, [0] * len(paths), ["?"], "photos", skip_unreadable, progress)


def embed_photos(run, faces, on_stage=None, embeddings_path: str | Path | None = None, progress=None) -> Embedded:
    """Embeddings of photos with a run's model, through the run's own photo path.

    Args:
        run: a loaded :class:`facetrip.runs.loaded_run.Run`.
        faces: :class:`~facetrip.data.FaceImages` of encoded photos.
        on_stage: called with a short message as each stage starts, or None.
        embeddings_path: a ``.npy`` file to write the embeddings to a batch at a time
            (:func:`facetrip.embedding.embed_faces_to_file`), for a gallery of any size; None
            to gather them in memory.
        progress: called as ``progress(done, total)`` while photos are aligned, then while
            they are embedded (each stage told by ``on_stage`` first), or None.

    Returns:
        :class:`Embedded`, in the order of ``faces``; its embeddings memory-mapped from
        ``embeddings_path`` when one is given.
    """
    from facetrip.embedding import embed_faces, embed_faces_to_file

    if on_stage is not None and run.face_chips:
        on_stage(f"Aligning the faces of {len(faces):,} photos ...")
    prepared, report = run.prepare_faces(faces, progress)
    if report is None:
        faces_detected = np.full(len(faces), WHOLE_IMAGE, np.int64)
    elif prepared.model_input is not None:  # from a prepared set's index, nothing decoded
        faces_detected = np.maximum(prepared.encoded.prepared.faces_detected[prepared.encoded.positions], 0).astype(np.int64)
    else:
        from facetrip.data.chip_png import faces_detected_in

        faces_detected = np.asarray([faces_detected_in(png) for png in prepared.encoded], np.int64)
    if on_stage is not None:
        on_stage(f"Embedding {len(faces):,} photos ...")
    if embeddings_path is not None:
        embeddings = embed_faces_to_file(run.model, prepared, run.image_size, run.channels, embeddings_path,
                                         progress=progress)  # (N, D) memmap
    elif len(prepared):
        embeddings = np.asarray(embed_faces(run.model, prepared, run.image_size, run.channels, progress=progress), np.float32)
    else:
        embeddings = np.zeros((0, int(run.model.output_shape[-1])), np.float32)
    return Embedded(embeddings, faces_detected, prepared.encoded)
