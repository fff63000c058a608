"""The one way to embed images with a model, and to write embeddings out for users.

    faces (encoded photos, as :mod:`facetrip.data.model_input` prepares them)
        -> tf.data decode + resize -> model, batch by batch -> (N, D) float32 embeddings

Training (the centres of the classification term, offline mining) and the threshold
calibration embed in memory through :func:`embed_faces`. ``evaluate``, ``mine``, ``embed``
and ``index`` embed a whole split or gallery through :func:`embed_faces_to_file`: batch by
batch (:func:`embedding_batches`) into a memory-mapped ``.npy``, so that a set of any size
embeds in memory bounded by the batch. Both read the images through the same tf.data input
pipeline; a loaded run (:class:`facetrip.runs.loaded_run.Run`) embeds a user's photo files
through the same model-input path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from facetrip.data.images import is_image_file
from facetrip.runs.output_folder import CommandOutput, OutputFolder, check_output_folder

# Rows of an array are copied or compared about this many bytes at a time.
CHUNK_BYTES = 32 << 20
# Rows of tensors.tsv formatted at a time (as text, about 12 bytes a value).
_TSV_ROWS_PER_CHUNK = 4096
# The TensorBoard projector's checkpoint holds every embedding in memory at once: above this
# many rows it is not written, and the projector reads tensors.tsv instead (written row by row).
PROJECTOR_CHECKPOINT_MAX_ROWS = 100_000
# Scratch arrays of a command (embeddings of a split or gallery) are named so, hidden.
SCRATCH_PREFIX = ".facetrip-scratch-"
# The projector checkpoint's name in an embeddings folder (TensorFlow adds -1.index, -1.data-...).
_PROJECTOR_CHECKPOINT = "embedding.ckpt"
EMBEDDINGS_OUTPUT = CommandOutput("facetrip embed", ("embeddings.npy", "metadata.tsv", "tensors.tsv",
                                                     "projector_config.pbtxt", "checkpoint", f"{_PROJECTOR_CHECKPOINT}-*"))


def embed_faces(model, faces, image_size, channels, batch_size: int = 128, progress=None):
    """(N, D) float32 embeddings of every image of ``faces``, in order, through the tf.data input pipeline.

    Args:
        model: a Keras model from (B, H, W, C) images in [0, 1] to (B, D) embeddings.
        faces: :class:`~facetrip.data.FaceImages` of encoded photos (face chips, when the model reads them).
        image_size: (height, width) of the model's input.
        channels: 1 (grey) or 3 (RGB).
        batch_size: images per predict batch.
        progress: called as ``progress(done, N)`` after each batch, or None.

    Returns:
        (N, D) float32 array, row i the embedding of ``faces.encoded[i]``.
    """
    from facetrip.data import image_dataset

    dataset = image_dataset(faces, tuple(image_size), channels, batch_size=batch_size).map(lambda images, labels: images)
    callbacks = []
    if progress is not None:
        import keras

        total = len(faces)
        callbacks.append(keras.callbacks.LambdaCallback(
            on_predict_batch_end=lambda batch, logs: progress(min((batch + 1) * batch_size, total), total)))
    return np.asarray(model.predict(dataset, verbose=0, callbacks=callbacks), np.float32)


def embedding_batches(model, faces, image_size, channels, batch_size: int = 128) -> Iterator[np.ndarray]:
    """The embeddings of ``faces``, one (B, D) float32 batch at a time, in order.

    The images are read, decoded and resized by the tf.data input pipeline of
    :func:`facetrip.data.image_dataset`, the one :func:`embed_faces` reads; only one
    batch of images and of embeddings is held at a time.

    Args:
        model: a Keras model from (B, H, W, C) images in [0, 1] to (B, D) embeddings.
        faces: :class:`~facetrip.data.FaceImages` of encoded photos.
        image_size: (height, width) of the model's input.
        channels: 1 (grey) or 3 (RGB).
        batch_size: images per batch.

    Yields:
        (B, D) float32 arrays, B = ``batch_size`` but for the last.
    """
    from facetrip.data import image_dataset

    dataset = image_dataset(faces, tuple(image_size), channels, batch_size=batch_size).map(lambda images, labels: images)
    for images in dataset:  # (B, H, W, C)
        yield np.asarray(model.predict_on_batch(images), np.float32)  # (B, D)


def embed_faces_to_file(model, faces, image_size, channels, path: str | Path, batch_size: int = 128,
                        progress=None) -> np.ndarray:
    """Embed ``faces`` batch by batch into a ``.npy`` file, and return it memory-mapped, read-only.

    Each batch is written into the file (``numpy.lib.format.open_memmap``) as it comes, so
    host memory is bounded by the batch, not by N. The file is filled under a temporary
    name beside ``path`` and renamed into place only when complete
    (:func:`write_npy_rows`): an error or interruption leaves ``path`` as it was.

    Args:
        model: a Keras model from (B, H, W, C) images in [0, 1] to (B, D) embeddings.
        faces: :class:`~facetrip.data.FaceImages` of encoded photos.
        image_size: (height, width) of the model's input.
        channels: 1 (grey) or 3 (RGB).
        path: the ``.npy`` file to write (replaced when it exists).
        batch_size: images per batch.
        progress: called as ``progress(done, N)`` after each batch, or None.

    Returns:
        (N, D) float32 ``numpy.memmap`` of ``path`` opened with ``mmap_mode="r"``, row i the
        embedding of ``faces.encoded[i]``.
    """
    dimension = model.output_shape[-1]
    batches = embedding_batches(model, faces, image_size, channels, batch_size)
    if progress is not None:
        batches = _counted(batches, len(faces), progress)
    write_npy_rows(path, batches, len(faces), None if dimension is None else (int(dimension),))
    return np.load(path, mmap_mode="r")


def _counted(batches: Iterable[np.ndarray], total: int, progress) -> Iterator[np.ndarray]:
    """The batches, ``progress(rows so far, total)`` told after each."""
    done = 0
    for batch in batches:
        done += len(batch)
        progress(done, total)
        yield batch


def write_npy_rows(path: str | Path, chunks: Iterable[np.ndarray], num_rows: int, row_shape: tuple[int, ...] | None = None,
                   dtype=np.float32) -> None:
    """Write chunks of rows, in order, as one ``(num_rows, *row_shape)`` ``.npy`` file, atomically.

    The file is memory-mapped under a fresh temporary name beside ``path`` and each chunk
    is copied in as it comes; only a complete file is renamed to ``path``. On any error
    (a chunk that fails, too few or too many rows) the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: the ``.npy`` file to write.
        chunks: (B, *row_shape) arrays whose rows together are the array's rows.
        num_rows: N, the rows the chunks hold together.
        row_shape: the shape of a row; None to take it from the first chunk (then
            ``num_rows`` must be at least 1).
        dtype: the file's dtype (chunks are converted to it).
    """
    from facetrip.runs import write_atomically

    write_atomically(path, lambda temporary: _fill_npy(temporary, chunks, num_rows, row_shape, dtype), suffix=".partial.npy")


def _fill_npy(path: Path, chunks: Iterable[np.ndarray], num_rows: int, row_shape: tuple[int, ...] | None, dtype) -> None:
    """Write the rows of ``chunks`` into a new ``.npy`` at ``path`` (not atomically: see :func:`write_npy_rows`)."""
    from numpy.lib.format import open_memmap

    rows = None if row_shape is None else open_memmap(path, mode="w+", dtype=dtype, shape=(num_rows, *row_shape))
    written = 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype)  # (B, *row_shape)
        if rows is None:
            rows = open_memmap(path, mode="w+", dtype=dtype, shape=(num_rows, *chunk.shape[1:]))
        if chunk.shape[1:] != rows.shape[1:] or written + len(chunk) > num_rows:
            raise ValueError(f"A chunk of shape {chunk.shape} does not fit rows {written}.. of a {rows.shape} array.")
        _store_rows(rows, written, chunk)
        written += len(chunk)
    if rows is None:
        raise ValueError(f"No rows to write, and no row shape for an array of {num_rows} rows.")
    if written != num_rows:
        raise ValueError(f"Got {written} rows for an array of {num_rows}.")
    rows.flush()
    del rows  # unmapped: the file is complete


def _store_rows(rows: np.ndarray, start: int, chunk: np.ndarray) -> None:
    """Copy one chunk into rows ``start:start + len(chunk)`` of a memory-mapped array."""
    rows[start: start + len(chunk)] = chunk


def row_chunks(array: np.ndarray, rows: np.ndarray | None = None, rows_per_chunk: int | None = None) -> Iterator[np.ndarray]:
    """The rows of an array (a memory-mapped one is read a chunk at a time), in order, in chunks.

    Args:
        array: (N, ...) array.
        rows: (M,) int indices or (N,) bool mask of the rows to give, in that order; None for all.
        rows_per_chunk: most rows per chunk; None for about :data:`CHUNK_BYTES` a chunk.

    Yields:
        (<= rows_per_chunk, ...) arrays in memory.
    """
    if rows_per_chunk is None:
        rows_per_chunk = rows_per_chunk_of(array)
    if rows is None:
        for start in range(0, len(array), rows_per_chunk):
            yield np.asarray(array[start: start + rows_per_chunk])
        return
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    for start in range(0, len(rows), rows_per_chunk):
        yield np.asarray(array[rows[start: start + rows_per_chunk]])


def rows_per_chunk_of(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many rows of ``array`` make about ``chunk_bytes`` (at least one)."""
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    return max(1, chunk_bytes // max(row_bytes, 1))


@contextlib.contextmanager
def scratch_npy_path(*directories: str | Path | None) -> Iterator[Path]:
    """A fresh path for a command's scratch ``.npy`` (embeddings of a whole split or gallery), removed on exit.

    The file is made in the first of ``directories`` that exists and can be written (a
    run or output folder, on the disk the results go to), else in the system's temporary
    folder (``TMPDIR``; where that is a RAM disk, the scratch array is held in memory).
    Its name, ``.facetrip-scratch-<random>.npy``, is new: no other file is replaced. A
    process that is killed can leave it behind; an exception cannot.

    Args:
        directories: the folders to try, in order (None entries are skipped).

    Yields:
        The path, an empty file until written (:func:`write_npy_rows` replaces it).
    """
    path = None
    for directory in [*directories, None]:
        if directory is not None and not Path(directory).is_dir():
            continue
        try:
            descriptor, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX, suffix=".npy", dir=directory)
        except OSError:
            continue
        os.close(descriptor)
        path = Path(name)
        break
    if path is None:
        raise OSError(f"No folder can hold a scratch file (tried {', '.join(map(str, directories))} and "
                      f"{tempfile.gettempdir()}): set TMPDIR to a writable folder.")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def collect_images(inputs) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (recursively); the label is the parent folder's name."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(path for path in item.rglob("*") if path.is_file() and is_image_file(path)))
        else:
            paths.append(item)
    return paths, [path.parent.name for path in paths]


