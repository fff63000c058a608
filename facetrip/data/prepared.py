"""Prepared face sets: a source's photos turned once into face chips, stored as tfds ArrayRecord shards.

    source -> PhotoListing -> shards of photos -> [per photo: decode, detect, 5 landmarks, 150 x 150 chip]
           -> <data_dir>/prepared_faces/<source>_<fingerprint>_<mode>[_jpeg]/1.0.0/*.array_record-NNNNN-of-MMMMM
           -> PreparedSet: (N,) labels and record positions on the host, chips read by random access

The builder is a tfds ``ShardBasedBuilder``: the photos are cut into shards
(:func:`photos_per_shard`) in listing order, and one function turns a shard's photos into
its records (:func:`~facetrip.data.chip_examples.photo_record`). That function runs

- in ``workers`` processes on this machine (the default): each finished shard is written
  at once to a partial folder beside the set, so a preparation that is stopped, even by
  ``kill -9``, resumes from the shards it finished; or
- unchanged, as an Apache Beam pipeline through tfds's own Beam support
  (``beam_runner``, ``beam_options``: any runner, for sets beyond one machine).

Both write the same records, record ``i`` being photo ``i`` of the listing. A photo that
fails is stored as a record with an empty image and its error: counted, listed, skipped
by training, and never a reason to stop.

After preparing, one pass over the records writes ``facetrip_index.npz`` beside them:
each record's label, faces found and detector, 7 bytes a photo. Opening a prepared set
reads that file and nothing else, so a command holds O(photos) small integers, never
the set's bytes.

Chips are stored as PNG, or as JPEG with ``chip_format = "jpeg"`` (a set of its own, in a
folder named ``..._jpeg``). A command asking for PNG chips, the default, uses a set prepared
as JPEG already rather than preparing the photos again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from facetrip.data.chip_cache import check_chip_cache
from facetrip.data.chip_examples import CHIP_FORMATS, CHIPS, WHOLE_PHOTOS, ShardRecords, shard_records
from facetrip.data.errors import DataError
from facetrip.data.photo_listing import PhotoListing
from facetrip.data.sources import check_prepared_folder
from facetrip.untrusted_files import UntrustedFileError, load_npz_checked, read_untrusted_bytes, read_untrusted_text

logger = logging.getLogger(__name__)

# A set of N photos is cut into shards of N / 64 photos, at least 32 and at most 2,048: enough
# shards to keep every worker busy on small sets, few enough files on large ones (10^6
# photos: 489). The layout depends on N alone, so a resumed preparation finds its shards.
MIN_PHOTOS_PER_SHARD, MAX_PHOTOS_PER_SHARD, TARGET_SHARDS = 32, 2048, 64
# A shard's records are assembled in memory (two shards a worker in flight): whole photos,
# which may be camera photos of several MB, go in smaller shards than 150 x 150 chips.
MAX_WHOLE_PHOTOS_PER_SHARD = 256

# Below this many photos, the per-user chip cache is read and written as every other command
# does (re-preparing a small set in another data dir is then quick); above it, chips live in
# the prepared set alone, not also as millions of loose files.
CHIP_CACHE_MAX_PHOTOS = 50_000

INDEX_FILE = "facetrip_index.npz"
PARTIAL_PREFIX = "partial-"

# Detector codes in the index.
DETECTORS = ("", "hog", "cnn", "none", "aligned")


@dataclasses.dataclass(eq=False)
class PreparedFacesConfig(tfds.core.BuilderConfig):
    source: str = ""
    mode: str = CHIPS


class PreparedFaces(tfds.core.ShardBasedBuilder):
    """A source's photos as face chips (or aligned crops, or whole images), with identity and detection."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Face chips in ArrayRecord shards."}

    def __init__(self, listing: PhotoListing, mode: str, workers: int = 0, progress=None, chip_format: str = "png",
                 **kwargs):
        self.listing = listing
        self.mode = mode
        self.workers = workers
        self.progress = progress
        self.chip_format = chip_format
        config = PreparedFacesConfig(name=f"{listing.slug()}_{listing.fingerprint}_{_mode_tag(mode, chip_format)}",
                                     source=listing.source, mode=mode)
        super().__init__(config=config, file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"Face chips of {self.listing.source} ({self.mode}).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG chip, or the photo's bytes
                "label": tfds.features.ClassLabel(names=self.listing.identity_names),
                "file_name": tfds.features.Text(),
                "faces_detected": tfds.features.Tensor(shape=(), dtype=np.int32),  # -1: failed, or not detected
                "detector": tfds.features.Text(),
                "error": tfds.features.Text(),
            }),
            disable_shuffling=True,
        )

    def shard_tasks(self) -> list[ShardRecords]:
        """One task per shard of :func:`photos_per_shard` photos, in listing order."""
        count = len(self.listing)
        use_cache = self.mode == CHIPS and count <= CHIP_CACHE_MAX_PHOTOS
        if use_cache:  # refused here, in one line, rather than recorded as every photo's failure
            check_chip_cache()
        most = MAX_WHOLE_PHOTOS_PER_SHARD if self.mode == WHOLE_PHOTOS else MAX_PHOTOS_PER_SHARD
        size = photos_per_shard(count, most)
        return [ShardRecords(self.listing.part(start, min(start + size, count)), self.mode, use_cache,
                             self.chip_format) for start in range(0, count, size)]

    def _shard_iterators_per_split(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self.shard_tasks()}

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        if download_config is not None and (download_config.beam_runner or download_config.beam_options):
            super()._download_and_prepare(dl_manager, download_config)  # tfds runs each shard task on Beam
            return
        self._prepare_in_processes()

    def partial_dir(self) -> Path:
        """Where a local preparation keeps finished shards until the set is complete: beside the version folder."""
        return Path(self.data_dir_root) / self.name / self.builder_config.name / f"{PARTIAL_PREFIX}{self.VERSION}"

    def _prepare_in_processes(self) -> None:
        """Each shard's records in worker processes; each finished shard written at once (resume point)."""
        tasks = self.shard_tasks()
        partial = self.partial_dir()
        partial.mkdir(parents=True, exist_ok=True)
        template = self._get_filename_template(split_name="train")
        names = [template.sharded_filepath(shard_index=index, num_shards=len(tasks)).name for index in range(len(tasks))]
        lengths = {}
        for index, name in enumerate(names):
            finished = _finished_shard_count(partial, name)
            if finished is not None and finished == len(tasks[index].reader.refs):
                lengths[index] = finished
        if lengths:
            logger.info("Resuming the preparation of %s: %d of %d shards were prepared before.", self.listing.source,
                        len(lengths), len(tasks))
        done = sum(len(tasks[index].reader.refs) for index in lengths)
        self._report(done)
        from tensorflow_datasets.core import example_serializer, writer

        shard_writer = writer.ShardWriter(
            features=self.info.features,
            serializer=example_serializer.ExampleSerializer(self.info.features.get_serialized_info()),
            example_writer=self._example_writer(),
        )

        def write(index: int, records: list) -> None:
            nonlocal done
            temporary = partial / f".{names[index]}.{os.getpid()}.tmp"
            lengths[index] = shard_writer.write(examples=records, path=temporary)
            os.replace(temporary, partial / names[index])
            count_file = partial / f"{names[index]}.count"  # written last, atomically: it marks the shard done
            count_file.with_name(f".{count_file.name}.{os.getpid()}.tmp").write_text(str(lengths[index]))
            os.replace(count_file.with_name(f".{count_file.name}.{os.getpid()}.tmp"), count_file)
            done += len(records)
            self._report(done)

        pending = [index for index in range(len(tasks)) if index not in lengths]
        for index, records in _computed(pending, tasks, self.workers):
            write(index, records)

        for index, name in enumerate(names):
            os.replace(partial / name, Path(template.data_dir) / name)
        split_info = tfds.core.SplitInfo(
            name="train", shard_lengths=[lengths[index] for index in range(len(tasks))],
            num_bytes=sum((Path(template.data_dir) / name).stat().st_size for name in names),
            filename_template=template.replace(split="train"),
        )
        self.info.set_splits(tfds.core.SplitDict([split_info]))

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, len(self.listing))

    def _log_download_bytes(self) -> None:  # tfds: called once, before preparing
        logger.debug("Preparing %s: %d photos (%s) ...", self.listing.source, len(self.listing), self.mode)

    def _log_download_done(self) -> None:
        logger.debug("Prepared %s in %s.", self.listing.source, self.data_dir)


