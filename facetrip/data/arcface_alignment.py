"""ArcFace crops onto dlib's face-chip geometry, and back: one fixed similarity transform.

insightface's face sets hold 112 x 112 crops aligned on the ArcFace five-point template
(:data:`ARCFACE_TEMPLATE_112`: the eye centres, the nose tip and the mouth corners, in
pixels). facetrip's face network reads dlib's 150 x 150 chips
(``dlib.get_face_chip(rgb, shape, size=150, padding=0.25)``, see
:mod:`facetrip.data.face_chips`). Both are frames fixed to the face, so one similarity
transform (rotation, one scale, translation) carries an ArcFace crop into the chip frame
without finding the face again.

Where dlib's chip puts those five landmarks follows from dlib's own definition of the chip
(``get_face_chip_details`` in dlib/image_transforms/interpolation.h, davisking/dlib): the
detected landmarks are mapped, in least squares, onto a template in the unit square,
padded: ``chip = (template + padding) / (1 + 2 padding) * size``. For a 68-point shape the
template is dlib's 68-point mean face, of which dlib fits points 27-54 and 60-64 (no jaw,
eyebrows or lower lip); for the 5-point shape facetrip cuts its chips on, it is five
points (eye corners and the base of the nose) that are the mean face's points 45, 42, 36,
39 and 33, scaled by 1.004 and raised by 0.003 (0.3 px of the chip at most). The chip's
geometry is therefore the 68-point mean face's, carried into the 5-point template's frame,
and :data:`DLIB_CHIP_LANDMARKS_150` takes from it the eye centres (the means of points
36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54).

The two templates differ in shape (the ArcFace mouth is narrower for its eyes, its nose
tip higher), so the least-squares fit (:func:`similarity_transform`, Umeyama 1991) leaves
residuals of 1.3 px at the eyes, 1.6 px at the nose tip and 3.0 px at the mouth corners
of the 150-pixel chip (2.2 px root mean square); no point lands within 0.5 px. Measured
with dlib's 68-point predictor on the chips of 40 LFW photos, the landmarks of real chips
sit 0.8 px on average from :data:`DLIB_CHIP_LANDMARKS_150` (0.1 and 0.5 px at the eyes,
0.7 at the nose tip, 1.5 and 1.4 at the mouth corners).

Coordinates are pixels with pixel centres at integers, (x, y), as dlib, insightface and
OpenCV use them. The 112-pixel crop does not cover the chip's last 18 rows (below the
chin); they come out black, as dlib leaves what lies outside a photo. This module needs
numpy only.
"""

from __future__ import annotations

import numpy as np

ARCFACE_CROP_SIZE = 112
CHIP_SIZE = 150  # as facetrip.data.face_chips.CHIP_SIZE and CHIP_PADDING: dlib's face network reads these
CHIP_PADDING = 0.25

# insightface's ArcFace template (insightface/utils/face_align.py, ``arcface_dst``), (x, y)
# in a 112 x 112 crop: the eye centres on the image's left and right, the nose tip, the mouth
# corners on the left and right.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)  # (5, 2)

# dlib's 68-point mean face in the unit square, the points facetrip needs, by their 68-point
# index (dlib/image_transforms/interpolation.h, get_face_chip_details: mean_face_shape_x /
# mean_face_shape_y, whose entry i is point i + 17).
DLIB_MEAN_FACE_68 = {
    30: (0.490127, 0.515625),  # nose tip
    33: (0.490127, 0.628106),  # base of the nose
    36: (0.121737, 0.216423),  # eye on the image's left: outer corner, then around the eye
    37: (0.187122, 0.178758),
    38: (0.265825, 0.179852),
    39: (0.334606, 0.231733),  # its inner corner
    40: (0.260918, 0.245099),
    41: (0.182743, 0.244077),
    42: (0.645647, 0.231733),  # eye on the image's right: inner corner, then around the eye
    43: (0.714428, 0.178758),
    44: (0.793132, 0.179852),
    45: (0.858516, 0.216423),  # its outer corner
    46: (0.79751, 0.245099),
    47: (0.719335, 0.244077),
    48: (0.254149, 0.780233),  # mouth corner on the image's left
    54: (0.726104, 0.780233),  # mouth corner on the image's right
}