def check_embeddings_folder(output_dir: str | Path, overwrite: bool = False) -> OutputFolder:
    """The folder `facetrip embed` may write into, checked before anything is embedded (:func:`check_output_folder`).

    Raises:
        OutputFolderError: a folder holding files of someone else, or (without ``overwrite``) earlier embeddings.
    """
    return check_output_folder(output_dir, EMBEDDINGS_OUTPUT, overwrite)


def write_embeddings(output_dir: str | Path, embeddings: np.ndarray, labels, paths, faces_detected=None,
                     output_folder: OutputFolder | None = None) -> dict[str, Path]:
    """embeddings.npy, metadata.tsv (label, path[, faces detected]) and a TensorBoard Embedding Projector set-up.

    The projector reads ``output_dir`` as a TensorBoard log dir: ``projector_config.pbtxt``,
    the metadata file, and the embeddings as a checkpoint of an embedding variable, or, for
    more than :data:`PROJECTOR_CHECKPOINT_MAX_ROWS` rows, as ``tensors.tsv`` (a checkpoint
    needs every embedding in memory at once). ``tensors.tsv`` is always written, for
    projector.tensorflow.org as well.

    Every file is written a chunk of rows at a time, so ``embeddings`` may be a memory-mapped
    array of any size (:func:`embed_faces_to_file`) and ``paths`` a lazily read column: host
    memory stays bounded by a chunk of rows (:data:`CHUNK_BYTES`), and by the checkpoint's cap.

    metadata.tsv has one row per embedding, each with the header's number of fields, what
    the names hold: in labels and paths a backslash is written ``\\\\``, a tab ``\\t``, a
    newline ``\\n``, a carriage return ``\\r``, other control and line-separating characters
    ``\\xHH`` / ``\\uHHHH``, and each byte of a file name that is not UTF-8 ``\\xHH``.
    embeddings.npy, metadata.tsv and tensors.tsv are each written in full under a temporary
    name before the first is renamed into place, so a failure leaves no half-written output
    and never one of them new beside the others old.

    Args:
        output_dir: the folder to write into (created if missing).
        embeddings: (N, D) float32 embeddings (a ``numpy.memmap`` is read in chunks).
        labels: (N,) label of each embedding (its folder or identity name); any iterable.
        paths: (N,) the file each embedding came from; any iterable.
        faces_detected: (N,) faces found in each photo, or None (no column).
        output_folder: ``output_dir`` as :func:`check_embeddings_folder` checked it before the
            embedding; default: checked here, taking earlier embeddings there for replacing.
            Files of earlier embeddings that these do not replace (a projector checkpoint) are
            removed, those its record lists only.

    Returns:
        ``{file name: path}`` of embeddings.npy, metadata.tsv, tensors.tsv and projector_config.pbtxt.

    Raises:
        OutputFolderError: the folder holds a file of a name the embeddings have that `facetrip embed` did not write.
    """
    from tensorboard.plugins import projector

    from facetrip.runs import write_all_atomically

    output_dir = Path(output_dir)
    folder = output_folder if output_folder is not None else check_embeddings_folder(output_dir, overwrite=True)
    num_rows, dimension = len(embeddings), int(embeddings.shape[1])
    with_checkpoint = num_rows <= PROJECTOR_CHECKPOINT_MAX_ROWS
    folder.claim(["embeddings.npy", "metadata.tsv", "tensors.tsv", "projector_config.pbtxt",
                  *(["checkpoint", f"{_PROJECTOR_CHECKPOINT}-1.index", f"{_PROJECTOR_CHECKPOINT}-1.data-00000-of-00001"]
                    if with_checkpoint else [])])
    rows = zip(labels, paths) if faces_detected is None else zip(labels, paths, faces_detected)
    write_all_atomically({
        output_dir / "embeddings.npy": lambda temporary: _fill_npy(temporary, row_chunks(embeddings), num_rows, (dimension,),
                                                                   np.float32),
        output_dir / "metadata.tsv": lambda temporary: _write_metadata_tsv(temporary, rows, faces_detected is not None),
        output_dir / "tensors.tsv": lambda temporary: _write_tensors_tsv(temporary, embeddings),
    })
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.metadata_path = "metadata.tsv"
    if with_checkpoint:
        import tensorflow as tf

        checkpoint = tf.train.Checkpoint(embedding=tf.Variable(np.asarray(embeddings, np.float32)))  # (N, D) in memory
        saved = Path(checkpoint.save(str(output_dir / _PROJECTOR_CHECKPOINT)))
        folder.adopt(path.name for path in output_dir.glob(f"{saved.name}.*"))  # as TensorFlow named its shards
        embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    else:
        embedding.tensor_path = "tensors.tsv"
    projector.visualize_embeddings(str(output_dir), config)
    folder.finish()  # an earlier, smaller set's projector checkpoint goes: the projector would show it too
    return {name: output_dir / name for name in ("embeddings.npy", "metadata.tsv", "tensors.tsv", "projector_config.pbtxt")}


def _write_metadata_tsv(path: Path, rows: Iterable[tuple], with_faces_detected: bool) -> None:
    """metadata.tsv, row by row: a header, then ``label<TAB>path[<TAB>faces detected]`` escaped (see :func:`write_embeddings`)."""
    import re

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

    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("label\tpath\tfaces_detected\n" if with_faces_detected else "label\tpath\n")
        for row in rows:
            handle.write("\t".join([field(row[0]), field(row[1]), *(str(int(count)) for count in row[2:])]) + "\n")


def _write_tensors_tsv(path: Path, embeddings: np.ndarray) -> None:
    """tensors.tsv, a chunk of rows at a time: one line per embedding, its values ``%.6g`` apart by tabs."""
    row_format = "\t".join(["%.6g"] * int(embeddings.shape[1])) + "\n"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if not len(embeddings):
            handle.write("\n")
        for chunk in row_chunks(embeddings, rows_per_chunk=_TSV_ROWS_PER_CHUNK):  # (<= 4096, D)
            handle.write("".join(row_format % tuple(values) for values in chunk.tolist()))