def _finished_shard_count(partial: Path, name: str) -> int | None:
    """The records of a shard a local preparation finished before, or None (absent, or its count file damaged)."""
    try:
        if not (partial / name).is_file():
            return None
        text = read_untrusted_text(partial / f"{name}.count", 32, "count file")
    except (OSError, UntrustedFileError):
        return None
    return int(text) if text.isdigit() else None


def photos_per_shard(count: int, most: int = MAX_PHOTOS_PER_SHARD) -> int:
    """Photos per shard of a set of ``count``: ``clip(ceil(count / 64), 32, most)``."""
    return int(np.clip(math.ceil(count / TARGET_SHARDS), MIN_PHOTOS_PER_SHARD, most))


def _mode_tag(mode: str, chip_format: str = "png") -> str:
    """The folder tag of a mode: chips name a digest of the alignment, so a new alignment prepares anew;
    JPEG chips add ``_jpeg`` (whole photos are stored as they are, in any format)."""
    suffix = "_jpeg" if chip_format == "jpeg" and mode != WHOLE_PHOTOS else ""
    if mode != CHIPS:
        return f"{mode}{suffix}"
    import hashlib

    from facetrip.data.chip_cutting import ALIGNMENT_VERSION

    return f"chips{hashlib.sha1(ALIGNMENT_VERSION.encode()).hexdigest()[:8]}{suffix}"