# The template dlib fits a 5-point shape to (same file), in the 5-point model's order: the
# image's right eye outer and inner corner, the left eye outer and inner corner, the base of
# the nose; the 68-point mean face's points 45, 42, 36, 39 and 33.
DLIB_FIVE_POINT_TEMPLATE = np.array(
    [[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677], [0.1205750620789, 0.2137274526848],
     [0.3340850613712, 0.2290642403242], [0.4901123135679, 0.6277975316475]]
)  # (5, 2)
FIVE_POINT_TEMPLATE_AS_68 = (45, 42, 36, 39, 33)


def dlib_mean_face_landmarks() -> np.ndarray:
    """The ArcFace template's five landmarks on dlib's 68-point mean face, in the unit square.

    Returns:
        (5, 2) (x, y): eye centres (means of points 36-41 and 42-47), nose tip (30) and
        mouth corners (48, 54), in :data:`ARCFACE_TEMPLATE_112`'s order.
    """
    mean_face = {index: np.array(point) for index, point in DLIB_MEAN_FACE_68.items()}
    left_eye = np.mean([mean_face[index] for index in range(36, 42)], axis=0)  # (2,)
    right_eye = np.mean([mean_face[index] for index in range(42, 48)], axis=0)  # (2,)
    return np.stack([left_eye, right_eye, mean_face[30], mean_face[48], mean_face[54]])  # (5, 2)


def five_point_frame_of_mean_face() -> np.ndarray:
    """The similarity transform that carries dlib's 68-point mean face into its 5-point template's frame.

    The least-squares fit of the mean face's points 45, 42, 36, 39 and 33 onto
    :data:`DLIB_FIVE_POINT_TEMPLATE`: a scale of 1.004, an upward shift of 0.003 and
    residuals under 0.001 (in the unit square), so a 5-point chip and a 68-point chip of
    one face differ by at most 0.3 px at 150 pixels.

    Returns:
        (2, 3) matrix on unit-square points.
    """
    corresponding = np.array([DLIB_MEAN_FACE_68[index] for index in FIVE_POINT_TEMPLATE_AS_68])  # (5, 2)
    return similarity_transform(corresponding, DLIB_FIVE_POINT_TEMPLATE)


def dlib_chip_landmarks(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """Where dlib's 5-point face chip puts the eye centres, nose tip and mouth corners of its mean face.

    chip = (F(mean_face) + padding) / (1 + 2 padding) * size - 1/2

    F (:func:`five_point_frame_of_mean_face`) places the 68-point mean face where the
    5-point template, which facetrip's chips are cut on, expects it. The half pixel is
    dlib's: ``chip_details`` centres a rectangle of ``size`` template units on the
    template's centre and samples it at ``size`` pixel centres, so template coordinate t
    lands at pixel t - 1/2 when the photo is at the chip's scale (found by cutting chips of
    a photo of dots with ``dlib.extract_image_chip``; at other scales the landmarks move by
    under 0.2 px).

    Args:
        size: the chip's side in pixels.
        padding: the chip's padding, as given to ``dlib.get_face_chip``.

    Returns:
        (5, 2) (x, y) chip pixels, in :data:`ARCFACE_TEMPLATE_112`'s order.
    """
    unit_square = apply_affine(five_point_frame_of_mean_face(), dlib_mean_face_landmarks())  # (5, 2)
    return (unit_square + padding) / (1 + 2 * padding) * size - 0.5  # (5, 2)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The similarity transform that maps ``source`` points onto ``target`` in least squares (Umeyama 1991).

    Minimises sum_i || s R source_i + t - target_i ||^2 over a rotation R (no reflection),
    a scale s > 0 and a translation t:

        Sigma = (1/n) sum_i (target_i - mean_t)(source_i - mean_s)^T = U D V^T
        R = U S V^T, S = diag(1, det(U V^T)),  s = tr(D S) / ((1/n) sum_i ||source_i - mean_s||^2)
        t = mean_t - s R mean_s

    Args:
        source: (n, 2) points, n >= 2, not all equal.
        target: (n, 2) points.

    Returns:
        (2, 3) matrix ``[s R | t]``: target ~ matrix @ (x, y, 1).
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"similarity_transform needs two (n, 2) point sets, n >= 2, "
                         f"not {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)  # (2,)
    source_centred, target_centred = source - source_mean, target - target_mean  # (n, 2)
    source_variance = (source_centred**2).sum(axis=1).mean()
    if source_variance == 0:
        raise ValueError("similarity_transform needs source points that are not all equal")
    covariance = target_centred.T @ source_centred / len(source)  # (2, 2)
    u, d, vt = np.linalg.svd(covariance)
    reflection = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])  # (2, 2)
    rotation = u @ reflection @ vt  # (2, 2)
    scale = np.trace(np.diag(d) @ reflection) / source_variance
    translation = target_mean - scale * rotation @ source_mean  # (2,)
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)  # (2, 3)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (n, 2) mapped by a (2, 3) affine matrix: matrix @ (x, y, 1)."""
    points = np.asarray(points, float)
    return points @ matrix[:, :2].T + matrix[:, 2]  # (n, 2)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The (2, 3) affine matrix that undoes ``matrix``."""
    linear_inverse = np.linalg.inv(matrix[:, :2])  # (2, 2)
    return np.concatenate([linear_inverse, -(linear_inverse @ matrix[:, 2])[:, None]], axis=1)  # (2, 3)


