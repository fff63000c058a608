"""Photos and cache files built to hurt: hidden GIF frames, PostScript, swapped files, FIFOs, links.

Whatever a file holds, facetrip decodes only the frame it checked, opens only the formats it
lists, uses the bytes it checked and never waits on a FIFO. A cache file is used only when it is
a regular file holding a well-formed 150 x 150 RGB chip labelled, right after its PNG header, with
the key of the photo being looked up and the alignment version: another photo's chip, another
alignment's, damaged files and files crafted with a wrong label or wrong chip data are computed
again. The label is not a signature: a file made up with the right label by someone who can write
the user's cache folder is used as it is.
"""

import hashlib
import importlib.util
import io
import json
import math
import os
import resource
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from conftest import REPO, run_cli
from helpers import call_within
from facetrip.data import chip_cache, chip_cutting
from facetrip.data.chip_cache import chip_cache_dir
from facetrip.data.chip_png import encode_chip
from facetrip.data.face_chips import chip_from_encoded, chip_from_file
from facetrip.data.images import IMAGE_EXTENSIONS, ImageReadError, decode_bytes, decode_file, read_image_bytes
from facetrip.data.orl import orl_faces_root
from facetrip.data.model_input import encoded_inputs

_spec = importlib.util.spec_from_file_location("fuzz_inputs", REPO / "scripts" / "fuzz_inputs.py")
fuzz_inputs = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_inputs"] = fuzz_inputs  # its dataclasses look their module up by name
_spec.loader.exec_module(fuzz_inputs)
gif_bytes = fuzz_inputs.gif_bytes  # GIFs written by hand: a small logical screen, frames of any size

# How long a read may take before it counts as waiting forever (a chip takes well under a second).
HANG_SECONDS = 30


# ---------------------------------------------------------------------------------------------
# GIFs written by hand: a small logical screen, frames of any size


def tensorflow_decoded_shape(encoded: bytes) -> tuple[int, ...]:
    import tensorflow as tf

    return tuple(tf.io.decode_image(encoded, expand_animations=False).shape)


def test_a_gif_is_decoded_as_the_first_frame_it_checked(tmp_path):
    """PIL checks a 100 x 100 GIF, TensorFlow would decode its 3000 x 3000 second frame: facetrip hands it the checked frame."""
    hidden_frame = gif_bytes((100, 100), [(100, 100), (3000, 3000)])
    assert len(hidden_frame) < 10_000 and tensorflow_decoded_shape(hidden_frame)[:2] == (3000, 3000)
    photo = tmp_path / "hidden.gif"
    photo.write_bytes(hidden_frame)

    assert decode_file(photo)[0].size == (100, 100)
    assert tensorflow_decoded_shape(read_image_bytes(photo))[:2] == (100, 100)
    (from_bytes,), _ = encoded_inputs([hidden_frame], face_chips=False)
    assert tensorflow_decoded_shape(from_bytes)[:2] == (100, 100)

    first_frame_too_large = gif_bytes((100, 100), [(12_000, 12_000)])  # the first frame spills out of the screen
    with pytest.raises(ImageReadError, match="too large to decode"):
        decode_bytes(first_frame_too_large)


def test_gif_bytes_never_reach_tensorflows_decoder():
    import tensorflow as tf

    from facetrip.data import preprocess_encoded

    with pytest.raises(tf.errors.InvalidArgumentError, match="GIF"):
        preprocess_encoded(gif_bytes((100, 100), [(100, 100)]), (16, 14), 1)


# The memory `facetrip verify` may use. On a 2-core machine a verify of two ORL faces with the
# tiny run needs between 0.6 and 0.75 GiB of data segment (RLIMIT_DATA: heap and private
# mappings, thread stacks included); 2 GiB leaves room for other machines, while the hidden
# 30000 x 30000 frame alone takes 2.5 GiB as TensorFlow decodes it (RGB, uint8). RLIMIT_AS is
# left alone: TensorFlow reserves gigabytes of address space it never uses, and more with
# more cores. The thread pools are fixed at 2 so the need does not grow with the core count.
VERIFY_DATA_LIMIT_BYTES = 2 << 30
HIDDEN_FRAME_SIDE = 30_000