def _computed(pending: list[int], tasks: list[ShardRecords], workers: int):
    """``(shard index, records)`` of each pending shard, from ``workers`` spawned processes (1: here)."""
    if workers <= 1 or len(pending) <= 1 or multiprocessing.parent_process() is not None:
        for index in pending:
            yield index, shard_records(tasks[index])
        return
    # Spawned, not forked: this process holds TensorFlow's threads. Two shards per worker in flight.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(pending)), mp_context=context) as pool:
        queue = list(pending)
        running = {}
        while queue or running:
            while queue and len(running) < 2 * workers:
                index = queue.pop(0)
                running[pool.submit(shard_records, tasks[index])] = index
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                yield running.pop(future), future.result()


def default_workers() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# A prepared set, opened


@dataclasses.dataclass
class PreparedSet:
    """A prepared face set on disk: what is held on the host is its index, 7 bytes a photo.

    Attributes:
        path: the folder of the set's shards (tfds's version folder).
        source: the source it was prepared from.
        mode: how photos became records (:data:`~facetrip.data.chip_examples.MODES`).
        identity_names: the identities, in label order.
        labels: (R,) int32 label of every record.
        faces_detected: (R,) int16 faces found (-1: failed, or no detection ran).
        detectors: (R,) int8 index into :data:`DETECTORS`.
        failed: (R,) bool, the photo could not be read or aligned (its record has no image).
        channels: the source's own channels.
    """

    path: Path
    source: str
    mode: str
    identity_names: list[str]
    labels: np.ndarray
    faces_detected: np.ndarray
    detectors: np.ndarray
    failed: np.ndarray
    channels: int = 3
    _reader: object = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def shard_paths(self) -> list[str]:
        return sorted(str(path) for path in self.path.glob("*.array_record-*-of-*"))

    def raw_records(self, positions) -> list[bytes]:
        """The serialized records at ``positions`` (random access; safe from several threads)."""
        positions = [int(position) for position in positions]
        if not positions:
            return []
        if self._reader is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            shards = self.shard_paths()
            _allow_open_files(len(shards) + 256)  # the reader keeps a file open per shard it has read from
            self._reader = ArrayRecordDataSource(shards)
        return self._reader.__getitems__(positions)

    def records(self, positions) -> list[dict]:
        """The records at ``positions``, parsed: ``image`` bytes, ``label``, ``file_name``, ``error``, ..."""
        return [parse_record(record) for record in self.raw_records(positions)]

    def failures(self, most: int | None = None) -> list[tuple[str, str]]:
        """``(file name, error)`` of the photos that failed (the first ``most``, or all), read from their records."""
        return [(record["file_name"], record["error"])
                for record in self.records(np.flatnonzero(self.failed)[:most])]


def _allow_open_files(count: int) -> None:
    """Raise this process's soft limit of open files to ``count`` where the hard limit allows (Unix)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass  # the limit stays; a set of fewer shards than it still reads


def parse_record(serialized: bytes) -> dict:
    """One serialized record as a dict (NumPy / Python values), without TensorFlow."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feature = example.features.feature
    return {
        "image": feature["image"].bytes_list.value[0],
        "label": int(feature["label"].int64_list.value[0]),
        "file_name": feature["file_name"].bytes_list.value[0].decode("utf-8", "replace"),
        "faces_detected": int(feature["faces_detected"].int64_list.value[0]),
        "detector": feature["detector"].bytes_list.value[0].decode(),
        "error": feature["error"].bytes_list.value[0].decode("utf-8", "replace"),
    }


