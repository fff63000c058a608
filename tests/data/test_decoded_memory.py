"""Decoded photos take bounded memory: photos longer than the working size are decoded reduced
(JPEG) or resized right after decoding, and a photo that only decodes at full size is refused
when that would take more than MAX_FULL_DECODE_BYTES.

The memory is measured in child processes (their own peak resident size): cutting the chip of a
10000 x 10000 PNG, or running `facetrip verify` on it, takes at most 1.2 times what an ordinary
photo takes.
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.data import images
from facetrip.data.face_chips import chip_from_encoded
from facetrip.data.images import (MAX_IMAGE_PIXELS, WORKING_MAX_SIDE, ImageReadError, decodable_bytes, decode_bytes,
                                  decode_passing_as_is)
from facetrip.data.orl import orl_faces_root
from facetrip.data.photo_pixels import rgb_from_image

ORL_PHOTO = orl_faces_root() / "s1" / "1.pgm"
# Peak memory of a child handed a huge photo, against one handed an ordinary photo.
MEMORY_RATIO = 1.2


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def grey_png_streamed(path: Path, width: int, height: int) -> None:
    """A valid grey-in-RGB PNG of ``width`` x ``height``, written a row at a time (never held as pixels)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(6)
    row = b"\x00" + b"\x80" * (3 * width)  # filter "none", mid-grey RGB
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def photo_with_a_face(width: int, height: int, enlarge: int) -> Image.Image:
    """A grey background with an ORL face, ``enlarge`` times its size, in the middle."""
    face = Image.open(ORL_PHOTO).convert("RGB")
    photo = Image.new("RGB", (width, height), (120, 130, 140))
    big_face = face.resize((face.width * enlarge, face.height * enlarge), Image.Resampling.BICUBIC)
    photo.paste(big_face, ((width - big_face.width) // 2, (height - big_face.height) // 2))
    return photo


# ---------------------------------------------------------------------------------------------
# Peak memory of a child process


CHIP_OF_FILE = """
import resource, sys
from facetrip.data.face_chips import chip_from_file
from facetrip.data.images import ImageReadError
try:
    outcome = f"chip {chip_from_file(sys.argv[1]).faces_detected}"
except ImageReadError as error:
    outcome = f"refused {error}"
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, outcome)
"""


def chip_in_child(photo: Path) -> tuple[int, str]:
    """``(peak resident KiB, outcome)`` of a fresh process cutting a photo's chip, the chip cache off."""
    result = subprocess.run([sys.executable, "-c", CHIP_OF_FILE, str(photo)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "FACETRIP_CACHE_DIR": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    peak, outcome = result.stdout.strip().split(" ", 1)
    return int(peak), outcome


def test_the_chip_of_a_10000_x_10000_png_takes_the_memory_of_an_ordinary_photo(tmp_path):
    """Decoded in full, its RGB pixels alone would take 300 MB (PIL holds 400): it is refused from its header."""
    huge = tmp_path / "huge.png"
    grey_png_streamed(huge, 10_000, 10_000)
    assert huge.stat().st_size < 1_000_000
    ordinary_peak, ordinary = chip_in_child(ORL_PHOTO)
    huge_peak, outcome = chip_in_child(huge)
    assert ordinary == "chip 1"
    assert outcome.startswith(f"refused {huge} is too large to decode (10000 x 10000 pixels"), outcome
    assert huge_peak <= MEMORY_RATIO * ordinary_peak, (huge_peak, ordinary_peak)


LARGE_JPEG = """
import sys
from PIL import Image
face = Image.open(sys.argv[2]).convert("RGB").resize((92 * 12, 112 * 12), Image.Resampling.BICUBIC)
photo = Image.new("RGB", (8000, 6000), (120, 130, 140))
photo.paste(face, ((8000 - face.width) // 2, (6000 - face.height) // 2))
photo.save(sys.argv[1], quality=90)
"""


def large_jpeg(path: Path) -> Path:
    """An 8000 x 6000 JPEG with a face (48 megapixels, as a phone's), made in a child process: 192 MB as RGB pixels."""
    subprocess.run([sys.executable, "-c", LARGE_JPEG, str(path), str(ORL_PHOTO)], check=True, timeout=300)
    return path


def test_the_chip_of_a_48_megapixel_jpeg_is_cut_from_a_reduced_decode(tmp_path):
    """libjpeg decodes it at 1/4, 2000 x 1500: the chip takes less memory than a third of the full frame would."""
    large = large_jpeg(tmp_path / "large.jpg")
    ordinary_peak, _ = chip_in_child(ORL_PHOTO)
    large_peak, outcome = chip_in_child(large)
    assert outcome == "chip 1"
    assert large_peak - ordinary_peak < 64 << 10, (large_peak, ordinary_peak)  # KiB


# ---------------------------------------------------------------------------------------------
# The working size


def test_a_photo_within_the_working_size_is_decoded_as_it_is():
    photo = photo_with_a_face(WORKING_MAX_SIDE, 1200, 4)
    for image_format in ("PNG", "JPEG"):
        data = encoded(photo, image_format)
        image, passes_as_is = decode_passing_as_is(data)
        plain = Image.open(io.BytesIO(data))
        assert image.size == plain.size == (WORKING_MAX_SIDE, 1200) and passes_as_is
        np.testing.assert_array_equal(np.asarray(image), np.asarray(plain))
        assert decodable_bytes(data) == data


def test_a_longer_jpeg_is_decoded_at_a_fraction_of_its_size_by_libjpeg():
    """The largest of 1/2, 1/4 and 1/8 that fits: 4100 is over twice 2048, so a quarter."""
    photo = photo_with_a_face(4100, 3000, 8)
    data = encoded(photo, "JPEG", quality=92)
    image, passes_as_is = decode_passing_as_is(data)
    assert image.size == (1025, 750) and not passes_as_is
    half = encoded(photo.crop((0, 0, 4096, 3000)), "JPEG", quality=92)
    assert decode_bytes(half)[0].size == (2048, 1500)
    reduced = Image.open(io.BytesIO(decodable_bytes(data)))  # what TensorFlow decodes: the reduced frame, as PNG
    assert reduced.format == "PNG" and reduced.size == (1025, 750)
    assert chip_from_encoded(data).faces_detected == 1


def test_a_longer_png_is_resized_to_the_working_size_keeping_its_orientation():
    """Stored turned (EXIF orientation 6, as a phone stores a portrait): resized, then turned upright."""
    upright = photo_with_a_face(2000, 3000, 8)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    image, image_format = decode_bytes(stored)
    assert image_format == "PNG" and image.size == (WORKING_MAX_SIDE, 1365)
    assert rgb_from_image(image).shape == (WORKING_MAX_SIDE, 1365, 3)  # upright: taller than wide
    turned_back = Image.open(io.BytesIO(decodable_bytes(stored)))
    assert turned_back.size == (WORKING_MAX_SIDE, 1365) and rgb_from_image(turned_back).shape == (WORKING_MAX_SIDE, 1365, 3)
    chip = chip_from_encoded(stored)
    assert chip.faces_detected == 1


def test_a_palette_photo_is_resized_as_rgb():
    photo = photo_with_a_face(3000, 2100, 8).convert("P", palette=Image.Palette.ADAPTIVE)
    image, _ = decode_bytes(encoded(photo, "PNG"))
    assert image.mode == "RGB" and image.size == (WORKING_MAX_SIDE, 1434)


# ---------------------------------------------------------------------------------------------
# What decodes at full size


@pytest.fixture
def small_decode_budget(monkeypatch):
    """A budget of 3.5 bytes a pixel of a 2100 x 2100 photo: PNG takes 4 at full size, a progressive 4:2:0 JPEG 3."""
    monkeypatch.setattr(images, "MAX_FULL_DECODE_BYTES", int(2100 * 2100 * 3.5))
    return photo_with_a_face(2100, 2100, 8)


def test_a_photo_decoded_at_full_size_is_refused_above_the_budget(small_decode_budget):
    photo = small_decode_budget
    limit = int(images.MAX_FULL_DECODE_BYTES // 4)
    with pytest.raises(ImageReadError, match=rf"photo.png is too large to decode \(2100 x 2100 pixels; facetrip decodes "
                                             rf"PNG images of at most {limit:,} pixels, baseline JPEG of at most "
                                             rf"{MAX_IMAGE_PIXELS:,}\): resize it first"):
        decode_bytes(encoded(photo, "PNG"), "photo.png")
    with pytest.raises(ImageReadError, match="WEBP images of at most"):
        decode_bytes(encoded(photo, "WEBP"))
    with pytest.raises(ImageReadError, match="progressive or multi-scan JPEG images of at most"):
        decode_bytes(encoded(photo, "JPEG", progressive=True, subsampling=0))  # 4:4:4: 6 bytes a pixel
    assert decode_bytes(encoded(photo, "JPEG", progressive=True, subsampling=2))[0].size == (1050, 1050)  # 4:2:0: 3
    assert decode_bytes(encoded(photo, "JPEG", subsampling=0))[0].size == (1050, 1050)  # baseline: nothing at full size


def test_a_jpeg_whose_first_scan_lacks_a_component_counts_as_held_in_full():
    """libjpeg keeps every coefficient of a JPEG whose first scan holds only some of its components."""
    data = bytearray(encoded(photo_with_a_face(300, 200, 1), "JPEG"))
    assert images._first_jpeg_scan_holds_every_component(bytes(data))
    scan = data.index(b"\xff\xda")
    assert data[scan + 4] == 3
    data[scan + 4] = 1  # a scan of the luminance alone
    assert not images._first_jpeg_scan_holds_every_component(bytes(data))
    assert not images._first_jpeg_scan_holds_every_component(b"\xff\xd8\x00garbage")


# ---------------------------------------------------------------------------------------------
# verify end to end


def facetrip_command() -> list[str]:
    script = Path(sys.executable).with_name("facetrip")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from facetrip.cli import app; app()"]


# Runs a command and prints its exit code and peak resident KiB as the last line of stderr.
MEASURED = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
"""


def verify_in_child(run_dir: Path, first: Path, second: Path) -> tuple[int, int, str, str]:
    """``(exit code, peak resident KiB, stdout, stderr)`` of `facetrip verify --json` in a child process, the cache off."""
    threads = {name: "2" for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", MEASURED, *facetrip_command(), "verify", str(first), str(second),
                             "--run", str(run_dir), "--json"], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **threads, "TF_CPP_MIN_LOG_LEVEL": "2", "FACETRIP_CACHE_DIR": ""})
    *stderr, measured = result.stderr.splitlines()
    code, peak = map(int, measured.split())
    return code, peak, result.stdout, "\n".join(stderr)


@pytest.mark.slow
def test_verify_of_huge_photos_stays_within_the_memory_of_ordinary_ones(pretrained_run, tmp_path):
    huge = tmp_path / "huge.png"
    grey_png_streamed(huge, 10_000, 10_000)
    large = large_jpeg(tmp_path / "large.jpg")
    code, ordinary_peak, _, stderr = verify_in_child(pretrained_run, ORL_PHOTO, ORL_PHOTO)
    assert code == 0, stderr[-2000:]
    code, huge_peak, _, stderr = verify_in_child(pretrained_run, huge, ORL_PHOTO)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "too large to decode (10000 x 10000 pixels" in lines[0], stderr[-2000:]
    assert huge_peak <= MEMORY_RATIO * ordinary_peak, (huge_peak, ordinary_peak)
    code, large_peak, stdout, stderr = verify_in_child(pretrained_run, large, ORL_PHOTO)
    assert code == 0, stderr[-2000:]
    assert json.loads(stdout)["faces_detected"] == [1, 1]
    assert large_peak <= MEMORY_RATIO * ordinary_peak, (large_peak, ordinary_peak)