def _limit_memory() -> None:
    """In the child, before it starts: at most VERIFY_DATA_LIMIT_BYTES of data, and no core dump."""
    resource.setrlimit(resource.RLIMIT_DATA, (VERIFY_DATA_LIMIT_BYTES, VERIFY_DATA_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def facetrip_command() -> list[str]:
    script = Path(sys.executable).with_name("facetrip")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from facetrip.cli import app; app()"]


@pytest.mark.slow
def test_verify_of_a_gif_with_a_huge_hidden_frame_stays_within_bounded_memory(finished_run, tmp_path):
    run_dir, _ = finished_run
    hidden = tmp_path / "hidden.gif"
    hidden.write_bytes(gif_bytes((100, 100), [(100, 100), (HIDDEN_FRAME_SIDE, HIDDEN_FRAME_SIDE)]))
    assert hidden.stat().st_size < 400_000
    threads = {name: "2" for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run(
        [*facetrip_command(), "verify", str(hidden), str(orl_faces_root() / "s1" / "1.pgm"), "--run", str(run_dir), "--json"],
        capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory,
        env={**os.environ, **threads, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode in (0, 2), result.stderr[-2000:]
    if result.returncode == 2:
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    else:
        assert math.isfinite(json.loads(result.stdout)["distance"])


# ---------------------------------------------------------------------------------------------
# Only the formats facetrip lists


EPS_BYTES = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def eps_plugin_calls(monkeypatch):
    """Records every time PIL's EPS plugin is asked to open a file, or to run Ghostscript."""
    Image.init()  # every plugin registered now, so the recording one below is not replaced
    calls = []
    open_eps, accept_eps = Image.OPEN["EPS"]
    monkeypatch.setitem(Image.OPEN, "EPS", (lambda *arguments: calls.append("open") or open_eps(*arguments), accept_eps))

    def no_ghostscript(*arguments, **options):
        calls.append("ghostscript")
        raise OSError("Ghostscript is not run in these tests")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    return calls


def test_postscript_named_jpg_is_refused_without_asking_the_eps_plugin(tmp_path, eps_plugin_calls, fresh_cache):
    postscript = tmp_path / "photo.jpg"
    postscript.write_bytes(EPS_BYTES)
    for read in (decode_file, read_image_bytes, chip_from_file):
        with pytest.raises(ImageReadError, match="not a readable image") as raised:
            read(postscript)
        assert str(postscript) in str(raised.value)
    with pytest.raises(ImageReadError, match="not a readable image"):
        chip_from_encoded(EPS_BYTES)
    result = run_cli("verify", postscript, postscript)
    assert result.exit_code == 2 and "photo.jpg" in result.output and "Traceback" not in result.output
    assert eps_plugin_calls == []

    # Every extension facetrip lists still opens.
    grey = Image.fromarray(np.arange(48 * 40, dtype=np.uint32).reshape(48, 40).astype(np.uint8))
    for extension in IMAGE_EXTENSIONS:
        photo = tmp_path / f"face{extension}"
        (grey.convert("1") if extension == ".pbm" else grey).save(photo)
        assert decode_file(photo)[0].size == (40, 48), extension


# ---------------------------------------------------------------------------------------------
# The bytes checked are the bytes used


def noise_photo(seed: int) -> bytes:
    """A small grey PNG of noise: no face, so its chip is cut from the whole image (quickly)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(60, 50), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_bytes_checked_are_the_bytes_used(tmp_path, monkeypatch, fresh_cache):
    """A file replaced just after PIL has opened it: what comes out is still the photo that was checked."""
    photo = tmp_path / "photo.png"
    checked, replacement = noise_photo(1), gif_bytes((100, 100), [(100, 100), (3000, 3000)])
    open_image = Image.open

    def replaced_once_opened(*arguments, **options):
        image = open_image(*arguments, **options)
        photo.write_bytes(replacement)  # someone else's file now stands where the checked one was
        return image

    monkeypatch.setattr(Image, "open", replaced_once_opened)
    photo.write_bytes(checked)
    assert read_image_bytes(photo) == checked

    monkeypatch.setenv("FACETRIP_CACHE_DIR", "")  # computed here, from what was read
    photo.write_bytes(checked)
    from_file = chip_from_file(photo)
    chip_cache._memo.clear()
    np.testing.assert_array_equal(from_file.pixels, chip_from_encoded(checked).pixels)


# ---------------------------------------------------------------------------------------------
# FIFOs: refused at once, never waited on


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_given_as_a_photo_is_refused_without_waiting(tmp_path, fresh_cache):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    for read in (chip_from_file, read_image_bytes, decode_file):
        with pytest.raises(ImageReadError, match="not a regular file") as raised:
            call_within(HANG_SECONDS, lambda: read(fifo), fifo)
        assert str(fifo) in str(raised.value)


def cache_file_of(data: bytes) -> Path:
    """Where the chip of the photo ``data`` is cached."""
    return chip_cache._cache_path(chip_cache.photo_key(data))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_the_cache_is_refused_without_waiting_and_replaced(fresh_cache, detector_calls):
    data = noise_photo(2)
    cached = cache_file_of(data)
    cached.parent.mkdir(parents=True)
    os.mkfifo(cached)
    chip = call_within(HANG_SECONDS, lambda: chip_from_encoded(data), cached)
    assert len(detector_calls) == 1
    assert stat.S_ISREG(os.lstat(cached).st_mode)  # replaced by the chip
    chip_cache._memo.clear()
    np.testing.assert_array_equal(chip_from_encoded(data).pixels, chip.pixels)
    assert len(detector_calls) == 1  # and read back


# ---------------------------------------------------------------------------------------------
# Links in the cache: not followed, not written through


def test_a_link_in_the_cache_is_neither_followed_nor_written_through(fresh_cache, detector_calls, tmp_path):
    data = noise_photo(3)
    chip = chip_from_encoded(data)
    cached = cache_file_of(data)
    target = tmp_path / "elsewhere.png"
    os.replace(cached, target)  # the right chip, but reached through a link facetrip did not write
    cached.symlink_to(target)
    target_bytes = target.read_bytes()
    chip_cache._memo.clear()

    np.testing.assert_array_equal(chip_from_encoded(data).pixels, chip.pixels)
    assert len(detector_calls) == 2  # computed again rather than read through the link
    assert not cached.is_symlink() and stat.S_ISREG(os.lstat(cached).st_mode)
    assert target.read_bytes() == target_bytes

    # A link planted where a writer would put its temporary file, at a name guessable from
    # the process and thread, is not written through either.
    other = noise_photo(4)
    other_cached = cache_file_of(other)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a face chip")
    guessable = other_cached.with_name(f".{other_cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    guessable.parent.mkdir(parents=True, exist_ok=True)
    guessable.symlink_to(victim)
    chip_from_encoded(other)
    assert victim.read_text() == "not a face chip"
    assert not other_cached.is_symlink()
    chip_cache._memo.clear()
    chip_from_encoded(other)
    assert len(detector_calls) == 3  # the file written in its place is read back


# ---------------------------------------------------------------------------------------------
# Cache files that are not the photo's chip: computed again and replaced


def _another_photos_chip(data: bytes) -> None:
    """The cache file of another photo copied over this photo's."""
    other = noise_photo(99)
    chip_from_encoded(other)
    cache_file_of(data).write_bytes(cache_file_of(other).read_bytes())


def _another_alignments_chip(data: bytes) -> None:
    """This photo's chip as cached by another alignment version, copied into this version's folder."""
    cached = cache_file_of(data)
    chip_from_encoded(data)
    aligned_now = cached.read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chip_cutting, "ALIGNMENT_VERSION", "another-alignment_v1")
        chip_cache._memo.clear()
        chip_from_encoded(data)
        cached.write_bytes(cache_file_of(data).read_bytes())
    assert cached.read_bytes() != aligned_now


def _truncated(data: bytes) -> None:
    cached = cache_file_of(data)
    chip_from_encoded(data)
    cached.write_bytes(cached.read_bytes()[:1000])


def _not_chip_sized(data: bytes) -> None:
    """A well-formed PNG with the chip's text chunks, but 100 x 100."""
    chip = chip_cutting.FaceChip(np.zeros((100, 100, 3), np.uint8), 1)
    cache_file_of(data).write_bytes(encode_chip(chip))


def _claims_a_huge_image(data: bytes) -> None:
    """A PNG header claiming 65535 x 65535 pixels."""
    cached = cache_file_of(data)
    chip_from_encoded(data)
    png = bytearray(cached.read_bytes())
    png[16:24] = struct.pack(">II", 65535, 65535)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    cached.write_bytes(bytes(png))


def _a_directory(data: bytes) -> None:
    cache_file_of(data).mkdir()


def forged_cache_file(label: str, pixels: np.ndarray, texts: dict, label_after_pixels: bool = False) -> bytes:
    """A cache file made up here: a PNG of ``pixels`` with the text chunks ``texts`` and a ``tEXt`` chunk
    ``facetrip:cache_entry`` = ``label`` right after the IHDR chunk (or, if asked, after the pixels)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    png = buffer.getvalue()
    payload = b"facetrip:cache_entry\0" + label.encode("latin-1")
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    at = len(png) - 12 if label_after_pixels else 8 + 25  # before IEND, or after the signature and IHDR
    return png[:at] + chunk + png[at:]


def forged_chip_texts(faces_detected="3", detector="cnn") -> dict:
    return {"facetrip:faces_detected": faces_detected, "facetrip:detector": detector,
            "facetrip:alignment": chip_cutting.ALIGNMENT_VERSION}


def forged_label(data: bytes) -> str:
    """The label of the photo ``data``'s cache file without its keyed tag: its SHA-256 and the alignment version."""
    return f"{hashlib.sha256(data).hexdigest()} {chip_cutting.ALIGNMENT_VERSION}"


FORGED_PIXELS = np.full((150, 150, 3), (200, 30, 90), np.uint8)


def _forged_for_another_photo(data: bytes) -> None:
    """A well-formed chip labelled with another photo's key."""
    forged = forged_cache_file(forged_label(noise_photo(99)), FORGED_PIXELS, forged_chip_texts())
    cache_file_of(data).write_bytes(forged)


def _forged_for_another_alignment(data: bytes) -> None:
    label = f"{hashlib.sha256(data).hexdigest()} another-alignment_v1"
    cache_file_of(data).write_bytes(forged_cache_file(label, FORGED_PIXELS, forged_chip_texts()))


def _forged_label_after_the_pixels(data: bytes) -> None:
    cache_file_of(data).write_bytes(forged_cache_file(forged_label(data), FORGED_PIXELS, forged_chip_texts(),
                                                      label_after_pixels=True))


def _forged_negative_detection_count(data: bytes) -> None:
    cache_file_of(data).write_bytes(forged_cache_file(forged_label(data), FORGED_PIXELS, forged_chip_texts("-1")))


def _forged_unknown_detector(data: bytes) -> None:
    cache_file_of(data).write_bytes(forged_cache_file(forged_label(data), FORGED_PIXELS,
                                                      forged_chip_texts(detector="made-up")))


def _forged_grey_chip(data: bytes) -> None:
    cache_file_of(data).write_bytes(forged_cache_file(forged_label(data), FORGED_PIXELS[:, :, 0], forged_chip_texts()))


@pytest.mark.parametrize("spoil", [_another_photos_chip, _another_alignments_chip, _truncated, _not_chip_sized,
                                   _claims_a_huge_image, _a_directory, _forged_for_another_photo,
                                   _forged_for_another_alignment, _forged_label_after_the_pixels,
                                   _forged_negative_detection_count, _forged_unknown_detector, _forged_grey_chip],
                         ids=lambda spoil: spoil.__name__.strip("_"))
def test_a_cache_file_that_is_not_this_photos_chip_is_computed_again(fresh_cache, detector_calls, spoil):
    data = noise_photo(5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACETRIP_CACHE_DIR", "")
        expected = chip_from_encoded(data)
    chip_cache._memo.clear()
    cache_file_of(data).parent.mkdir(parents=True, exist_ok=True)
    spoil(data)
    chip_cache._memo.clear()
    calls_before = len(detector_calls)

    chip = chip_from_encoded(data)
    np.testing.assert_array_equal(chip.pixels, expected.pixels)
    assert chip.faces_detected == expected.faces_detected
    assert len(detector_calls) == calls_before + 1
    cached = cache_file_of(data)
    if not cached.is_dir():  # a directory cannot be replaced by a file; it is only ignored
        chip_cache._memo.clear()
        chip_from_encoded(data)
        assert len(detector_calls) == calls_before + 1  # replaced by this photo's chip
    assert not [path.name for path in cached.parent.iterdir() if path.name.endswith(".tmp")]


def _forged_with_the_photos_label(data: bytes) -> None:
    """A made-up chip with this photo's key and alignment in its label, as anyone can compute them: no keyed tag."""
    cache_file_of(data).write_bytes(forged_cache_file(forged_label(data), FORGED_PIXELS, forged_chip_texts()))


def test_a_cache_file_forged_with_the_photos_label_is_computed_again(fresh_cache, detector_calls):
    """The label is public (the photo's SHA-256 and the alignment); only the keyed tag makes an entry trusted."""
    test_a_cache_file_that_is_not_this_photos_chip_is_computed_again(fresh_cache, detector_calls,
                                                                     _forged_with_the_photos_label)


def test_cache_files_are_the_owners_alone_whatever_the_umask(fresh_cache):
    previous_umask = os.umask(0o002)
    try:
        chip_from_encoded(noise_photo(6))
    finally:
        os.umask(previous_umask)
    (cached,) = chip_cache_dir().glob("*/*.png")
    assert stat.S_IMODE(os.stat(cached).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cached.parent).st_mode) == 0o700