def arcface_template(crop_size: int = ARCFACE_CROP_SIZE) -> np.ndarray:
    """The ArcFace template in a square crop of ``crop_size`` pixels: scaled as insightface scales it.

    Returns:
        (5, 2) (x, y) = ARCFACE_TEMPLATE_112 * crop_size / 112.
    """
    return ARCFACE_TEMPLATE_112 * (crop_size / ARCFACE_CROP_SIZE)  # (5, 2)


def arcface_to_chip_matrix(
    crop_size: int = ARCFACE_CROP_SIZE, chip_size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """The similarity transform from ArcFace crop pixels to dlib chip pixels.

    The least-squares fit of the ArcFace template onto :func:`dlib_chip_landmarks`; for
    112-pixel crops and 150-pixel chips: scale 1.455, rotation 0.30 degrees.

    Args:
        crop_size: the ArcFace crop's side in pixels.
        chip_size: the chip's side.
        padding: the chip's padding.

    Returns:
        (2, 3) matrix: chip point = matrix @ (x, y, 1) of the crop point.
    """
    return similarity_transform(arcface_template(crop_size), dlib_chip_landmarks(chip_size, padding))


DLIB_CHIP_LANDMARKS_150 = dlib_chip_landmarks()  # (5, 2)
ARCFACE_TO_CHIP = arcface_to_chip_matrix()  # (2, 3), 112-pixel crop -> 150-pixel chip
CHIP_TO_ARCFACE = invert_affine(ARCFACE_TO_CHIP)  # (2, 3)


def warp_affine(
    pixels: np.ndarray,
    output_to_input: np.ndarray,
    output_size: tuple[int, int],
    samples_per_side: int = 1,
    outside: str = "black",
) -> np.ndarray:
    """An image resampled on another grid with bilinear interpolation.

    output[y, x] = mean over sub-pixel samples p of bilinear(pixels, output_to_input @ (p, 1))

    Args:
        pixels: (h, w) or (h, w, c) image.
        output_to_input: (2, 3) matrix from output pixels (x, y) to input pixels.
        output_size: ``(height, width)`` of the output.
        samples_per_side: samples per output pixel along each side, averaged; more than 1
            keeps detail from aliasing when the output shrinks the input.
        outside: what lies outside the input: ``"black"`` (zero), or ``"edge"`` (the
            nearest border pixel repeated).

    Returns:
        (height, width[, c]) image of ``pixels``' dtype (rounded and clipped for integers).
    """
    if outside not in ("black", "edge"):
        raise ValueError(f"outside is 'black' or 'edge', not {outside!r}")
    image = np.asarray(pixels)
    grey = image.ndim == 2
    source = (image[..., None] if grey else image).astype(np.float64)  # (h, w, c)
    if outside == "black":
        source = np.pad(source, ((1, 1), (1, 1), (0, 0)))  # (h + 2, w + 2, c): a black frame
        output_to_input = output_to_input + np.array([[0, 0, 1.0], [0, 0, 1.0]])  # into the framed image
    height, width = output_size
    offsets = (np.arange(samples_per_side) + 0.5) / samples_per_side - 0.5  # sub-pixel sample positions
    result = np.zeros((height, width, source.shape[2]))  # (H, W, c)
    for offset_y in offsets:
        for offset_x in offsets:
            grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float64)  # (H, W) each
            grid_x += offset_x
            grid_y += offset_y
            input_x = output_to_input[0, 0] * grid_x + output_to_input[0, 1] * grid_y + output_to_input[0, 2]  # (H, W)
            input_y = output_to_input[1, 0] * grid_x + output_to_input[1, 1] * grid_y + output_to_input[1, 2]  # (H, W)
            result += _bilinear(source, input_x, input_y)
    result /= len(offsets) ** 2
    if np.issubdtype(image.dtype, np.integer):
        limits = np.iinfo(image.dtype)
        result = np.clip(np.rint(result), limits.min, limits.max)
    result = result.astype(image.dtype)
    return result[..., 0] if grey else result


