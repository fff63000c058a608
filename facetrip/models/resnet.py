"""The from-scratch embedding networks: ResNets with an L2-normalised output, learned from your identities.

Inputs are float32 images in [0, 1], (height, width, channels). The model centres them
itself (``2 x - 1``), so a saved model plus the shared preprocessing function is all
inference needs.

- ``resnet_small``: ResNet-18-like, four stages of two basic blocks (widths w, 2w, 4w,
  8w), sized for CPUs.
- ``resnet50``: ``keras.applications.ResNet50(weights=None)``, for larger inputs.

The head (dense projection and L2 normalisation) always computes in float32, so the
embeddings and the loss stay float32 under mixed bfloat16. The pretrained face network
is :mod:`facetrip.models.face_embedder`.
"""

from __future__ import annotations

import keras
from keras import layers

SCRATCH_BACKBONES = ("resnet_small", "resnet50")
HEADS = ("pool", "flatten")


def _basic_block(inputs, filters: int, stride: int, regulariser, name: str):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""
    convolution = dict(use_bias=False, kernel_initializer="he_normal", kernel_regularizer=regulariser)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_conv1", **convolution)(inputs)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2", **convolution)(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    shortcut = inputs
    if stride != 1:
        # Subsampling then a 1x1 convolution is a strided 1x1 convolution, computed apart:
        # TF 2.21's oneDNN CPU kernel of the strided one crashes the process (segfault)
        # when training on odd batch sizes with fewer than 16 input channels (width 8).
        shortcut = layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(shortcut)
    if stride != 1 or inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, name=f"{name}_project", **convolution)(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_project_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, shortcut]))


def _resnet_small(x, width: int, regulariser):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=regulariser, name="stem_conv")(x)  # (H, W, w)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if block == 0 and stage > 0 else 1
            x = _basic_block(x, width * multiplier, stride, regulariser, name=f"stage{stage + 1}_block{block + 1}")
    return x  # (H / 8, W / 8, 8 w)


def build_scratch_model(
    input_shape: tuple[int, int, int] = (56, 46, 1),
    embedding_dim: int = 128,
    backbone: str = "resnet_small",
    width: int = 32,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    head: str = "pool",
    name: str = "facetrip_embedder",
) -> keras.Model:
    """A ResNet mapping (H, W, C) images in [0, 1] to L2-normalised embeddings.

    Args:
        input_shape: (height, width, channels), channels 1 or 3.
        embedding_dim: size of the embedding.
        backbone: ``resnet_small`` or ``resnet50``.
        width: channels of the first ``resnet_small`` stage.
        dropout: dropout rate before the projection.
        weight_decay: L2 penalty on convolution and dense kernels (added to the loss).
        head: how the last feature map (h, w, c) becomes the projection's input:
            ``pool`` (global average, (c,)) or ``flatten`` (batch norm then flatten,
            (h w c,): keeps where on the face a feature is, as the BN-dropout-FC heads
            of face recognition networks do).
        name: model name.

    Returns:
        keras.Model from (B, H, W, C) to (B, embedding_dim) float32 with unit norm.
    """
    if backbone not in SCRATCH_BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}: choose one of {', '.join(SCRATCH_BACKBONES)}.")
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}: choose one of {', '.join(HEADS)}.")
    regulariser = keras.regularizers.L2(weight_decay) if weight_decay else None
    images = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(images)  # [0, 1] -> [-1, 1]
    if backbone == "resnet_small":
        feature_map = _resnet_small(x, width, regulariser)
    else:
        resnet = keras.applications.ResNet50(weights=None, include_top=False, input_shape=tuple(input_shape))
        feature_map = resnet(x)
    if head == "pool":
        features = layers.GlobalAveragePooling2D(name="pool")(feature_map)  # (c,)
    else:
        features = layers.Flatten(name="flatten")(layers.BatchNormalization(name="head_bn")(feature_map))  # (h w c,)
    if dropout:
        features = layers.Dropout(dropout, name="dropout")(features)
    projection = layers.Dense(embedding_dim, kernel_regularizer=regulariser, dtype="float32", name="projection")(features)
    embeddings = layers.UnitNormalization(dtype="float32", name="l2_normalise")(projection)
    return keras.Model(images, embeddings, name=name)
