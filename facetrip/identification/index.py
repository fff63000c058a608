"""The gallery index on disk: embeddings of known people, their identities and files, and a manifest.

::

    INDEX_DIR/
      manifest.json            what made the index: the run, its model's fingerprint, the metric,
                               the embedding size, the people and photos, the data file and its hash
      gallery-<hash>.npz       embeddings (N, D) float32, identities (N,), files (N,), faces_detected (N,)
      ann-<hash>.bin           an approximate-nearest-neighbour index of the embeddings (large galleries)
      .facetrip-output.json    the files `facetrip index` wrote here: only those are ever replaced or removed

The data files are named after their content and written before the manifest, which is
written last and atomically: a kill at any point leaves the previous index whole, and an
index whose data file was changed or cut short is refused (its SHA-256 is in the manifest).
The data file is written and hashed a buffer at a time, so the embeddings of a large
gallery may be a memory-mapped array (`facetrip index` embeds into one).

An index belongs to one model: :func:`model_fingerprint` hashes the run's ``model.keras``
with the metric and input settings, and :func:`check_same_model` refuses an index that
another model (another run, or the same run trained again) made, since distances between
embeddings of two models mean nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.runs.files import file_sha256
from facetrip.runs.output_folder import CommandOutput, OutputFolder, check_output_folder
from facetrip.untrusted_files import UntrustedFileError, load_npz_checked, read_untrusted_bytes, read_untrusted_json

MANIFEST_FILE = "manifest.json"
INDEX_KIND = "facetrip gallery index"
INDEX_FORMAT = 1
# A manifest lists the gallery sources added, nothing per photo: a larger file is not one.
MANIFEST_SIZE_LIMIT = 4 << 20
# The largest data or ANN file read: 16 GiB holds some 10^7 photos' 512-value embeddings.
_DATA_SIZE_LIMIT = 16 << 30
_DATA_PREFIX, _ANN_PREFIX = "gallery-", "ann-"
# faces_detected of an entry embedded from the whole image (runs that read no face chips).
WHOLE_IMAGE = -1


class GalleryIndexError(ValueError):
    """An index that is missing, corrupt, or made by another model: one line saying what to do."""


@dataclasses.dataclass
class GalleryIndex:
    """Embeddings of known people, one row per gallery photo.

    Attributes:
        embeddings: (N, D) float32.
        identities: (N,) str, the person of each row.
        files: (N,) str, the photo each row came from.
        faces_detected: (N,) int64, faces found on each photo (:data:`WHOLE_IMAGE` without face chips).
        manifest: what made the index (see the module docstring).
        ann: the serialised approximate-nearest-neighbour index of ``embeddings``, or None.
    """

    embeddings: np.ndarray
    identities: np.ndarray
    files: np.ndarray
    faces_detected: np.ndarray
    manifest: dict[str, Any]
    ann: bytes | None = None

    def __len__(self) -> int:
        return len(self.identities)

    @property
    def people(self) -> list[str]:
        """The distinct people, sorted."""
        return sorted(set(self.identities.tolist()))

    def labels(self) -> tuple[np.ndarray, list[str]]:
        """``(labels (N,) int64 into names, names)``: each row's person as an index into the sorted people."""
        names, labels = np.unique(self.identities, return_inverse=True)
        return labels.astype(np.int64).reshape(-1), [str(name) for name in names]


def model_fingerprint(run_dir: str | Path, metadata: dict[str, Any]) -> str:
    """A hash that changes whenever the run's embeddings could: its model file and how photos reach it.

    ``sha256("facetrip model fingerprint 1" | sha256(model.keras) | metric | face_chips |
    image_size | channels)``: a copy of the run gives the same fingerprint, a run trained
    again (or moved along its weights, or another run) another.

    Args:
        run_dir: the run directory.
        metadata: its metadata (:func:`facetrip.runs.read_metadata`).

    Returns:
        64 hex digits.
    """
    from facetrip.runs import MODEL_FILE

    model_digest = file_sha256(Path(run_dir) / MODEL_FILE)
    settings = json.dumps([metadata.get("metric"), bool(metadata.get("face_chips", False)),
                           list(metadata.get("image_size", [])), metadata.get("channels")])
    return hashlib.sha256(f"facetrip model fingerprint 1|{model_digest}|{settings}".encode()).hexdigest()


