"""Weight-space interpolation between the pretrained and the fine-tuned network (WiSE-FT)."""

import numpy as np
import pytest

from facetrip.models.weight_interpolation import interpolate_model, interpolate_weights


def test_interpolation_is_the_straight_line_between_the_two_weight_sets(rng):
    pretrained = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    fine_tuned = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    for alpha in (0.0, 0.3, 0.5, 1.0):
        mixed = interpolate_weights(pretrained, fine_tuned, alpha)
        for start, end, result in zip(pretrained, fine_tuned, mixed):
            assert result.dtype == np.float32
            np.testing.assert_allclose(result, start + alpha * (end - start), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(interpolate_weights(pretrained, fine_tuned, 0.0)[0], pretrained[0])
    np.testing.assert_array_equal(interpolate_weights(pretrained, fine_tuned, 1.0)[1], fine_tuned[1])


def test_integer_weights_are_kept_and_mismatched_models_are_refused():
    counter = [np.array(7, np.int64)]
    assert interpolate_weights([np.array(0, np.int64)], counter, 0.5)[0] == 7
    with pytest.raises(ValueError, match="differ"):
        interpolate_weights([np.zeros(3)], [np.zeros(4)], 0.5)
    with pytest.raises(ValueError, match="differ"):
        interpolate_weights([np.zeros(3)], [np.zeros(3), np.zeros(3)], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_weights([np.zeros(3)], [np.zeros(3)], 1.5)


def test_an_interpolated_keras_model_embeds_between_its_two_ends(rng):
    """A linear layer's output is linear in its weights, so halfway weights give the halfway output."""
    import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    inputs = rng.normal(size=(4, 5)).astype(np.float32)
    pretrained = model.get_weights()
    before = model.predict(inputs, verbose=0)
    model.set_weights([weight + 1.0 for weight in pretrained])
    after = model.predict(inputs, verbose=0)
    interpolate_model(model, pretrained, 0.5)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), (before + after) / 2, atol=1e-5)