def _scan_index(path: Path, count: int) -> dict[str, np.ndarray]:
    """Each record's label, faces found and detector, in one pass over the shards (parsed in batches)."""
    import tensorflow as tf

    spec = {"label": tf.io.FixedLenFeature([], tf.int64), "faces_detected": tf.io.FixedLenFeature([], tf.int64),
            "detector": tf.io.FixedLenFeature([], tf.string), "error": tf.io.FixedLenFeature([], tf.string)}
    prepared = PreparedSet(path, "", "", [], np.zeros(count, np.int32), None, None, None)
    labels = np.empty(count, np.int32)
    faces = np.empty(count, np.int16)
    detectors = np.empty(count, np.int8)
    failed = np.empty(count, bool)
    codes = {name.encode(): code for code, name in enumerate(DETECTORS)}
    for start in range(0, count, 4096):
        positions = range(start, min(start + 4096, count))
        parsed = tf.io.parse_example(prepared.raw_records(positions), spec)
        stop = start + len(positions)
        labels[start:stop] = parsed["label"].numpy()
        faces[start:stop] = np.clip(parsed["faces_detected"].numpy(), -1, np.iinfo(np.int16).max)
        detectors[start:stop] = [codes.get(name, 0) for name in parsed["detector"].numpy()]
        failed[start:stop] = parsed["error"].numpy() != b""
    return {"labels": labels, "faces_detected": faces, "detectors": detectors, "failed": failed}


def prepare(listing: PhotoListing, mode: str, data_dir: str | None = None, workers: int = 0,
            beam_runner: str = "", beam_options: str = "",
            progress: Callable[[int, int], None] | None = None, chip_format: str = "png") -> PreparedSet:
    """Prepare a source once (resuming an interrupted preparation) and open it.

    Args:
        listing: the source's photos (:func:`~facetrip.data.photo_listing.list_photos`).
        mode: how photos become records (:func:`~facetrip.data.chip_examples.record_mode`).
        data_dir: where prepared sets live; tfds's default (``~/tensorflow_datasets``) when None.
        workers: worker processes (0: every core).
        beam_runner: an Apache Beam runner name (``DirectRunner``, ``DataflowRunner``, ...) to
            prepare on instead of local processes; needs ``facetrip[beam]``.
        beam_options: the runner's options, as on a command line (``"--direct_num_workers=2"``).
        progress: called as ``progress(photos done, photos)``.
        chip_format: ``png`` or ``jpeg``: how a new preparation stores its chips. With ``png``,
            the default, a set prepared as JPEG already is used as it is.

    Returns:
        The :class:`PreparedSet`.

    Raises:
        DataError: the data dir cannot be written, Beam is not installed, no photo was usable,
            or an unknown chip format.
    """
    if chip_format not in CHIP_FORMATS:
        raise DataError(f"The chip format must be {' or '.join(CHIP_FORMATS)}, not {chip_format!r}.")
    builders = []

    def new_builder(stored_as: str) -> PreparedFaces:
        builders.append(PreparedFaces(listing, mode, workers=workers or default_workers(), progress=progress,
                                      chip_format=stored_as, data_dir=data_dir))
        return builders[-1]

    # tfds reads what the set's folder holds as soon as a builder is made: nothing there may make it wait
    check_prepared_folder(Path(data_dir or tfds.core.constants.get_default_data_dir()).expanduser() / PreparedFaces.name)
    # PNG, the default, takes a set prepared as JPEG already: a set is prepared once.
    formats = [chip_format, "jpeg"] if chip_format == "png" and mode != WHOLE_PHOTOS else [chip_format]
    try:
        builder = next((found for found in map(new_builder, formats) if found.is_prepared()), None)
        if builder is None:
            builder = new_builder(chip_format)
            with _preparation_lock(builder):  # another process preparing the same set: wait for it, then use its set
                builder = new_builder(chip_format)
                if not builder.is_prepared():
                    _download_and_prepare(builder, listing, beam_runner, beam_options)
        count = builder.info.splits["train"].num_examples
        path = Path(builder.data_dir)
    finally:
        for used in builders:  # tfds caches each builder's info, and so the builder, for the process's life:
            used.listing = used.progress = None  # it must not keep the listing (some 140 MB at 10^6 photos)
    return open_prepared(path, listing, mode, count)


