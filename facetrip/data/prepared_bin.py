"""An insightface verification set's images as a run's model reads them: prepared once, like any source's photos.

    bin:PATH -> VerificationBin (:mod:`facetrip.data.insightface_bin`) -> BinListing (images in file order,
             labelled by pair) -> prepared set (:func:`~facetrip.data.prepared.prepare`, kept in the data dir)
             -> FaceImages backed by it, and the pairs' flags

The crops are ArcFace-aligned (``data.aligned = "arcface"``): for runs on face chips each is
mapped onto dlib's chip by the fixed ArcFace mapping (:mod:`facetrip.data.arcface_alignment`),
with no face detection; runs that read whole images get them as they are. The set is keyed
by the file's content, so a second evaluation on the same file reads the chips prepared by
the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from facetrip.data.errors import DataError
from facetrip.data.insightface_bin import (VerificationBin, VerificationBinError, pair_labels, pair_names,
                                           read_verification_bin)
from facetrip.data.photo_listing import PhotoListing

# A set of at most this many images is prepared in this process: spawning workers would take longer.
_INLINE_PREPARATION_MAX_IMAGES = 1024


@dataclasses.dataclass
class BinPhotoReader:
    """A contiguous part of a verification set's images: ``(position, pair, file name, bytes)`` each (picklable)."""

    start: int
    file_names: list[str]
    identities: list[str]
    photos: list[bytes]

    @property
    def refs(self) -> list[bytes]:  # what a preparation counts a shard's photos by
        return self.photos

    def __iter__(self):
        for offset, data in enumerate(self.photos):
            yield self.start + offset, self.identities[offset], self.file_names[offset], data


@dataclasses.dataclass
class BinListing(PhotoListing):
    """A :class:`~facetrip.data.photo_listing.PhotoListing` of a verification set: its images are in memory."""

    def part(self, start: int, stop: int) -> BinPhotoReader:
        return BinPhotoReader(start, list(self.file_names[start:stop]),
                              [self.identity_names[label] for label in self.labels[start:stop]],
                              list(self.refs[start:stop]))


def bin_listing(verification_bin: VerificationBin, source: str) -> BinListing:
    """The listing a verification set is prepared from: its images in file order, each labelled with its pair."""
    count = len(verification_bin.images)
    return BinListing(source=source, kind="bin", location=str(verification_bin.path),
                      fingerprint=verification_bin.fingerprint, identity_names=pair_names(verification_bin.num_pairs),
                      labels=pair_labels(verification_bin.num_pairs).astype(np.int32),
                      file_names=[str(index) for index in range(count)], refs=verification_bin.images,
                      channels=3, aligned="arcface")


def load_prepared_bin(source: str, face_chips: bool, data_dir: str | None = None,
                      progress: Callable[[int, int], None] | None = None):
    """A ``bin:PATH`` source's images as a run's model reads them, and its pairs' flags.

    The crops are prepared once into a prepared set (:func:`~facetrip.data.prepared.prepare`,
    keyed by the file's content), as ArcFace crops (``data.aligned = "arcface"``): mapped onto
    dlib's chips for runs on face chips, left as they are for runs that read whole images.

    Args:
        source: ``bin:PATH``.
        face_chips: the model reads face chips.
        data_dir: where prepared sets live (tfds's default when None).
        progress: called as ``progress(done, total)`` while the set is prepared.

    Returns:
        ``(faces, same)``: FaceImages of the 2P images in file order (image 2i and 2i + 1 are
        pair i) backed by the prepared set, and the (P,) bool flags.

    Raises:
        UntrustedFileError, VerificationBinError: as :func:`read_verification_bin`; or an image
            that could not be prepared.
    """
    from facetrip.data.chip_examples import ARCFACE_ALIGNED, record_mode
    from facetrip.data.prepared import prepare
    from facetrip.data.records import RecordColumn
    from facetrip.data.sources import FaceImages, parse_source

    spec = parse_source(source)
    if spec.kind != "bin":
        raise DataError(f"{source} is not a bin:PATH source.")
    verification_bin = read_verification_bin(spec.name)
    listing = bin_listing(verification_bin, str(spec))
    workers = 1 if len(listing) <= _INLINE_PREPARATION_MAX_IMAGES else 0
    mode = record_mode(face_chips, ARCFACE_ALIGNED)
    prepared = prepare(listing, mode, data_dir=data_dir, workers=workers, progress=progress)
    same = verification_bin.same
    del listing, verification_bin  # the images live in the prepared set now
    if prepared.failed.any():
        name, error = prepared.failures(1)[0]
        raise VerificationBinError(f"{int(prepared.failed.sum())} images of {spec.name} could not be prepared "
                                   f"(image {name}: {error}).")
    positions = np.arange(len(prepared), dtype=np.int64)  # (2P,)
    faces = FaceImages(encoded=RecordColumn(prepared, "image", positions), labels=prepared.labels.astype(np.int64),
                       identity_names=list(prepared.identity_names),
                       file_names=RecordColumn(prepared, "file_name", positions),
                       channels=3 if face_chips else prepared.channels, source=prepared.source, model_input=mode)
    return faces, same
