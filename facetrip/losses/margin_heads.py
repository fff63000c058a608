"""Margin heads of a cosine classifier: the logits of NormFace, ArcFace and CosFace.

A cosine classifier compares a unit embedding ``e_i`` with unit class centres ``c_j``:
``cos(theta_ij) = e_i . c_j``. A margin head turns these cosines into softmax logits, making
the target class ``y_i`` harder to win so that identities end up further apart:

    cosine  (NormFace):  z_ij = s * cos(theta_ij)                      for every j
    arcface (ArcFace):   z_iy = s * cos(theta_iy + m)                  (additive angular margin)
    cosface (CosFace):   z_iy = s * (cos(theta_iy) - m)                (additive cosine margin)
    and for both, the other classes j != y_i:  z_ij = s * cos(theta_ij)

ArcFace's ``cos(theta + m)`` stops decreasing once ``theta + m > pi``; as in insightface's
arcface_torch (``easy_margin = False``) the target logit is ``cos(theta + m)`` where
``cos(theta) > cos(pi - m)`` and ``cos(theta) - m * sin(pi - m)`` elsewhere (a CosFace-like
penalty that keeps the logit decreasing in theta). ``cos(theta + m)`` is computed as
``cos(theta) cos(m) - sin(theta) sin(m)`` with ``sin(theta) = sqrt(1 - cos^2)``, the square
root taken of a value clipped to ``[tiny, 1]``, so the gradient stays finite at ``cos = +-1``.

Pure TensorFlow on tensors, no Keras state: the training classifiers
(:mod:`facetrip.training.embedding_trainer`, :mod:`facetrip.training.sampled_classifier`) call
:func:`margin_logits` on their cosines.
"""

from __future__ import annotations

import math

import tensorflow as tf

# The heads, and each head's scale s and margin m when the config leaves them at 0 ("the head's own default").
# cosine keeps facetrip's NormFace scale; arcface and cosface take insightface's s = 64 and the papers' margins.
HEADS = ("cosine", "arcface", "cosface")
DEFAULT_SCALES = {"cosine": 16.0, "arcface": 64.0, "cosface": 64.0}
DEFAULT_MARGINS = {"cosine": 0.0, "arcface": 0.5, "cosface": 0.35}

# The floor under 1 - cos^2 before its square root: d sqrt(x) / dx = 1 / (2 sqrt(x)) stays finite, and below the
# floor the clip passes no gradient at all (cos = +-1 exactly).
_SINE_SQUARED_FLOOR = 1e-12


def resolve_head(head: str, scale: float = 0.0, margin: float = 0.0) -> tuple[str, float, float]:
    """The head, scale and margin to train with, 0 standing for the head's own default.

    Args:
        head: ``"cosine"``, ``"arcface"`` or ``"cosface"`` (any case).
        scale: s > 0, or 0 for :data:`DEFAULT_SCALES` (cosine 16, arcface and cosface 64).
        margin: m > 0, or 0 for :data:`DEFAULT_MARGINS` (arcface 0.5 rad, cosface 0.35); the
            cosine head has no margin and takes only 0.

    Returns:
        ``(head, scale, margin)``, the head in lower case.

    Raises:
        ValueError: an unknown head, a negative scale or margin, or a margin for the cosine head.
    """
    name = str(head).lower()
    if name not in HEADS:
        raise ValueError(f"train.classification_head must be one of {', '.join(HEADS)}, not {head!r}.")
    if scale < 0 or margin < 0:
        raise ValueError(f"The classification scale and margin must be 0 (the head's default) or more, "
                         f"not {scale} and {margin}.")
    if name == "cosine" and margin != 0:
        raise ValueError(f"train.classification_margin applies to the arcface and cosface heads; the cosine head has "
                         f"no margin (set it to 0, or choose train.classification_head = \"arcface\"), not {margin}.")
    return name, float(scale or DEFAULT_SCALES[name]), float(margin or DEFAULT_MARGINS[name])


def arcface_target_cosine(cosine, margin: float):
    """ArcFace's target cosine ``cos(theta + m)``, with insightface's fallback beyond ``theta = pi - m``.

        f(c) = c cos(m) - sqrt(1 - c^2) sin(m)     where c > cos(pi - m)
        f(c) = c - m sin(pi - m)                   elsewhere

    Args:
        cosine: (...) float, cos(theta) in [-1, 1] (values outside are clipped for the sine).
        margin: m, in radians.

    Returns:
        (...) the same shape and dtype.
    """
    cosine = tf.convert_to_tensor(cosine)
    sine_squared = tf.clip_by_value(1.0 - tf.square(cosine), _SINE_SQUARED_FLOOR, 1.0)  # (...)
    sine = tf.sqrt(sine_squared)  # (...)
    shifted = cosine * math.cos(margin) - sine * math.sin(margin)  # (...) cos(theta + m)
    fallback = cosine - margin * math.sin(math.pi - margin)  # (...)
    return tf.where(cosine > math.cos(math.pi - margin), shifted, fallback)


def margin_logits(cosines, targets, head: str, scale: float, margin: float):
    """Softmax logits of a margin head from the cosines of a batch with the compared centres.

        z_ij = s * cos(theta_ij)           j != y_i, and every j for the cosine head
        z_iy = s * cos(theta_iy + m)       arcface (with :func:`arcface_target_cosine`'s fallback)
        z_iy = s * (cos(theta_iy) - m)     cosface

    The cosine head is exactly ``scale * cosines`` (the same operation, the same bits).

    Args:
        cosines: (B, C) float, cos(e_i, c_j).
        targets: (B,) int, each row's target column y_i in [0, C).
        head: one of :data:`HEADS` (lower case; see :func:`resolve_head`).
        scale: s.
        margin: m (ignored by the cosine head).

    Returns:
        (B, C) logits, the dtype of ``cosines``.
    """
    if head == "cosine":
        return scale * cosines  # (B, C)
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}.")
    targets = tf.cast(tf.reshape(targets, [-1]), tf.int32)  # (B,)
    target_cosines = tf.gather(cosines, targets, batch_dims=1)  # (B,)
    if head == "arcface":
        target_cosines = arcface_target_cosine(target_cosines, margin)  # (B,)
    else:
        target_cosines = target_cosines - margin  # (B,)
    is_target = tf.one_hot(targets, tf.shape(cosines)[1], on_value=True, off_value=False)  # (B, C)
    return scale * tf.where(is_target, target_cosines[:, None], cosines)  # (B, C)
