"""Loading a run's model.keras, after checking that it unpacks to bounded data and runs no foreign code.

A run directory may come from anyone: the zip's members, the HDF5 weights and the model
config are checked before Keras reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from facetrip.runs.layout import MODEL_FILE, RunError
from facetrip.runs.metadata import readable_size, shown_value
from facetrip.untrusted_files import FileOpenError, open_regular_file


# The members Keras writes into a .keras file and the most each may unpack to. facetrip's
# largest model, the pretrained face network, has a 94 kB config.json and a 23 MB
# model.weights.h5: the limits leave more than twenty times that room.
MODEL_MEMBER_LIMITS = {"metadata.json": 1 << 20, "config.json": 8 << 20, "model.weights.h5": 512 << 20}

MODEL_REQUIRED_MEMBERS = ("config.json", "model.weights.h5")

# All members together, unpacked.
MODEL_UNPACKED_LIMIT = 512 << 20

# The .keras file itself (Keras stores its members uncompressed), with room for the zip's own headers.
MODEL_FILE_LIMIT = MODEL_UNPACKED_LIMIT + (1 << 20)

# Deflated JSON shrinks about 10 times and weights barely; a member that shrinks more than
# this is a decompression bomb. Members below the floor are too small to matter.
MODEL_COMPRESSION_RATIO_LIMIT = 100

_COMPRESSION_RATIO_FLOOR = 1 << 20

# The zip's central directory of three members takes about 200 bytes. Python's zipfile reads
# it whole and makes an object per member, so both are bounded before it opens the file;
# a few members too many are still read, to name the unexpected one.
_ZIP_DIRECTORY_LIMIT = 64 << 10

_ZIP_MEMBER_COUNT_LIMIT = 16

# What the HDF5 weights may declare, read as arrays (the face network's are 22.5 MB), and
# how many groups, datasets and links they may hold (it has about 370).
WEIGHTS_DATA_LIMIT = 512 << 20

_WEIGHTS_OBJECT_LIMIT = 100_000

# Keras layers that load or run code from outside the model's own config and weights.
_CODE_RUNNING_CLASSES = {"Lambda": "a Lambda layer (Python code)", "__lambda__": "a Python lambda",
                         "TFSMLayer": "a TFSMLayer (a TensorFlow SavedModel loaded from a path)"}

def load_embedding_model(run_dir: str | Path):
    """The run's model: its file checked before Keras opens it, then loaded in Keras' safe mode.

    ``model.keras`` may come from anyone, so before Keras reads it
    :func:`check_model_archive` makes sure that it unpacks to a bounded amount of data,
    that its weights link to no other file, and that its config names only Keras' own
    classes and those facetrip registers (no Lambda layer: no code from the file runs).

    Args:
        run_dir: the run directory.

    Returns:
        The Keras model (raw [0, 1] images in, unit embeddings out), not compiled.

    Raises:
        RunError: one line: no ``model.keras``, one refused by :func:`check_model_archive`,
            or one Keras cannot load.
    """
    import keras

    import facetrip.losses  # noqa: F401  registers TripletLoss for deserialisation
    import facetrip.models.face_resnet  # noqa: F401  registers the face ResNet's layers
    import facetrip.models.tta  # noqa: F401  registers HorizontalFlip and Shift (the test-time augmentation layers)

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} has no {MODEL_FILE}: train a model first (facetrip train).")
    check_model_archive(path)  # after the imports above: facetrip's classes must be registered
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for corrupt or foreign files
        first_line = (str(error).splitlines() or [""])[0]
        raise RunError(f"Cannot load {path}: {type(error).__name__}: {first_line[:200]}") from None


def _refuse_model(path: Path, reason: str) -> None:
    """Raise the :class:`RunError` of a model file refused before Keras opens it."""
    raise RunError(f"Cannot load {path}: {reason}.") from None  # the reason says it all


def zip_directory_extent(path: Path) -> tuple[int, int] | None:
    """``(members, central directory bytes)`` from a zip file's end record, or None where it has none.

    Python's zipfile reads the whole central directory into memory and builds an object per
    member, so its size is checked from this fixed-size record first. ZIP64 archives
    (over 2 GiB, or over 65,535 members) are reported as ``(-1, -1)``.
    """
    end_signature, end_size, locator_size = b"PK\x05\x06", 22, 20
    descriptor, _ = open_regular_file(path)  # a FIFO or a device is refused, never waited on
    with os.fdopen(descriptor, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_size = min(size, end_size + 0xFFFF)  # the record, then a comment of up to 65,535 bytes
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
    start = tail.rfind(end_signature)
    if start < 0 or len(tail) - start < end_size:
        return None
    import struct

    _, _, _, _, members, directory_size, directory_offset, _ = struct.unpack("<4s4H2LH", tail[start : start + end_size])
    zip64 = members == 0xFFFF or directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF
    if zip64 or (start >= locator_size and tail[start - locator_size : start - locator_size + 4] == b"PK\x06\x07"):
        return -1, -1
    return members, directory_size


def check_model_archive(path: Path) -> None:
    """Refuse a ``model.keras`` that could exhaust memory or disk, or run code, before Keras opens it.

    The file must be a zip archive of at most :data:`MODEL_FILE_LIMIT` bytes holding only
    the members Keras writes (:data:`MODEL_MEMBER_LIMITS`, each once, ``config.json`` and
    ``model.weights.h5`` present), each declaring at most its limit unpacked and all
    together at most :data:`MODEL_UNPACKED_LIMIT`, stored or deflated, none compressed more
    than :data:`MODEL_COMPRESSION_RATIO_LIMIT` to 1. The weights are checked by
    :func:`check_model_weights` and the config by :func:`check_model_config`.

    Args:
        path: the ``model.keras`` file.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import zipfile
    import zlib

    try:
        extent = zip_directory_extent(path)
        size = path.stat().st_size
    except FileOpenError as error:
        _refuse_model(path, f"it cannot be read ({error})")
    except OSError as error:
        _refuse_model(path, f"it cannot be read ({error.strerror or error})")
    if size > MODEL_FILE_LIMIT:
        _refuse_model(path, f"it is {readable_size(size)}, above the limit of {readable_size(MODEL_FILE_LIMIT)}")
    if extent is None:
        _refuse_model(path, "it is not a zip archive (a .keras model file is one)")
    members, directory_size = extent
    if members < 0:
        _refuse_model(path, "it is a ZIP64 archive, which no model file of this size needs")
    if members > _ZIP_MEMBER_COUNT_LIMIT or directory_size > _ZIP_DIRECTORY_LIMIT:
        _refuse_model(path, f"its zip directory lists {members} members in {readable_size(directory_size)} "
                            f"(a Keras model file has {len(MODEL_MEMBER_LIMITS)}: {', '.join(MODEL_MEMBER_LIMITS)})")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        _refuse_model(path, f"it is not a readable zip archive ({(str(error).splitlines() or [''])[0][:100]})")
    with archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            if name not in MODEL_MEMBER_LIMITS:
                _refuse_model(path, f"it holds {name!r}, which a Keras model file does not "
                                    f"(only {', '.join(MODEL_MEMBER_LIMITS)})")
            if name in seen:
                _refuse_model(path, f"it holds {name!r} twice")
            seen.add(name)
            if info.file_size > MODEL_MEMBER_LIMITS[name]:
                _refuse_model(path, f"{name!r} declares {readable_size(info.file_size)} unpacked, above the limit of "
                                    f"{readable_size(MODEL_MEMBER_LIMITS[name])}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                _refuse_model(path, f"{name!r} uses zip compression method {info.compress_type}, not stored or deflated")
            if (info.file_size > _COMPRESSION_RATIO_FLOOR
                    and info.file_size > MODEL_COMPRESSION_RATIO_LIMIT * max(info.compress_size, 1)):
                _refuse_model(path, f"{name!r} is compressed {info.file_size / max(info.compress_size, 1):,.0f} to 1 "
                                    f"(a decompression bomb: model files compress less than "
                                    f"{MODEL_COMPRESSION_RATIO_LIMIT} to 1)")
        for name in MODEL_REQUIRED_MEMBERS:
            if name not in seen:
                _refuse_model(path, f"it has no {name!r} (a Keras model file holds {', '.join(MODEL_MEMBER_LIMITS)})")
        unpacked = sum(info.file_size for info in infos)
        if unpacked > MODEL_UNPACKED_LIMIT:
            _refuse_model(path, f"its members declare {readable_size(unpacked)} unpacked, above the limit of "
                                f"{readable_size(MODEL_UNPACKED_LIMIT)}")
        try:  # at most MODEL_UNPACKED_LIMIT bytes, as checked above
            weights_data = archive.read("model.weights.h5")
            config_text = archive.read("config.json")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as error:  # a bad CRC, truncated data
            _refuse_model(path, f"its members cannot be unpacked ({(str(error).splitlines() or [''])[0][:100]})")
    check_model_weights(weights_data, path)
    check_model_config(config_text, path)


def check_model_weights(weights_data: bytes, path: Path) -> None:
    """Refuse HDF5 weights that declare more data than :data:`WEIGHTS_DATA_LIMIT` or reach outside the file.

    Reading a dataset allocates its declared shape, whatever the file stores (a chunked
    dataset with no chunks written is a few bytes on disk), so the declared sizes are added
    up before Keras reads any. External links, external storage and virtual datasets would
    make Keras read other files of this machine. Without h5py the zip member's size limit
    is the only bound.

    Args:
        weights_data: the model file's ``model.weights.h5``, its size already checked.
        path: the model file, for the message.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import io

    try:
        import h5py
    except ImportError:
        return
    name = "model.weights.h5"
    # In memory, as Keras reads it too: a zip member rereads from its start on every
    # backward seek, and HDF5 seeks back and forth.
    try:
        weights = h5py.File(io.BytesIO(weights_data), "r")
    except (OSError, ValueError) as error:
        _refuse_model(path, f"{name!r} is not an HDF5 file ({(str(error).splitlines() or [''])[0][:100]})")
    problems: list[str] = []
    counted = {"bytes": 0, "objects": 0}

    def visit(link_name: str, link) -> bool | None:
        counted["objects"] += 1
        if counted["objects"] > _WEIGHTS_OBJECT_LIMIT:
            problems.append(f"{name!r} holds more than {_WEIGHTS_OBJECT_LIMIT:,} groups, datasets and links")
        elif not isinstance(link, h5py.HardLink):
            target = getattr(link, "filename", None) or getattr(link, "path", "")
            problems.append(f"{name!r} links {link_name!r} to {target!r} (weights must all be inside the file)")
        else:
            item = weights[link_name]
            if isinstance(item, h5py.Dataset):
                if item.external or item.is_virtual:
                    problems.append(f"{name!r} stores {link_name!r} in other files (weights must all be inside it)")
                elif item.dtype.kind not in "biuf":
                    problems.append(f"{name!r} holds {link_name!r} of type {item.dtype}, not numbers")
                else:
                    counted["bytes"] += item.size * item.dtype.itemsize  # the declared shape, not what is stored
                    if counted["bytes"] > WEIGHTS_DATA_LIMIT:
                        problems.append(f"{name!r} declares more than {readable_size(WEIGHTS_DATA_LIMIT)} of weights "
                                        f"(reading {link_name!r} alone would allocate "
                                        f"{readable_size(item.size * item.dtype.itemsize)})")
        return True if problems else None  # a value other than None stops the visit

    with weights:
        try:
            weights.visititems_links(visit)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            problems.append(f"{name!r} cannot be read ({(str(error).splitlines() or [''])[0][:100]})")
    if problems:
        _refuse_model(path, problems[0])


def check_model_config(config_text: bytes, path: Path) -> None:
    """Refuse a model config that names a class facetrip does not provide, or a layer that runs code.

    Keras' safe mode refuses Python lambdas, but builds any class registered with Keras in
    this process, by any package. facetrip's models hold only Keras' own layers and the
    classes facetrip registers, so the config may name only those: every serialised
    object's ``registered_name`` must be facetrip's or Keras' own, its ``module`` Keras'
    (or facetrip's, for facetrip's classes), and no string may name an object registered
    by another package. Lambda and TFSMLayer layers are refused outright.

    Args:
        config_text: ``config.json`` of the model file.
        path: the model file, for the message.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import keras

    try:
        config = json.loads(config_text.decode("utf-8"))
    except (ValueError, RecursionError):
        _refuse_model(path, "its config.json is not JSON")
    registered = keras.saving.get_custom_objects()  # registered name -> class or function, all packages
    facetrip_names = {name for name, item in registered.items() if getattr(item, "__module__", "").startswith("facetrip.")}
    pending = [config]  # a stack, not recursion: the nesting depth comes from the file
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if item in registered and item not in facetrip_names:
                _refuse_model(path, f"it names {item!r}, which facetrip does not provide")
        elif isinstance(item, dict):
            pending.extend(item.values())
            class_name = item.get("class_name")
            if not isinstance(class_name, str):
                continue
            if class_name in _CODE_RUNNING_CLASSES:
                _refuse_model(path, f"it holds {_CODE_RUNNING_CLASSES[class_name]}, which facetrip never saves and "
                                    f"does not run")
            registered_name, module = item.get("registered_name"), item.get("module")
            if registered_name in facetrip_names:
                continue
            keras_module = module is None or module in ("keras", "builtins") or (
                isinstance(module, str) and module.startswith("keras."))
            foreign_registration = isinstance(registered_name, str) and (
                ">" in registered_name or registered_name in registered)
            if foreign_registration or not keras_module:
                shown = registered_name if isinstance(registered_name, str) and registered_name else class_name
                _refuse_model(path, f"it names the class {shown!r} of module {shown_value(module)}, which facetrip does "
                                    f"not provide")
