"""insightface's verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``), read without running their code.

    FILE.bin = pickle of (images, flags): images 2i and 2i + 1 are pair i, flags[i] whether they show one person
             -> restricted unpickler (data only) -> checked (two images a pair, each a decodable square crop)
             -> VerificationBin (-> :mod:`facetrip.data.prepared_bin`: the images as a run's model reads them)

Each image is an encoded (JPEG / PNG) 112 x 112 crop aligned on the ArcFace template; the
flags are a list of bools or a 1-D NumPy bool array. Old files are Python 2 pickles, read as
insightface reads them (``encoding="bytes"``).

A pickle can name any Python function, and unpickling calls it. :class:`VerificationBinUnpickler`
answers only the names such a file holds, and not with the functions themselves: ``numpy.dtype``,
``numpy.ndarray``, numpy's ``_reconstruct``, ``_frombuffer`` and ``scalar`` and ``_codecs.encode``
(how Python 3 writes bytes at protocol 2) map to stand-ins that accept a bool array, a bool
or latin-1 text and nothing else, and build the array from its checked bytes themselves. Any
other name is refused before anything is called, so no code of the file runs.

As a source (``bin:PATH``), the images are labelled by their pair (``pair 1``, ...): the file
names no people. This module needs numpy and PIL only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from facetrip.data.errors import DataError
from facetrip.untrusted_files import read_untrusted_bytes

# lfw.bin is some 60 MB, cfp_fp.bin 100 MB; the whole file and its images are held in memory once.
MAX_BIN_BYTES = 4 << 30
# Fewest pairs a verification set must hold.
MIN_PAIRS = 2
# The longest global name quoted in an error message.
_SHOWN_NAME_CHARACTERS = 120


class VerificationBinError(DataError):
    """A file that is not an insightface verification set as facetrip reads it: one line naming it and why."""


@dataclasses.dataclass
class VerificationBin:
    """An insightface verification set, read and checked.

    Attributes:
        path: the file.
        images: (2P,) encoded images; ``images[2 * i]`` and ``images[2 * i + 1]`` are pair i.
        same: (P,) bool, whether pair i shows one person.
        fingerprint: 12 hex digits of the SHA-1 of the file's bytes.
    """

    path: Path
    images: list[bytes]
    same: np.ndarray
    fingerprint: str

    @property
    def num_pairs(self) -> int:
        return len(self.same)


# ----------------------------------------------------------------------------- the restricted unpickler


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a Python global that a verification set never holds.

    Attributes:
        name: ``module.name`` as the pickle gives it.
    """

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` takes it, nothing calls it."""


class _BoolDtype:
    """Stands for ``numpy.dtype("b1")``: numpy's state for it (byte order and flags) is accepted and not used."""

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("a bool dtype with fields or a sub-array")


class _BoolArray:
    """Stands for a 1-D bool ``numpy.ndarray`` until its state gives its shape and bytes.

    Attributes:
        values: (P,) bool, or None before the pickle gave the array's state.
    """

    def __init__(self, values: np.ndarray | None = None):
        self.values = values

    def __setstate__(self, state) -> None:
        # numpy writes (version, shape, dtype, is_fortran, data); very old pickles leave out the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array state that is not numpy's")
        shape, dtype, _, data = state[-4:]
        self.values = _bool_values(data, dtype, shape)


def _bool_values(data, dtype, shape) -> np.ndarray:
    """(P,) bool of a 1-D bool array's raw bytes, checked against its dtype and shape."""
    if not isinstance(dtype, _BoolDtype):
        raise pickle.UnpicklingError("an array whose dtype is not bool")
    if not (isinstance(shape, tuple) and len(shape) == 1 and type(shape[0]) is int):
        raise pickle.UnpicklingError(f"a flags array of shape {shape!r}, not one dimension")
    if not isinstance(data, (bytes, bytearray)) or len(data) != shape[0]:
        raise pickle.UnpicklingError("a bool array whose bytes do not match its shape")
    return np.frombuffer(bytes(data), np.uint8) != 0  # (P,)


def _bool_dtype(name, align=False, copy=False) -> _BoolDtype:
    """``numpy.dtype(name, align, copy)`` for a bool dtype only."""
    if name not in ("b1", "?", "bool", b"b1", b"?", b"bool"):
        raise pickle.UnpicklingError(f"a numpy dtype {name!r}, not bool")
    return _BoolDtype()


def _reconstruct(subtype, shape, typecode) -> _BoolArray:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``: an empty array whose state comes next."""
    if subtype is not _NdarrayType or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError("an array that is not a plain numpy.ndarray")
    return _BoolArray()


def _frombuffer(buffer, dtype, shape, order="C") -> _BoolArray:
    """numpy's ``_frombuffer(buffer, dtype, shape, order)`` (pickle protocol 5) for a 1-D bool array."""
    return _BoolArray(_bool_values(buffer, dtype, shape))


def _bool_scalar(dtype, data=None) -> bool:
    """numpy's ``scalar(dtype, data)`` for a ``numpy.bool_``, as a Python bool."""
    if not isinstance(dtype, _BoolDtype) or not isinstance(data, bytes) or len(data) != 1:
        raise pickle.UnpicklingError("a numpy scalar that is not a bool")
    return data != b"\x00"


def _latin1_bytes(text, encoding) -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 pickles bytes at protocols 0 to 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}, not latin1")
    return text.encode("latin-1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
# (module, name) -> what the pickle gets instead: the only globals a verification set holds.
_STAND_INS: dict[tuple[str, str], Callable | type] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): _bool_dtype,
    ("numpy", "ndarray"): _NdarrayType,
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_MODULES},
    **{(module, "scalar"): _bool_scalar for module in _NUMPY_MODULES},
    **{(module, "_frombuffer"): _frombuffer for module in _NUMERIC_MODULES},
}


class VerificationBinUnpickler(pickle.Unpickler):
    """An unpickler for data only: bytes, bools, lists, tuples and a 1-D bool NumPy array.

    Every global the pickle names is looked up here (``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
    ``OBJ`` and the extension codes all come through :meth:`find_class`): the few of
    :data:`_STAND_INS` get their stand-ins, any other raises :class:`RefusedGlobalError`
    before anything is imported or called.
    """

    def find_class(self, module: str, name: str):
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise RefusedGlobalError(f"{module}.{name}")
        return stand_in


def load_restricted(data: bytes):
    """The object a pickle holds, read by :class:`VerificationBinUnpickler` as insightface reads it.

    Args:
        data: the pickle's bytes.

    Returns:
        The object; a bool array is a :class:`_BoolArray`.

    Raises:
        RefusedGlobalError: the pickle names a global that is not data.
        pickle.UnpicklingError, EOFError, ...: the bytes are not a (whole) pickle.
    """
    return VerificationBinUnpickler(io.BytesIO(data), encoding="bytes").load()


# ----------------------------------------------------------------------------- reading a file


def read_verification_bin(path: str | Path) -> VerificationBin:
    """Read and check an insightface verification set.

    Args:
        path: the ``.bin`` file.

    Returns:
        :class:`VerificationBin`, every image checked to decode as a square crop.

    Raises:
        UntrustedFileError: missing, not a regular file, unreadable, or over :data:`MAX_BIN_BYTES`.
        VerificationBinError: not a pickle, cut short, naming a global that is not data, not
            ``(images, flags)`` with two encoded images a pair and at least :data:`MIN_PAIRS`
            pairs, or an image that does not decode.
    """
    path = Path(path).expanduser()
    data = read_untrusted_bytes(path, MAX_BIN_BYTES, "verification set (.bin)")
    fingerprint = hashlib.sha1(data).hexdigest()[:12]
    try:
        loaded = load_restricted(data)
    except RefusedGlobalError as error:
        shown = repr(error.name)[1:-1][:_SHOWN_NAME_CHARACTERS]
        raise VerificationBinError(f"{path} names the Python global {shown}, which no verification set holds: "
                                   f"refused, and nothing of the file was run.") from None
    except EOFError:
        raise VerificationBinError(f"{path} is cut short (its pickle ends early): copy the file again.") from None
    except MemoryError:
        raise VerificationBinError(f"{path} declares more data than it holds: it is damaged.") from None
    except Exception as error:  # noqa: BLE001 - any failure of bytes from anyone is one line
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        if "truncated" in detail:
            raise VerificationBinError(f"{path} is cut short (its pickle ends early): copy the file again.") from None
        raise VerificationBinError(f"{path} is not an insightface verification set, a pickle of (images, flags) "
                                   f"({detail}).") from None
    del data
    images, same = _checked_structure(loaded, path)
    _check_images_decode(images, path)
    return VerificationBin(path=path, images=images, same=same, fingerprint=fingerprint)


def _checked_structure(loaded, path: Path) -> tuple[list[bytes], np.ndarray]:
    """``(images, same)`` of what a verification set's pickle held: ``(images, flags)``, two images a pair."""
    def refuse(what: str) -> VerificationBinError:
        return VerificationBinError(f"{path} holds {what}, not insightface's (images, flags): it is not a "
                                    f"verification set (lfw.bin, cfp_fp.bin, ...).")

    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        size = f" of {len(loaded)}" if isinstance(loaded, (tuple, list)) else ""
        raise refuse(f"a {type(loaded).__name__}{size}")
    images, flags = loaded
    if not isinstance(images, (list, tuple)):
        raise refuse(f"images as a {type(images).__name__}")
    bad = next((index for index, image in enumerate(images) if type(image) is not bytes), None)
    if bad is not None:
        raise refuse(f"image {bad} as a {type(images[bad]).__name__}, not encoded bytes,")
    if isinstance(flags, _BoolArray):
        if flags.values is None:
            raise refuse("a flags array without its values")
        same = flags.values
    elif isinstance(flags, (list, tuple)):
        bad = next((index for index, flag in enumerate(flags) if type(flag) is not bool), None)
        if bad is not None:
            raise refuse(f"flag {bad} as a {type(flags[bad]).__name__}, not a bool,")
        same = np.array(flags, dtype=bool).reshape(len(flags))  # (P,)
    else:
        raise refuse(f"flags as a {type(flags).__name__}")
    if len(images) != 2 * len(same):
        raise refuse(f"{len(images):,} images for {len(same):,} pairs (two images a pair)")
    if len(same) < MIN_PAIRS:
        raise refuse(f"{len(same)} pair{'s' if len(same) != 1 else ''} (at least {MIN_PAIRS})")
    return list(images), same


def _check_images_decode(images: Sequence[bytes], path: Path) -> None:
    """Raise :class:`VerificationBinError` naming the first image that does not decode, or is not square."""
    from facetrip.data.images import ImageReadError, decode_bytes

    for index, data in enumerate(images):
        try:
            image, _ = decode_bytes(data, f"image {index} of {path}")
        except ImageReadError as error:
            raise VerificationBinError(f"{error}.") from None
        width, height = image.size
        image.close()
        if width != height:
            raise VerificationBinError(f"image {index} of {path} is {width} x {height} pixels: a verification set "
                                       f"holds square ArcFace crops (112 x 112).")


# ----------------------------------------------------------------------------- its images as a source


def pair_names(num_pairs: int) -> list[str]:
    """The identity names a verification set's images get: ``pair 1`` .. ``pair P``, in pair order."""
    return [f"pair {number}" for number in range(1, num_pairs + 1)]


def pair_labels(num_pairs: int) -> np.ndarray:
    """(2P,) int64 label of each image of a verification set: its pair's index into :func:`pair_names`."""
    return np.repeat(np.arange(num_pairs, dtype=np.int64), 2)
