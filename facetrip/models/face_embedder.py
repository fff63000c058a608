"""facetrip's face network: dlib's pretrained face ResNet, fine-tuned, with a residual head and unit embeddings.

    chip (150, 150, 3) in [0, 1] -> face ResNet (:mod:`facetrip.models.face_resnet`) -> descriptor u (128,)
         -> e = normalise(u / |u| + W (u / |u|) + b)

The input is an aligned face chip (:mod:`facetrip.data.face_chips`), never a resized
photo. The head starts as the identity (``W = 0``, ``b = 0``), so an untrained model
embeds exactly as dlib's network does, up to the unit normalisation; with an
``embedding_dim`` other than 128 the head is a plain dense projection. How much of the
ResNet trains is ``freeze`` (:data:`~facetrip.models.face_resnet.FREEZE_LEVELS`): with
``"all"`` only the head does. The head always computes in float32, so the embeddings and
the loss stay float32 under mixed bfloat16.
"""

from __future__ import annotations

import keras
from keras import layers


def build_face_embedder(
    embedding_dim: int = 128,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    freeze: str = "none",
    weights: str | None = "dlib",
    name: str = "facetrip_embedder",
) -> keras.Model:
    """The face ResNet with its head: aligned chips in, unit embeddings out.

    Args:
        embedding_dim: size of the embedding (128 keeps dlib's, with the residual head).
        dropout: dropout rate on the unit descriptor before the head.
        weight_decay: L2 penalty on the head's kernel (the optimizer's decoupled weight
            decay applies to every trained weight anyway).
        freeze: how much of the ResNet stays fixed: none, stem, stage1 .. stage5, all.
        weights: "dlib" (the pretrained weights of the face_recognition_models wheel),
            a path to a dlib network file, or None for random weights.
        name: model name.

    Returns:
        keras.Model from (B, 150, 150, 3) float32 chips in [0, 1] to (B, embedding_dim)
        float32 with unit norm.
    """
    from facetrip.models.face_resnet import DESCRIPTOR_DIM, FACE_CHIP_SIZE, build_face_resnet, freeze_face_resnet

    regulariser = keras.regularizers.L2(weight_decay) if weight_decay else None
    chips = keras.Input(shape=(FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3), name="image")
    backbone = build_face_resnet(weights=weights)
    freeze_face_resnet(backbone, freeze)
    descriptors = layers.Activation("linear", dtype="float32", name="descriptor_float32")(backbone(chips))  # (B, 128)
    unit = layers.UnitNormalization(dtype="float32", name="descriptor_l2")(descriptors)
    features = layers.Dropout(dropout, dtype="float32", name="dropout")(unit) if dropout else unit
    if embedding_dim == DESCRIPTOR_DIM:
        correction = layers.Dense(embedding_dim, kernel_initializer="zeros", kernel_regularizer=regulariser,
                                  dtype="float32", name="projection")(features)  # (B, 128), 0 at the start
        projection = layers.Add(dtype="float32", name="residual")([unit, correction])
    else:
        projection = layers.Dense(embedding_dim, kernel_regularizer=regulariser, dtype="float32", name="projection")(features)
    embeddings = layers.UnitNormalization(dtype="float32", name="l2_normalise")(projection)
    return keras.Model(chips, embeddings, name=name)
