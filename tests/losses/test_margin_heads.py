"""Margin heads (facetrip.losses.margin_heads) against explicit NumPy loops: ArcFace, CosFace, their edges."""

import math

import numpy as np
import pytest
import tensorflow as tf
from facetrip.losses.margin_heads import (
    DEFAULT_MARGINS,
    DEFAULT_SCALES,
    HEADS,
    arcface_target_cosine,
    margin_logits,
    resolve_head,
)


def reference_logits(cosines, targets, head, scale, margin):
    """Explicit loops over (i, j), in float64 with the angle itself (acos), not the sine expansion.

    j != y_i or the cosine head: s cos(theta). arcface: s cos(theta + m) where theta < pi - m
    (cos(theta) > cos(pi - m)), else s (cos(theta) - m sin(pi - m)) (insightface, easy_margin False).
    cosface: s (cos(theta) - m).
    """
    logits = np.zeros(cosines.shape)
    for i in range(cosines.shape[0]):
        for j in range(cosines.shape[1]):
            cosine = float(cosines[i, j])
            value = cosine
            if j == targets[i] and head == "arcface":
                theta = math.acos(min(1.0, max(-1.0, cosine)))
                value = math.cos(theta + margin) if cosine > math.cos(math.pi - margin) else \
                    cosine - margin * math.sin(math.pi - margin)
            elif j == targets[i] and head == "cosface":
                value = cosine - margin
            logits[i, j] = scale * value
    return logits


def edge_cosines(margin):
    """Target cosines at every edge: theta 0 and pi (cos +-1), near 0, near pi - m on both sides, beyond it."""
    boundary = math.cos(math.pi - margin)
    return np.array([1.0, -1.0, math.cos(1e-3), math.cos(0.3), boundary + 1e-3, boundary - 1e-3,
                     math.cos(math.pi - margin + 0.2), math.cos(math.pi - 1e-3), 0.0, 0.5], np.float32)


@pytest.mark.parametrize("head, margin", [("arcface", 0.5), ("arcface", 0.2), ("cosface", 0.35), ("cosine", 0.0)])
def test_logits_match_the_explicit_loop_on_random_cosines_and_at_the_edges(head, margin):
    rng = np.random.default_rng(0)
    scale = 64.0
    edges = edge_cosines(max(margin, 0.1))  # (E,)
    cosines = rng.uniform(-1, 1, size=(len(edges), 6)).astype(np.float32)  # (E, C)
    targets = rng.integers(0, 6, size=len(edges))
    cosines[np.arange(len(edges)), targets] = edges  # each edge as a target cosine
    random_rows = rng.uniform(-1, 1, size=(8, 6)).astype(np.float32)
    cosines = np.concatenate([cosines, random_rows])  # (E + 8, C)
    targets = np.concatenate([targets, rng.integers(0, 6, size=8)])
    logits = margin_logits(tf.constant(cosines), tf.constant(targets), head, scale, margin).numpy()
    # float32 cosines: cos(theta + m) from the sine expansion is within a few ulp of s; at cos -> 1 the sine's
    # sqrt(1 - c^2) magnifies float32 rounding of c (1e-7 -> 3e-4 in the sine), times s sin(m)
    np.testing.assert_allclose(logits, reference_logits(cosines, targets, head, scale, margin), rtol=1e-5, atol=5e-3)


def test_arcface_takes_the_fallback_exactly_beyond_pi_minus_m():
    """Where cos(theta) <= cos(pi - m) the logit is cos(theta) - m sin(pi - m); above it cos(theta + m)."""
    margin = 0.5
    boundary = np.float32(math.cos(math.pi - margin))
    below, above = np.nextafter(boundary, np.float32(-2)), np.nextafter(boundary, np.float32(2))
    cosines = np.array([below, boundary, above, -1.0], np.float32)
    result = arcface_target_cosine(tf.constant(cosines), margin).numpy()
    fallback = cosines - np.float32(margin * math.sin(math.pi - margin))
    np.testing.assert_allclose(result[[0, 1, 3]], fallback[[0, 1, 3]], rtol=1e-6)  # at the boundary itself: fallback
    theta = math.acos(float(above))
    np.testing.assert_allclose(result[2], math.cos(theta + margin), atol=1e-5)
    # insightface's fallback is not continuous: at theta = pi - m the angle gives cos(pi) = -1 and the fallback
    # cos(pi - m) - m sin(pi - m) = -0.8776 - 0.2397 = -1.1173 (m = 0.5); both decrease in theta
    np.testing.assert_allclose(result[2] - result[1], -1 - math.cos(math.pi - margin) + margin * math.sin(margin),
                               atol=1e-4)


@pytest.mark.parametrize("head", ["arcface", "cosface", "cosine"])
def test_gradients_are_finite_at_cos_plus_and_minus_one(head):
    cosines = tf.constant([[1.0, -1.0, 0.3], [-1.0, 1.0, 0.0], [1.0 - 1e-7, 0.2, -1.0 + 1e-7]], tf.float32)
    targets = tf.constant([0, 0, 2])
    with tf.GradientTape() as tape:
        tape.watch(cosines)
        logits = margin_logits(cosines, targets, head, 64.0, DEFAULT_MARGINS[head])
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
    gradient = tape.gradient(loss, cosines).numpy()
    assert np.all(np.isfinite(logits.numpy())) and np.all(np.isfinite(gradient)), gradient


def test_cosine_head_is_exactly_the_scaled_cosines():
    cosines = tf.constant(np.random.default_rng(1).uniform(-1, 1, (4, 5)).astype(np.float32))
    np.testing.assert_array_equal(margin_logits(cosines, tf.constant([0, 1, 2, 3]), "cosine", 16.0, 0.0).numpy(),
                                  (16.0 * cosines).numpy())


def test_zero_scale_and_margin_are_the_head_s_defaults():
    assert resolve_head("cosine") == ("cosine", 16.0, 0.0)
    assert resolve_head("ArcFace") == ("arcface", 64.0, 0.5)
    assert resolve_head("cosface", 0, 0) == ("cosface", 64.0, 0.35)
    assert resolve_head("arcface", 30.0, 0.3) == ("arcface", 30.0, 0.3)
    assert set(DEFAULT_SCALES) == set(DEFAULT_MARGINS) == set(HEADS)
    with pytest.raises(ValueError, match="cosine head has no margin"):
        resolve_head("cosine", 16.0, 0.2)
    with pytest.raises(ValueError, match="must be one of cosine, arcface, cosface, not 'sphereface'"):
        resolve_head("sphereface")


def test_the_config_offers_exactly_these_heads():
    from facetrip.config import WORD_CHOICES

    assert WORD_CHOICES["train.classification_head"] == HEADS
