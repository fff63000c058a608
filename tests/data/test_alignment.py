"""Face alignment: the similarity fit against known transforms, the warp, dlib's landmarks on ORL."""

import numpy as np
import pytest

from facetrip.data.alignment import (
    TEMPLATE,
    TEMPLATE_FRAME,
    LandmarkFinder,
    align_encoded,
    align_pixels,
    alignment_frame,
    similarity_transform,
    template_in,
    warp,
)
from facetrip.data.images import read_image_bytes
from facetrip.data.orl import orl_faces_root


def orl_pixels(identity: int, image: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(orl_faces_root() / f"s{identity}" / f"{image}.pgm"))


def rotation(angle_degrees: float) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


@pytest.mark.parametrize("angle, scale, shift", [(0.0, 1.0, (0.0, 0.0)), (17.0, 1.7, (3.0, -5.0)), (-120.0, 0.4, (40.0, 2.0))])
def test_similarity_transform_recovers_a_known_transform(rng, angle, scale, shift):
    source = rng.normal(size=(5, 2)) * 20
    matrix = scale * rotation(angle)
    target = source @ matrix.T + np.array(shift)
    fitted, translation = similarity_transform(source, target)
    np.testing.assert_allclose(fitted, matrix, atol=1e-9)
    np.testing.assert_allclose(translation, shift, atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit_and_never_reflects(rng):
    """Against a mirror image target the best similarity is a rotation: det(A) > 0, and no
    nearby similarity has a smaller squared error."""
    source = rng.normal(size=(5, 2))
    target = source * np.array([-1.0, 1.0]) + rng.normal(scale=0.05, size=(5, 2))  # mirrored + noise
    matrix, translation = similarity_transform(source, target)
    assert np.linalg.det(matrix) > 0

    def error(a, t):
        return np.sum((source @ a.T + t - target) ** 2)

    best = error(matrix, translation)
    scale = np.sqrt(np.linalg.det(matrix))
    angle = np.rad2deg(np.arctan2(matrix[1, 0], matrix[0, 0]))
    for d_angle, d_scale, d_shift in [(1, 0, 0), (-1, 0, 0), (0, 0.01, 0), (0, -0.01, 0), (0, 0, 0.01)]:
        nudged = (scale + d_scale) * rotation(angle + d_angle)
        assert error(nudged, translation + d_shift) >= best


def test_similarity_transform_refuses_coincident_points():
    with pytest.raises(ValueError, match="distinct"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))


def test_template_in_a_frame_keeps_its_shape_and_stays_centred():
    np.testing.assert_allclose(template_in(TEMPLATE_FRAME), TEMPLATE)
    doubled = template_in((2 * TEMPLATE_FRAME[0], 2 * TEMPLATE_FRAME[1]))
    np.testing.assert_allclose(doubled, 2 * TEMPLATE)
    square = template_in((112, 112))  # wider than the template frame: scale 1, shifted right by 10
    np.testing.assert_allclose(square, TEMPLATE + np.array([10.0, 0.0]))
    assert alignment_frame((32, 26)) == (112, 91)
    assert alignment_frame((224, 184)) == (224, 184)


def test_warp_moves_a_pixel_where_the_transform_says():
    image = np.zeros((40, 30), np.uint8)
    image[10, 5] = 255  # (x, y) = (5, 10)
    matrix, translation = 2.0 * np.eye(2), np.array([3.0, 1.0])  # (5, 10) -> (13, 21)
    warped = warp(image, matrix, translation, (50, 40))
    assert warped.shape == (50, 40)
    assert np.unravel_index(np.argmax(warped), warped.shape) == (21, 13)
    colour = warp(np.stack([image] * 3, axis=-1), matrix, translation, (50, 40))
    assert colour.shape == (50, 40, 3)
    np.testing.assert_array_equal(colour[..., 1], warped)


def test_dlib_finds_five_plausible_landmarks_on_an_orl_face():
    pixels = orl_pixels(1, 1)
    landmarks = LandmarkFinder()(pixels)
    assert landmarks.face_found
    assert landmarks.points.shape == (5, 2)
    height, width = pixels.shape
    assert np.all((landmarks.points >= 0) & (landmarks.points < [width, height]))
    eyes, nose = landmarks.points[:4], landmarks.points[4]
    assert np.all(eyes[:, 1] < nose[1])  # the eyes are above the base of the nose
    assert eyes[:2, 0].min() > eyes[2:, 0].max()  # two corners per eye, eye order as dlib's


def test_alignment_puts_the_landmarks_on_the_template():
    """Aligning, then finding the landmarks again, lands within a few pixels of the template."""
    frame = (112, 92)
    aligned, face_found = align_pixels(orl_pixels(15, 2), frame)
    assert face_found and aligned.shape == frame and aligned.dtype == np.uint8
    again = LandmarkFinder()(aligned)
    assert np.abs(again.points - template_in(frame)).max() < 4.0


def test_align_encoded_returns_png_of_the_frame():
    from io import BytesIO

    from PIL import Image

    encoded, face_found = align_encoded(read_image_bytes(orl_faces_root() / "s3" / "4.pgm"), (64, 52))
    assert face_found
    with Image.open(BytesIO(encoded)) as image:
        assert image.format == "PNG" and image.size == (52, 64) and image.mode == "L"