def new_manifest(run_dir: str | Path, metadata: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The manifest of an empty index for a run (:func:`write_index` fills in the rest)."""
    from facetrip import __version__

    return {
        "kind": INDEX_KIND,
        "format": INDEX_FORMAT,
        "facetrip_version": __version__,
        "run": str(Path(run_dir).resolve()),
        "model_fingerprint": fingerprint,
        "metric": metadata["metric"],
        "face_chips": bool(metadata.get("face_chips", False)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": [],
    }


def check_same_model(manifest: dict[str, Any], fingerprint: str, run_dir: str | Path, index_dir: str | Path) -> None:
    """Refuse an index that another model made.

    Raises:
        GalleryIndexError: naming the run that made the index and what to do.
    """
    if manifest["model_fingerprint"] != fingerprint:
        raise GalleryIndexError(
            f"{index_dir} was made by another model (run {manifest.get('run', '?')}, fingerprint "
            f"{str(manifest['model_fingerprint'])[:12]}), not by {run_dir} ({fingerprint[:12]}): embeddings of two models "
            f"cannot be compared; index the gallery again with this run (facetrip index {run_dir} GALLERY -o DIR)."
        )


def merged(index: GalleryIndex | None, embeddings: np.ndarray, identities, files, faces_detected,
           manifest: dict[str, Any], rows_path: str | Path | None = None) -> tuple[GalleryIndex, int]:
    """An index with new photos added; photos whose file is already in it are left out.

    Args:
        index: the index to add to, or None for a new one.
        embeddings: (M, D) float32 of the new photos (a ``numpy.memmap`` is read in chunks).
        identities, files, faces_detected: (M,) of the new photos.
        manifest: the manifest to keep (the index's own when adding).
        rows_path: a ``.npy`` file to write the merged index's embeddings to, a chunk of
            rows at a time, and memory-map them from (a gallery of any size); None to
            gather them in memory.

    Returns:
        ``(index, photos left out as already indexed)``.

    Raises:
        GalleryIndexError: the new embeddings are not of the index's size.
    """
    embeddings = np.asarray(embeddings, np.float32).reshape(len(files), -1)
    identities, files = _text_array(identities), _text_array(files)
    faces_detected = np.asarray(faces_detected, np.int64).reshape(-1)
    if index is not None and embeddings.shape[1] != index.embeddings.shape[1]:
        raise GalleryIndexError(f"New embeddings have {embeddings.shape[1]} values, the index {index.embeddings.shape[1]}.")
    known = set() if index is None else set(index.files.tolist())
    fresh = np.zeros(len(files), bool)
    for position, name in enumerate(files.tolist()):  # also a file given twice is indexed once
        if name not in known:
            fresh[position] = True
            known.add(name)
    if rows_path is not None:
        from facetrip.embedding import row_chunks, write_npy_rows

        kept = (len(index) if index is not None else 0) + int(fresh.sum())
        chunks = itertools.chain(row_chunks(index.embeddings) if index is not None else (), row_chunks(embeddings, fresh))
        write_npy_rows(rows_path, chunks, kept, (embeddings.shape[1],))
        all_embeddings = np.load(rows_path, mmap_mode="r")  # (K, D)
    elif index is None:
        all_embeddings = embeddings[fresh]
    else:
        all_embeddings = np.concatenate([index.embeddings, embeddings[fresh]])
    if index is None:
        return GalleryIndex(all_embeddings, identities[fresh], files[fresh], faces_detected[fresh], manifest), int((~fresh).sum())
    return GalleryIndex(
        all_embeddings,
        np.concatenate([index.identities, identities[fresh]]),
        np.concatenate([index.files, files[fresh]]),
        np.concatenate([index.faces_detected, faces_detected[fresh]]),
        manifest,
    ), int((~fresh).sum())


INDEX_OUTPUT = CommandOutput("facetrip index", (MANIFEST_FILE, f"{_DATA_PREFIX}*.npz", f"{_ANN_PREFIX}*.bin"),
                             option="-o", again="add photos to it with --add, or replace it with --overwrite")


def check_index_folder(index_dir: str | Path, add: bool = False, overwrite: bool = False) -> OutputFolder:
    """The folder `facetrip index` may write into, checked before anything is embedded (:func:`check_output_folder`).

    A new or empty folder is taken; with ``add`` or ``overwrite``, one holding an index that
    `facetrip index` wrote (files of other names beside it are kept); ``add`` needs that index.

    Args:
        index_dir: the index folder.
        add: the gallery is to be added to the index there.
        overwrite: the index there is to be replaced.

    Returns:
        The checked folder, for :func:`write_index`.

    Raises:
        OutputFolderError: a folder holding a file of a name an index has that `facetrip index`
            did not write, other files without ``overwrite`` or ``add``, or an index without either.
        GalleryIndexError: ``add`` and no index in the folder.
    """
    folder = check_output_folder(index_dir, INDEX_OUTPUT, overwrite=add or overwrite,
                                 recognised=_unrecorded_index_files(Path(index_dir)))
    if add and not (MANIFEST_FILE in folder.earlier and has_index(index_dir)):
        raise GalleryIndexError(f"{index_dir} holds no index to add to: build one without --add first.")
    return folder


def _unrecorded_index_files(index_dir: Path) -> frozenset[str]:
    """The files of an index in a folder without an output record (written by an earlier facetrip), else nothing.

    Such an index is recognised by its content: a valid manifest whose data file (and ANN
    file) are in the folder with the SHA-256 the manifest gives.
    """
    from facetrip.runs.output_folder import OUTPUT_RECORD

    if (index_dir / OUTPUT_RECORD).exists() or not has_index(index_dir):
        return frozenset()
    try:
        manifest = read_manifest(index_dir)
        files = {manifest["data_file"]: manifest["data_sha256"]}
        if manifest.get("ann"):
            files[manifest["ann"]["file"]] = str(manifest["ann"].get("sha256"))
        if any(not (index_dir / name).is_file() or file_sha256(index_dir / name) != digest
               for name, digest in files.items()):
            return frozenset()
    except (GalleryIndexError, OSError, TypeError):
        return frozenset()
    return frozenset({MANIFEST_FILE, *files})


def write_index(index_dir: str | Path, index: GalleryIndex, ann: bytes | None = None, ann_library: str | None = None,
                output_folder: OutputFolder | None = None) -> dict[str, Any]:
    """Write an index: its data file (and ANN index) under their hashes, then the manifest, then remove stale files.

    The stale files are those of the index written there before, as its record lists them
    (:mod:`facetrip.runs.output_folder`); no other file in the folder is touched.

    Args:
        index_dir: the folder (created if missing).
        index: the index to write; its manifest gets the counts, files and hashes.
        ann: a serialised ANN index of ``index.embeddings``, or None.
        ann_library: the library that made ``ann``.
        output_folder: ``index_dir`` as :func:`check_index_folder` checked it before the
            gallery was embedded; default: checked here, taking an index there for replacing.

    Returns:
        The manifest written.

    Raises:
        OutputFolderError: the folder holds a file of a name the index writes that `facetrip index` did not write.
    """
    from facetrip.runs import atomic_write_bytes, atomic_write_json, write_atomically_as

    index_dir = Path(index_dir)
    folder = output_folder if output_folder is not None else check_index_folder(index_dir, overwrite=True)
    folder.claim([MANIFEST_FILE])  # creates the folder

    def write_data(temporary: Path) -> None:  # NumPy streams each array into the zip a buffer at a time
        with open(temporary, "wb") as handle:
            np.savez(handle, embeddings=np.asarray(index.embeddings, np.float32), identities=_text_array(index.identities),
                     files=_text_array(index.files), faces_detected=np.asarray(index.faces_detected, np.int64))

    hashes = []

    def data_file_name(temporary: Path) -> str:
        hashes.append(file_sha256(temporary))
        name = f"{_DATA_PREFIX}{hashes[-1][:16]}.npz"
        folder.claim([name])  # recorded before the file takes its name
        return name

    write_atomically_as(index_dir, write_data, data_file_name, suffix=".partial.npz")
    data_hash = hashes[-1]
    manifest = dict(index.manifest)
    manifest.update({
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": len(index),
        "people": len(index.people),
        "embedding_dim": int(index.embeddings.shape[1]) if index.embeddings.ndim == 2 else 0,
        "data_file": f"{_DATA_PREFIX}{data_hash[:16]}.npz",
        "data_sha256": data_hash,
        "ann": None,
    })
    if ann is not None:
        ann_hash = hashlib.sha256(ann).hexdigest()
        manifest["ann"] = {"library": ann_library, "file": f"{_ANN_PREFIX}{ann_hash[:16]}.bin", "sha256": ann_hash}
        folder.claim([manifest["ann"]["file"]])
        atomic_write_bytes(index_dir / manifest["ann"]["file"], ann)
    atomic_write_json(index_dir / MANIFEST_FILE, manifest)
    folder.finish()
    return manifest


def has_index(index_dir: str | Path) -> bool:
    """Whether the folder holds an index (a manifest), valid or not."""
    return (Path(index_dir) / MANIFEST_FILE).exists()


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The manifest of an index, checked.

    Raises:
        GalleryIndexError: no such folder, no manifest, one that is not a facetrip index's,
            or one with a missing or malformed field.
    """
    index_dir = Path(index_dir)
    rebuild = f"build it again with facetrip index RUN GALLERY -o {index_dir}"
    if not index_dir.is_dir():
        raise GalleryIndexError(f"Index folder {index_dir} does not exist: build one with facetrip index RUN GALLERY -o {index_dir}.")
    path = index_dir / MANIFEST_FILE
    try:
        manifest = read_untrusted_json(path, MANIFEST_SIZE_LIMIT, "index manifest")
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise GalleryIndexError(f"{index_dir} is not a facetrip index (no {MANIFEST_FILE}): {rebuild}.") from None
        raise GalleryIndexError(f"{error}: {rebuild}.") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != INDEX_KIND:
        raise GalleryIndexError(f"{path} is not the manifest of a facetrip index: {rebuild}.")
    if manifest.get("format") != INDEX_FORMAT:
        raise GalleryIndexError(f"{index_dir} is an index of format {manifest.get('format')!r}, this facetrip reads "
                                f"{INDEX_FORMAT}: {rebuild}.")
    expected = {"model_fingerprint": str, "metric": str, "data_file": str, "data_sha256": str, "entries": int,
                "embedding_dim": int, "sources": list}
    for field, kind in expected.items():
        if not isinstance(manifest.get(field), kind) or isinstance(manifest.get(field), bool):
            raise GalleryIndexError(f"{path} has no valid {field!r}: {rebuild}.")
    if manifest["entries"] < 1 or manifest["embedding_dim"] < 1:
        raise GalleryIndexError(f"{path} describes an empty index: {rebuild}.")
    if manifest["metric"] not in ("euclidean", "squared", "cosine"):
        raise GalleryIndexError(f"{path} names an unknown metric {manifest['metric']!r}: {rebuild}.")
    if manifest.get("ann") is not None and not isinstance(manifest["ann"], dict):
        raise GalleryIndexError(f"{path} has no valid 'ann': {rebuild}.")
    for field in ("data_file", *(("ann",) if manifest.get("ann") else ())):
        name = manifest[field] if field == "data_file" else (manifest["ann"] or {}).get("file", "")
        if not isinstance(name, str) or Path(name).name != name or not name.startswith((_DATA_PREFIX, _ANN_PREFIX)):
            raise GalleryIndexError(f"{path} names a data file outside the index ({name!r}): {rebuild}.")
    return manifest


def read_index(index_dir: str | Path) -> GalleryIndex:
    """An index from its folder, every file checked against the manifest.

    Raises:
        GalleryIndexError: see :func:`read_manifest`; a data file missing, changed since
            the manifest was written (hash), or not holding arrays of the manifest's shape.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    rebuild = f"build the index again with facetrip index RUN GALLERY -o {index_dir}"
    data_path = index_dir / manifest["data_file"]
    data = _checked_bytes(data_path, manifest["data_sha256"], rebuild, _DATA_SIZE_LIMIT)
    count, size = manifest["entries"], manifest["embedding_dim"]
    specs = {"embeddings": ((count, size), "f"), "identities": ((count,), "U"), "files": ((count,), "U"),
             "faces_detected": ((count,), "iu")}
    try:  # every header checked against the manifest before its array is allocated
        arrays = load_npz_checked(data, specs, data_path, max_array_bytes=_DATA_SIZE_LIMIT)
    except UntrustedFileError as error:
        raise GalleryIndexError(f"{error}: {rebuild}.") from None
    embeddings, identities, files, faces_detected = (arrays[name] for name in specs)
    if embeddings.dtype != np.float32 or not np.all(np.isfinite(embeddings)):
        raise GalleryIndexError(f"{data_path} does not hold the {count} x {size} embeddings "
                                f"its manifest describes: {rebuild}.")
    ann = None
    if manifest.get("ann"):
        ann = _checked_bytes(index_dir / manifest["ann"]["file"], str(manifest["ann"].get("sha256")), rebuild, _DATA_SIZE_LIMIT)
    return GalleryIndex(embeddings, identities, files, faces_detected.astype(np.int64), manifest, ann)


def _checked_bytes(path: Path, sha256: str, rebuild: str, max_bytes: int) -> bytes:
    """The bytes of an index file whose hash the manifest gives, read once; GalleryIndexError if missing or changed."""
    try:
        data = read_untrusted_bytes(path, max_bytes, "index file")
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise GalleryIndexError(f"{path} is missing: {rebuild}.") from None
        raise GalleryIndexError(f"{error}: {rebuild}.") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise GalleryIndexError(f"{path} is corrupt (it changed after the index was written): {rebuild}.")
    return data


def _text_array(values) -> np.ndarray:
    """(N,) numpy unicode array (never object: the data file loads without pickle)."""
    values = [str(value) for value in values]
    return np.asarray(values, dtype=str) if values else np.zeros(0, dtype="<U1")
