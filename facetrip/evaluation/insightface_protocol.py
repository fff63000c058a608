"""insightface's verification protocol, as ``lfw.bin`` / ``cfp_fp.bin`` / ``agedb_30.bin`` numbers are reported.

insightface (``recognition/arcface_torch/eval/verification.py``) scores a verification set so:

- pair i is images 2i and 2i + 1 of the file, with the file's same / different flag;
- each image's embedding is ``normalise(f(x) + f(mirror(x)))``: the embeddings of the
  image and of its left-right mirror image added, then L2-normalised;
- accuracy is 10-fold: the folds are 10 consecutive blocks of pairs (scikit-learn's
  ``KFold(10, shuffle=False)``), and each fold is scored at the threshold that is best on
  the other nine.

:func:`verification_bin_pairs` gives those pairs and folds; :func:`flip_summed_model` the
embedding, through :func:`~facetrip.models.tta.with_flip_averaging`. facetrip's k-fold accuracy picks each
threshold among the midpoints of the distances (insightface: a grid of 0.01) and weighs
same and different pairs equally; on these sets, whose folds hold as many of each, that
is insightface's plain accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facetrip.evaluation.metrics import NUM_FOLDS
from facetrip.evaluation.pairs import Pairs


def consecutive_folds(num_pairs: int, num_folds: int = NUM_FOLDS) -> np.ndarray:
    """The fold of each pair when the pairs are cut into consecutive blocks, as ``KFold(shuffle=False)`` cuts them.

    The first ``num_pairs % k`` folds hold ``num_pairs // k + 1`` pairs, the others
    ``num_pairs // k``, with ``k = min(num_folds, num_pairs)`` (one pair a fold for sets of
    fewer pairs than folds).

    Args:
        num_pairs: pairs, at least 2.
        num_folds: folds wanted.

    Returns:
        (num_pairs,) int64 folds in ``[0, k)``, non-decreasing.

    Raises:
        ValueError: fewer than two pairs or folds.
    """
    if num_pairs < 2 or num_folds < 2:
        raise ValueError(f"consecutive folds need at least two pairs and two folds, not {num_pairs} and {num_folds}")
    folds = min(num_folds, num_pairs)
    sizes = np.full(folds, num_pairs // folds, np.int64)  # (k,)
    sizes[: num_pairs % folds] += 1
    return np.repeat(np.arange(folds, dtype=np.int64), sizes)  # (num_pairs,)


def verification_bin_pairs(same: np.ndarray, path: str | Path) -> Pairs:
    """The pairs of a verification set in file order: pair i is images 2i and 2i + 1, in consecutive folds.

    Args:
        same: (P,) bool flags of the file.
        path: the file, for the description.

    Returns:
        :class:`~facetrip.evaluation.pairs.Pairs` indexing the set's images in file order, with
        :func:`consecutive_folds` and a ``how`` that says the protocol and that the run's
        training identities cannot be checked against the file.
    """
    same = np.asarray(same, bool).reshape(-1)
    pair_index = np.arange(len(same), dtype=np.int64)  # (P,)
    folds = consecutive_folds(len(same))
    how = (f"the {len(same):,} pairs of {Path(path).name} (an insightface verification set), insightface's "
           f"protocol: {len(np.unique(folds))} consecutive folds, each embedding the normalised sum of the image's and "
           f"its mirror image's; the file names no people, so whether any was a training identity of the run cannot "
           f"be checked")
    return Pairs(2 * pair_index, 2 * pair_index + 1, same.copy(), folds, how)


def flip_summed_model(model):
    """``normalise(f(x) + f(mirror(x)))``: a run's model with insightface's flip, as one Keras model.

    A run's saved model returns its embeddings as a list of one output (it is saved as
    ``keras.Model(inputs, outputs)``); :func:`~facetrip.models.tta.with_flip_averaging`
    wraps a view of it with that one output, sharing its layers.

    Args:
        model: a Keras model from (B, H, W, C) images to (B, D) embeddings, one input and one output.

    Returns:
        keras.Model with the same input and output shapes.
    """
    import keras

    from facetrip.models.tta import with_flip_averaging

    single_output = keras.Model(model.inputs[0], model.outputs[0], name=f"{model.name}_embedder")
    return with_flip_averaging(single_output)
