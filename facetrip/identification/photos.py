"""Photos in, embeddings out: the one bridge between identification and a loaded run.

Every photo reaches the model as training images did (:meth:`facetrip.runs.loaded_run.Run.prepare_faces`:
aligned face chips for runs on chips, in worker processes for many photos, cached), and is
embedded in batches (:func:`facetrip.embedding.embed_faces`), so a gallery of thousands of
photos never sits in memory as decoded images. `index` goes further (:func:`embed_gallery`):
a gallery folder is read, aligned and embedded a batch of photos at a time
(:data:`GALLERY_BATCH_PHOTOS`, :data:`GALLERY_BATCH_BYTES`), its embeddings written to a
memory-mapped file as they come, so that no more photos' bytes than one batch's are held at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from facetrip.identification.index import WHOLE_IMAGE

# A gallery folder is read, aligned and embedded this many photos at a time (a whole number of
# the embedding's batches of 128) ...
GALLERY_BATCH_PHOTOS = 512
# ... and, past a batch's first photo, at most this many bytes of photos at a time (64 phone
# photos of 4 MB): the photos' bytes held at once, whatever the gallery's size.
GALLERY_BATCH_BYTES = 256 << 20


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
        model_images: (N,) the encoded images the model read (the face chips, or the photos); None
            where they were not kept (a gallery embedded a batch at a time).
    """

    embeddings: np.ndarray
    faces_detected: np.ndarray
    model_images: np.ndarray | None

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
    """Photo files as encoded :class:`~facetrip.data.FaceImages`: the bytes TensorFlow decodes as PIL did.

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
    paths = list(paths)
    return next(_read_in_batches(paths, labels, identity_names, source, skip_unreadable, file_bytes=False, progress=progress))


def _read_in_batches(paths: list, labels, identity_names: list[str], source: str, skip_unreadable: bool, file_bytes: bool,
                     max_photos: int | None = None, max_bytes: int | None = None, progress=None) -> Iterator[Photos]:
    """The files read in order, a batch of photos at a time: :func:`read_files` of consecutive runs of them.

    A batch ends after ``max_photos`` readable photos, or once its photos hold ``max_bytes``
    bytes; the last batch (always given, though it may hold no photo) ends with the files.
    Each batch's photos are dropped here before the next is read.

    Args:
        paths, labels, identity_names, source, skip_unreadable, progress: as :func:`read_files`'.
        file_bytes: keep each file's own bytes, checked by decoding them (what a face chip is
            cut from); else the bytes TensorFlow decodes (:func:`~facetrip.data.images.decodable_bytes`).
        max_photos: readable photos a batch ends at; None for no end.
        max_bytes: bytes of photos a batch ends at; None for no end.

    Yields:
        :class:`Photos`: a batch's readable photos and the files of it that were skipped.
    """
    from facetrip.data import FaceImages, ImageReadError

    def batch() -> Photos:
        encoded_array = np.empty(len(encoded), dtype=object)
        encoded_array[:] = encoded
        faces = FaceImages(encoded=encoded_array, labels=np.asarray(kept_labels, np.int64), identity_names=list(identity_names),
                           file_names=np.asarray(names, dtype=str), channels=3, source=source)
        return Photos(faces, skipped)

    encoded, kept_labels, names, skipped, held, done = [], [], [], [], 0, 0
    for path, label in zip(paths, labels):
        try:
            data = _read_photo(path, file_bytes)
        except ImageReadError as error:
            if not skip_unreadable:
                raise
            skipped.append((str(path), str(error)))
        else:
            encoded.append(data)
            kept_labels.append(int(label))
            names.append(str(path))
            held += len(data)
        done += 1
        if progress is not None:
            progress(done, len(paths))
        if (max_photos is not None and len(encoded) >= max_photos) or (max_bytes is not None and held >= max_bytes):
            full = batch()
            encoded, kept_labels, names, skipped, held = [], [], [], [], 0
            yield full
            del full
    yield batch()


def _read_photo(path, file_bytes: bool) -> bytes:
    """One photo file's bytes: its own, checked by decoding them, or those TensorFlow decodes as PIL did.

    Raises:
        ImageReadError: naming the file, when it cannot be read.
    """
    from facetrip.data.images import decode_bytes, read_image_bytes, read_photo_file

    if not file_bytes:
        return read_image_bytes(path)
    data = read_photo_file(path)
    decode_bytes(data, str(path))  # raises here, naming the file, rather than while its chip is cut
    return data


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
    paths, labels, names, source = _gallery_folder(spec.name)
    return read_files(paths, labels, names, source, skip_unreadable=True, progress=progress)


def _gallery_folder(folder: str) -> tuple[list[Path], list[int], list[str], str]:
    """The photos of a ``GALLERY/<person>/<photo>`` folder, listed: ``(paths, labels, people's names, source name)``.

    Raises:
        DataError: a folder without ``<person>/<photo>`` images.
    """
    from facetrip.data.folder import list_identity_images

    root = Path(folder).expanduser()
    people = list_identity_images(root)
    names = list(people)
    paths = [path.resolve() for name in names for path in people[name]]
    labels = [label for label, name in enumerate(names) for _ in people[name]]
    return paths, labels, names, f"folder:{root}"


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
    faces_detected = _faces_detected(prepared, report)
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


def _faces_detected(prepared, report) -> np.ndarray:
    """(N,) int64 faces found on each photo of a set, from what :meth:`~facetrip.runs.loaded_run.Run.prepare_faces` gave."""
    if report is None:
        return np.full(len(prepared), WHOLE_IMAGE, np.int64)
    if prepared.model_input is not None:  # from a prepared set's index, nothing decoded
        return np.maximum(prepared.encoded.prepared.faces_detected[prepared.encoded.positions], 0).astype(np.int64)
    from facetrip.data.chip_png import faces_detected_in

    return np.asarray([faces_detected_in(png) for png in prepared.encoded], np.int64)


@dataclasses.dataclass
class EmbeddedGallery:
    """A gallery's photos embedded: what an index keeps of them, without their bytes.

    Attributes:
        file_names: (N,) the file of each readable photo (a prepared set's file names for other sources), in order.
        labels: (N,) int64 person of each.
        identity_names: the name of each label.
        source: the gallery's source name.
        embedded: their :class:`Embedded` (``model_images`` None for a folder, read a batch at a time).
        skipped: ``(file, reason)`` of each file that could not be read.
    """

    file_names: np.ndarray
    labels: np.ndarray
    identity_names: list[str]
    source: str
    embedded: Embedded
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.labels)


def embed_gallery(run, gallery: str, data_dir: str | None = None, embeddings_path: str | Path | None = None,
                  on_stage=None, progress=None) -> EmbeddedGallery:
    """The photos of known people embedded with a run's model: a folder a batch at a time, any other source as it comes.

    A folder (``GALLERY/<person>/<photo>`` or ``folder:PATH``) is read, aligned and embedded
    a batch at a time (:func:`embed_files`); other sources come from their prepared set
    (:func:`gallery_photos`) and are embedded by :func:`embed_photos`. The rows are the
    same either way: the gallery's readable photos, in order.

    Args:
        run: a loaded :class:`facetrip.runs.loaded_run.Run`.
        gallery: the folder, or any data source spec.
        data_dir: tfds storage folder for data source specs.
        embeddings_path: a ``.npy`` file to write the embeddings to as they come; None to gather them in memory.
        on_stage: called with a short message as each stage starts, or None.
        progress: called as ``progress(done, total)`` while photos are read, aligned and embedded, or None.

    Returns:
        :class:`EmbeddedGallery`; no photos (and no embeddings file) when none is readable.

    Raises:
        DataError: an unknown source, or a folder without ``<person>/<photo>`` images.
    """
    from facetrip.data import parse_source

    spec = parse_source(gallery)
    if spec.kind == "folder":
        paths, labels, names, source = _gallery_folder(spec.name)
        return embed_files(run, paths, labels, names, source, embeddings_path, on_stage, progress)
    photos = gallery_photos(gallery, data_dir, run, progress)
    faces = photos.faces
    embedded = embed_photos(run, faces, on_stage, embeddings_path, progress) if len(faces) else _nothing_embedded(run)
    return EmbeddedGallery(faces.file_names, faces.labels, list(faces.identity_names), faces.source, embedded, photos.skipped)


def embed_files(run, paths, labels, identity_names: list[str], source: str, embeddings_path: str | Path | None = None,
                on_stage=None, progress=None) -> EmbeddedGallery:
    """Photo files read, aligned and embedded with a run's model a batch at a time; unreadable files are skipped and listed.

    The files are read in batches of at most :data:`GALLERY_BATCH_PHOTOS` photos and
    :data:`GALLERY_BATCH_BYTES` bytes; each batch is aligned (worker processes started once
    for all of them), embedded, and dropped before the next is read. The face chips are cut
    from each file's own bytes, as `verify` cuts them. Rows, embeddings and skipped files are
    those of :func:`read_files` and :func:`embed_photos` on all the files at once.

    Args:
        run: a loaded :class:`facetrip.runs.loaded_run.Run`.
        paths: the photo files, in order.
        labels: (N,) int person of each.
        identity_names: the name of each label.
        source: what to call the set.
        embeddings_path: a ``.npy`` file to write the embeddings to a batch at a time; None to
            gather them in memory. The file holds a row for every file, those past the readable
            photos' zero; the embeddings returned are the readable photos' rows, memory-mapped.
        on_stage: called with a short message as the stage starts, or None.
        progress: called as ``progress(done, total)`` while the files are aligned (runs on face
            chips) or read (the others), and after each batch, or None.

    Returns:
        :class:`EmbeddedGallery`, ``embedded.model_images`` None.
    """
    from facetrip.data.chip_workers import workers_kept
    from facetrip.embedding import embedding_batches, write_npy_rows

    paths, total = list(paths), len(paths)
    if on_stage is not None:
        steps = "reading, aligning and embedding" if run.face_chips else "reading and embedding"
        on_stage(f"{steps.capitalize()} {total:,} photos, {GALLERY_BATCH_PHOTOS:,} at a time ...")
    dimension = int(run.model.output_shape[-1])
    names, kept_labels, faces_detected, skipped = [], [], [], []

    def embeddings_of(faces, before: int) -> Iterator[np.ndarray]:
        """The embeddings of one batch's photos, (B, D) at a time; their names, labels and faces found noted."""
        aligned = None if progress is None else (lambda count, _: progress(before + count, total))
        prepared, report = run.prepare_faces(faces, aligned)
        names.extend(faces.file_names)
        kept_labels.extend(faces.labels)
        faces_detected.extend(_faces_detected(prepared, report))
        yield from embedding_batches(run.model, prepared, run.image_size, run.channels)

    def embeddings_of_batches() -> Iterator[np.ndarray]:
        done = 0
        # Runs on chips tell how many photos are aligned, the others how many are read.
        batches = _read_in_batches(paths, labels, identity_names, source, skip_unreadable=True, file_bytes=run.face_chips,
                                   max_photos=GALLERY_BATCH_PHOTOS, max_bytes=GALLERY_BATCH_BYTES,
                                   progress=None if run.face_chips else progress)
        for photos in batches:
            skipped.extend(photos.skipped)
            if len(photos.faces):
                yield from embeddings_of(photos.faces, done)
            done += len(photos.faces) + len(photos.skipped)
            if progress is not None:
                progress(done, total)
            del photos  # nothing of this batch is held while the next is read

    with workers_kept():
        if embeddings_path is None:
            embeddings = np.concatenate([np.zeros((0, dimension), np.float32), *embeddings_of_batches()])  # (N, D)
        elif total:
            def rows() -> Iterator[np.ndarray]:
                yield from embeddings_of_batches()
                yield np.zeros((len(skipped), dimension), np.float32)  # the rows of the unreadable files, zero

            write_npy_rows(embeddings_path, rows(), total, (dimension,))
            embeddings = np.load(embeddings_path, mmap_mode="r")[: len(names)]  # (N, D)
        else:
            embeddings = np.zeros((0, dimension), np.float32)
    embedded = Embedded(embeddings, np.asarray(faces_detected, np.int64), None)
    return EmbeddedGallery(np.asarray(names, dtype=str), np.asarray(kept_labels, np.int64), list(identity_names), source,
                           embedded, skipped)


def _nothing_embedded(run) -> Embedded:
    """The :class:`Embedded` of no photo."""
    return Embedded(np.zeros((0, int(run.model.output_shape[-1])), np.float32), np.zeros(0, np.int64), np.empty(0, dtype=object))