def _bilinear(source: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(H, W, c) bilinear samples of ``source`` (h, w, c) at (x, y), coordinates clamped to its border."""
    h, w = source.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    left = np.minimum(np.floor(x).astype(np.intp), w - 2) if w > 1 else np.zeros(x.shape, np.intp)  # (H, W)
    top = np.minimum(np.floor(y).astype(np.intp), h - 2) if h > 1 else np.zeros(y.shape, np.intp)  # (H, W)
    right, bottom = np.minimum(left + 1, w - 1), np.minimum(top + 1, h - 1)
    across = (x - left)[..., None]  # (H, W, 1)
    down = (y - top)[..., None]  # (H, W, 1)
    upper = source[top, left] * (1 - across) + source[top, right] * across  # (H, W, c)
    lower = source[bottom, left] * (1 - across) + source[bottom, right] * across  # (H, W, c)
    return upper * (1 - down) + lower * down


def _square_rgb(pixels: np.ndarray, what: str) -> np.ndarray:
    """(s, s), (s, s, 1), (s, s, 3) or (s, s, 4) uint8 pixels as (s, s, 3) RGB."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{what} is uint8 pixels, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]  # (s, s, 1)
    square = pixels.ndim == 3 and pixels.shape[0] == pixels.shape[1] >= 2
    if not square or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} is a square (s, s) grey or (s, s, 3) RGB image, not shape {pixels.shape}")
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)  # (s, s, 3)
    return pixels[..., :3]  # (s, s, 3), alpha dropped


def chip_from_arcface_crop(pixels: np.ndarray, chip_size: int = CHIP_SIZE, outside: str = "black") -> np.ndarray:
    """An ArcFace-aligned crop warped onto dlib's face-chip geometry, as facetrip's face network reads it.

    Args:
        pixels: (s, s, 3) uint8 RGB (or (s, s) grey) crop aligned on the ArcFace template,
            s = 112 in insightface's sets (another size: the template is scaled to it).
        chip_size: the chip's side (dlib's face network: 150).
        outside: what fills the chip where the crop does not reach (its last rows, below
            the chin): ``"black"`` as dlib does, or ``"edge"`` (the crop's border repeated).

    Returns:
        (chip_size, chip_size, 3) uint8 RGB chip.
    """
    crop = _square_rgb(pixels, "an ArcFace crop")  # (s, s, 3)
    crop_to_chip = arcface_to_chip_matrix(crop.shape[0], chip_size)  # (2, 3)
    return warp_affine(crop, invert_affine(crop_to_chip), (chip_size, chip_size), outside=outside)


def arcface_crop_from_chip(
    chip: np.ndarray, crop_size: int = ARCFACE_CROP_SIZE, outside: str = "black"
) -> np.ndarray:
    """A dlib face chip cut on the ArcFace template: the reverse of :func:`chip_from_arcface_crop`.

    The chip covers only the middle of the ArcFace crop (some 100 of its 112 pixels): the
    rest is filled as ``outside`` says. Each crop pixel averages 2 x 2 bilinear samples, as
    the crop shrinks the chip by about 0.7.

    Args:
        chip: (s, s, 3) uint8 RGB (or (s, s) grey) chip cut by ``dlib.get_face_chip`` with
            padding 0.25 (s = 150 for dlib's face network).
        crop_size: the ArcFace crop's side.
        outside: ``"black"`` or ``"edge"`` (the chip's border repeated).

    Returns:
        (crop_size, crop_size, 3) uint8 RGB crop.
    """
    chip = _square_rgb(chip, "a face chip")  # (s, s, 3)
    crop_to_chip = arcface_to_chip_matrix(crop_size, chip.shape[0])  # (2, 3)
    return warp_affine(chip, crop_to_chip, (crop_size, crop_size), samples_per_side=2, outside=outside)
