"""Weight-space interpolation between a pretrained network and its fine-tuned copy (WiSE-FT).

    w = (1 - alpha) * w_pretrained + alpha * w_fine_tuned,     0 <= alpha <= 1

Fine-tuning a pretrained face network on a few dozen people moves it far from the
weights that served millions of faces, and it forgets: on LFW, fine-tuning on Yale B's
23 training people costs about 5 points of accuracy. Moving back part of the way along
the straight line between the two sets of weights keeps most of what fine-tuning gained
on the new people and most of what the pretrained network knew (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022). The line is well-behaved because both ends
share one initialisation; the head of :mod:`facetrip.models.face_embedder` starts at zero,
so its pretrained end is the identity.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def interpolate_weights(pretrained: Sequence[np.ndarray], fine_tuned: Sequence[np.ndarray], alpha: float) -> list[np.ndarray]:
    """The weights ``alpha`` of the way from ``pretrained`` to ``fine_tuned``.

    Args:
        pretrained: the weights fine-tuning started from (``model.get_weights()`` order).
        fine_tuned: the same model's weights after fine-tuning.
        alpha: 0 gives the pretrained weights, 1 the fine-tuned ones.

    Returns:
        ``(1 - alpha) * pretrained + alpha * fine_tuned``, array by array, in the fine-tuned dtypes.

    Raises:
        ValueError: alpha outside [0, 1], or the two lists do not describe the same model.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"The interpolation weight must lie in [0, 1], not {alpha}.")
    if len(pretrained) != len(fine_tuned):
        raise ValueError(f"The two models differ: {len(pretrained)} against {len(fine_tuned)} weight arrays.")
    interpolated = []
    for start, end in zip(pretrained, fine_tuned):
        start, end = np.asarray(start), np.asarray(end)
        if start.shape != end.shape:
            raise ValueError(f"The two models differ: a weight of shape {start.shape} against {end.shape}.")
        if not np.issubdtype(end.dtype, np.floating):  # counters and the like are not interpolated
            interpolated.append(end)
            continue
        mixed = (1.0 - alpha) * start.astype(np.float64) + alpha * end.astype(np.float64)
        interpolated.append(mixed.astype(end.dtype))
    return interpolated


def interpolate_model(model, pretrained_weights: Sequence[np.ndarray], alpha: float) -> None:
    """Set ``model``'s weights ``alpha`` of the way from ``pretrained_weights`` to its own (in place).

    Args:
        model: a Keras model, fine-tuned.
        pretrained_weights: ``model.get_weights()`` as it was before fine-tuning.
        alpha: the share of the fine-tuned weights; 1 leaves the model as it is.
    """
    if alpha == 1.0:
        return
    model.set_weights(interpolate_weights(pretrained_weights, model.get_weights(), alpha))