@contextlib.contextmanager
def _preparation_lock(builder: PreparedFaces):
    """Held while one process prepares a set (an advisory lock on a file beside it)."""
    import fcntl

    folder = builder.partial_dir().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # never waiting on a FIFO, never following a link planted in a shared --data-dir
        flags = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        descriptor = os.open(folder / ".prepare.lock", flags, 0o600)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise OSError(f"{folder / '.prepare.lock'} is not a regular file")
        handle = os.fdopen(descriptor, "a")
    except OSError as error:
        raise DataError(f"Cannot write the prepared set into {folder}: {error.strerror or error}: "
                        f"pass a writable --data-dir.") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _download_and_prepare(builder: PreparedFaces, listing: PhotoListing, beam_runner: str, beam_options: str) -> None:
    """Run tfds's preparation of ``builder`` (locally or on Beam); the partial shards are removed after."""
    download_config = tfds.download.DownloadConfig(beam_runner=beam_runner or None,
                                                   beam_options=_beam_options(beam_options))
    try:
        builder.download_and_prepare(download_config=download_config)
    except PermissionError as error:
        raise DataError(f"Cannot write the prepared set into {builder.data_dir}: {error.strerror}: "
                        f"pass a writable --data-dir.") from None
    except OSError as error:
        raise DataError(f"Cannot prepare {listing.source} in {builder.data_dir}: {error}") from None
    with contextlib.suppress(OSError):
        shutil.rmtree(builder.partial_dir())


def _beam_options(text: str):
    """Beam's PipelineOptions from a command-line string, or None."""
    if not text:
        return None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise DataError("Preparing with --beam-options needs Apache Beam: pip install 'facetrip[beam]'.") from None
    import shlex

    return PipelineOptions(shlex.split(text))


def open_prepared(path: Path, listing: PhotoListing, mode: str, count: int) -> PreparedSet:
    """The prepared set in ``path``; its index is written by one pass over the records the first time.

    Args:
        path: the set's version folder.
        listing: the listing it was prepared from (identity names, channels).
        mode: how its photos became records.
        count: the records it holds (tfds's split info).

    Raises:
        DataError: the set holds no usable photo.
    """
    import io

    index_path = path / INDEX_FILE
    index = _read_index(index_path, count, len(listing.identity_names))
    if index is None:
        index = _scan_index(path, count)
        buffer = io.BytesIO()
        np.savez(buffer, **index)
        temporary = index_path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(buffer.getvalue())
            os.replace(temporary, index_path)  # readers see the whole file or none
        except OSError as error:  # a read-only or full data dir: the index is used from memory this time
            logger.warning("Could not write %s (%s): it is rebuilt next time.", index_path, error.strerror or error)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
    prepared = PreparedSet(path=path, source=listing.source, mode=mode, identity_names=listing.identity_names,
                           labels=index["labels"], faces_detected=index["faces_detected"],
                           detectors=index["detectors"], failed=index["failed"], channels=listing.channels)
    if prepared.failed.all():
        raise DataError(f"No photo of {listing.source} could be read: {prepared.failures(1)[0][1]}")
    return prepared


def _read_index(path: Path, count: int, identities: int) -> dict[str, np.ndarray] | None:
    """The index file, checked (``count`` long everywhere, the right types, labels in range), or None when absent or damaged."""
    specs = {"labels": ((count,), "i"), "faces_detected": ((count,), "i"), "detectors": ((count,), "i"),
             "failed": ((count,), "b")}
    try:  # every header checked against the count before anything is allocated
        index = load_npz_checked(read_untrusted_bytes(path, 64 * count + (1 << 20), "index file"), specs, path)
    except UntrustedFileError:  # absent, truncated, a bad zip or CRC, wrong keys or shapes: rebuilt from the shards
        return None
    lengths = {len(array) for array in index.values()}
    kinds = (index["labels"].dtype == np.int32, index["faces_detected"].dtype == np.int16,
             index["detectors"].dtype == np.int8, index["failed"].dtype == bool)
    if lengths != {count} or not all(kinds) or any(array.ndim != 1 for array in index.values()):
        return None
    if count and (index["labels"].min() < 0 or index["labels"].max() >= identities):
        return None
    return index
