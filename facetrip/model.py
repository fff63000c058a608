"""The embedding network: a ResNet with an L2-normalised output.

Inputs are images from :func:`facetrip.data.preprocess_encoded`: float32 in [0, 1],
(height, width, channels). The model centres them itself (``2 x - 1``), so a saved
model plus the shared preprocessing function is all inference needs.

- ``resnet_small``: ResNet-18-like, four stages of two basic blocks (widths w, 2w, 4w,
  8w), sized for CPUs.
- ``resnet50``: ``keras.applications.ResNet50(weights=None)``, for larger inputs.
- ``dlib_resnet``: dlib's pretrained face-recognition ResNet, frozen
  (:class:`facetrip.pretrained.DlibFaceDescriptor`); the trained part is a residual head
  on its 128 numbers: ``e = normalise(u + W u + b)`` with ``u`` the unit descriptor and
  ``W = 0``, ``b = 0`` at the start, so training starts from dlib's embedding (with
  ``embedding_dim`` other than 128 the head is a plain dense projection).

The head (dense projection and L2 normalisation) always computes in float32, so the
embeddings and the loss stay float32 under mixed bfloat16.

:func:`with_test_time_augmentation` wraps a trained embedder for export: the embeddings
of an image, of copies shifted by a pixel up, down, left and right, and (with flips) of
their mirror images are summed and renormalised, inside the saved model, so every command
that loads a run gets the same embedding. :func:`with_flip_averaging` is the mirror only.
"""

from __future__ import annotations

import keras
from keras import layers

BACKBONES = ("resnet_small", "resnet50", "dlib_resnet")
# Backbones that come with their weights and are not trained.
PRETRAINED_BACKBONES = ("dlib_resnet",)
HEADS = ("pool", "flatten")


@keras.saving.register_keras_serializable(package="facetrip")
class HorizontalFlip(layers.Layer):
    """Mirror images left-right: (B, H, W, C) -> (B, H, W, C), always (not a random augmentation)."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)


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


def build_embedding_model(
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
        backbone: ``resnet_small``, ``resnet50`` or ``dlib_resnet`` (pretrained, frozen;
            ``width`` and ``head`` do not apply).
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
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}.")
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}: choose one of {', '.join(HEADS)}.")
    regulariser = keras.regularizers.L2(weight_decay) if weight_decay else None
    images = keras.Input(shape=tuple(input_shape), name="image")
    if backbone == "dlib_resnet":
        return keras.Model(images, _descriptor_head(images, embedding_dim, dropout, regulariser), name=name)
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


def _descriptor_head(images, embedding_dim: int, dropout: float, regulariser):
    """dlib descriptors, then the trained head: residual at 128 dimensions (identity at the start)."""
    from facetrip.pretrained import DESCRIPTOR_DIM, DlibFaceDescriptor

    descriptors = DlibFaceDescriptor(name="dlib_resnet")(images)  # (B, 128)
    unit = layers.UnitNormalization(dtype="float32", name="descriptor_l2")(descriptors)
    features = layers.Dropout(dropout, dtype="float32", name="dropout")(unit) if dropout else unit
    if embedding_dim == DESCRIPTOR_DIM:
        correction = layers.Dense(embedding_dim, kernel_initializer="zeros", kernel_regularizer=regulariser,
                                  dtype="float32", name="projection")(features)  # (B, 128), 0 at the start
        projection = layers.Add(dtype="float32", name="residual")([unit, correction])
    else:
        projection = layers.Dense(embedding_dim, kernel_regularizer=regulariser, dtype="float32", name="projection")(features)
    return layers.UnitNormalization(dtype="float32", name="l2_normalise")(projection)


@keras.saving.register_keras_serializable(package="facetrip")
class Shift(layers.Layer):
    """Translate images by whole pixels: out[y, x] = in[y + dy, x + dx], the border mirrored.

    (B, H, W, C) -> (B, H, W, C), always the same shift (not a random augmentation). Pixels
    shifted in from outside the image repeat the border symmetrically (``c b a | a b c``).

    Args:
        dy, dx: rows and columns to shift by (a positive dx shows content from the right).
    """

    def __init__(self, dy: int = 0, dx: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, images):
        pad = max(abs(self.dy), abs(self.dx))
        if pad == 0:
            return images
        height, width = images.shape[1], images.shape[2]
        padded = keras.ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")  # (B, H+2p, W+2p, C)
        return padded[:, pad + self.dy : pad + self.dy + height, pad + self.dx : pad + self.dx + width, :]

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """The (dy, dx) views of shift test-time augmentation: the image, then +-shift vertically and horizontally."""
    if shift < 0:
        raise ValueError(f"The test-time shift must be 0 or more pixels, not {shift}.")
    return [(0, 0)] + ([(-shift, 0), (shift, 0), (0, -shift), (0, shift)] if shift else [])


def with_test_time_augmentation(embedder: keras.Model, flip: bool = True, shift: int = 1,
                                name: str = "facetrip_embedder_tta") -> keras.Model:
    """``normalise(sum over views v of f(v(x)))``: the embedder with test-time augmentation.

    The views are the image and its copies shifted by ``shift`` pixels up, down, left and
    right (:func:`tta_offsets`; just the image when ``shift`` is 0), each also mirrored when
    ``flip``: 10 views by default, 1 with neither.

    Args:
        embedder: a model from images to unit embeddings (shares its weights with the result).
        flip: add the mirror image of every view.
        shift: pixels of the shifted views, 0 for none.
        name: model name.

    Returns:
        keras.Model with the same input and output shapes as ``embedder``.
    """
    images = keras.Input(shape=embedder.input_shape[1:], name="image")
    views = [images if (dy, dx) == (0, 0) else Shift(dy, dx, name=f"shift_{dy}_{dx}".replace("-", "m"))(images)
             for dy, dx in tta_offsets(shift)]
    if flip:
        views += [HorizontalFlip(name="mirror" if index == 0 else f"mirror_{index}")(view) for index, view in enumerate(views)]
    embeddings = [embedder(view) for view in views]  # each (B, D)
    summed = embeddings[0] if len(embeddings) == 1 else layers.Add(dtype="float32", name="sum_views")(embeddings)
    return keras.Model(images, layers.UnitNormalization(dtype="float32", name="l2_normalise_views")(summed), name=name)


def with_flip_averaging(embedder: keras.Model, name: str = "facetrip_embedder_flip_tta") -> keras.Model:
    """``normalise(f(x) + f(mirror(x)))``: the embedder with flip test-time augmentation.

    Args:
        embedder: a model from images to unit embeddings (shares its weights with the result).
        name: model name.

    Returns:
        keras.Model with the same input and output shapes as ``embedder``.
    """
    return with_test_time_augmentation(embedder, flip=True, shift=0, name=name)
