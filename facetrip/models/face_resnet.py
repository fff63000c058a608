"""dlib's pretrained face-recognition ResNet as a native, trainable Keras model.

The network of dlib's ``dnn_face_recognition_ex.cpp`` (29 convolutions, trained by Davis
King on about 3 million faces of 7,485 people; public domain), built from standard Keras
layers plus three small ones of its own, with the weights of the ``face_recognition_models``
wheel read by :mod:`facetrip.models.dlib_format` (no dlib needed, neither to build nor to
load a saved model):

    chip (B, 150, 150, 3) RGB in [0, 1]
      -> (255 x - mean) / 256                                   input_scaling
      -> conv 7x7/2 valid (32) -> affine -> relu -> max pool 3x3/2 (B, 35, 35, 32)   stem
      -> stage1: 3 blocks of 32   (B, 35, 35, 32)
      -> stage2: down + 3 of 64   (B, 17, 17, 64)
      -> stage3: down + 2 of 128  (B, 8, 8, 128)
      -> stage4: down + 2 of 256  (B, 4, 4, 256)
      -> stage5: down of 256      (B, 2, 2, 256)
      -> global average pool -> dense 256 -> 128, no bias        descriptor (B, 128)

A residual block is conv 3x3 -> affine -> relu -> conv 3x3 -> affine, added to its input,
then relu. A down block's first conv has stride 2 and no padding, and its shortcut is a
2x2/2 average pool of the block input. The output is dlib's descriptor, not L2-normalised:
same-person chips lie closer than a Euclidean 0.6.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from facetrip.models import dlib_format
from facetrip.models.dlib_format import FACE_RECOGNITION_CHIP_SIZE, DlibNetwork

FACE_CHIP_SIZE = FACE_RECOGNITION_CHIP_SIZE
DESCRIPTOR_DIM = 128
FREEZE_LEVELS = ("none", "stem", "stage1", "stage2", "stage3", "stage4", "stage5", "all")

# The mean pixel of dlib's training faces (input_rgb_image_sized in the weights file), used
# when the network is built without weights.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)

# (filters, blocks, whether the first block halves the resolution), input side first.
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
_STEM_FILTERS = 32
_PIXEL_MAX = 255.0
# dlib divides by 256, not 255, after subtracting the mean.
_PIXEL_DIVISOR = 256.0

_WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class MissingFaceResnetWeightsError(ValueError):
    """The face_recognition_models wheel, which holds dlib's face ResNet weights, is missing."""


def face_resnet_weights_path() -> Path:
    """The weights file inside the installed ``face_recognition_models`` wheel.

    The package is located without importing it (nor dlib).

    Returns:
        The path of ``dlib_face_recognition_resnet_model_v1.dat``.

    Raises:
        MissingFaceResnetWeightsError: the wheel or the file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFaceResnetWeightsError(
            "dlib's face ResNet weights come from the face_recognition_models wheel, which is not installed: "
            "run `pip install face_recognition_models`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise MissingFaceResnetWeightsError(
            f"face_recognition_models is installed but {path} is missing: "
            "run `pip install --force-reinstall face_recognition_models`."
        )
    return path


# ---------------------------------------------------------------------------------------
# Layers of dlib's that Keras lacks.


@keras.saving.register_keras_serializable(package="facetrip")
class DlibInputScaling(layers.Layer):
    """Chips in [0, 1] -> dlib's input: ``(255 x - mean) / 256`` per RGB channel.

    Args:
        mean_rgb: the mean red, green and blue 8-bit pixel values to subtract.
        **kwargs: Keras layer arguments (name, dtype).
    """

    def __init__(self, mean_rgb=DLIB_MEAN_RGB, **kwargs):
        super().__init__(**kwargs)
        self.mean_rgb = tuple(float(value) for value in mean_rgb)

    def call(self, chips):
        mean = ops.convert_to_tensor(self.mean_rgb, dtype=self.compute_dtype)
        return (chips * _PIXEL_MAX - mean) / _PIXEL_DIVISOR  # (B, H, W, 3)

    def get_config(self):
        return {**super().get_config(), "mean_rgb": list(self.mean_rgb)}


@keras.saving.register_keras_serializable(package="facetrip")
class ChannelAffine(layers.Layer):
    """``x * gamma + beta`` per channel: dlib's affine layer, a batch norm folded into constants.

    Unlike BatchNormalization it never uses batch statistics, so it behaves the same in
    training and inference, for any batch size. gamma starts at 1 and beta at 0.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        gamma = ops.cast(self.gamma, self.compute_dtype)
        beta = ops.cast(self.beta, self.compute_dtype)
        return inputs * gamma + beta  # (B, H, W, C)

    def compute_output_shape(self, input_shape):
        return input_shape


def _padded_shape(shapes) -> tuple:
    """The largest size in each axis after the batch, as dlib's add_prev takes."""
    return tuple(max(sizes) for sizes in zip(*(shape[1:] for shape in shapes)))


@keras.saving.register_keras_serializable(package="facetrip")
class ZeroPaddedAdd(layers.Layer):
    """dlib's add_prev: the sum of two (B, H, W, C) tensors that may differ in H, W and C.

    The output takes the larger size in every axis; the smaller tensor counts as zeros
    where it has no entries, which are at the end: last channels, bottom rows, right
    columns. (Padding at the start instead moves the descriptor by 1.7 from dlib's.)
    Spatial sizes and channels must be known when the layer is built.
    """

    def build(self, input_shape):
        if len(input_shape) != 2 or any(len(shape) != 4 or None in shape[1:] for shape in input_shape):
            raise ValueError(f"{self.name}: expects two (B, H, W, C) inputs of known sizes, got {input_shape}")

    def call(self, inputs):
        target = _padded_shape([tensor.shape for tensor in inputs])
        total = None
        for tensor in inputs:
            missing = [target_size - size for target_size, size in zip(target, tensor.shape[1:])]
            if any(missing):
                tensor = ops.pad(tensor, [[0, 0]] + [[0, count] for count in missing])  # (B, H', W', C')
            total = tensor if total is None else total + tensor
        return total  # (B, max H, max W, max C)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], *_padded_shape(input_shape))


# ---------------------------------------------------------------------------------------
# The network.


def _conv_affine(x, filters: int, size: int, stride: int, prefix: str, suffix: str = ""):
    """conv (no padding when strided, else 'same', as dlib's defaults) -> affine."""
    padding = "valid" if stride != 1 else "same"
    x = layers.Conv2D(filters, size, strides=stride, padding=padding, name=f"{prefix}_conv{suffix}")(x)
    return ChannelAffine(name=f"{prefix}_affine{suffix}")(x)


def _residual_block(x, filters: int, downsample: bool, prefix: str):
    """One of dlib's ``ares`` (identity shortcut) or ``ares_down`` (pooled shortcut) blocks."""
    branch = _conv_affine(x, filters, 3, 2 if downsample else 1, prefix, "1")
    branch = layers.ReLU(name=f"{prefix}_relu1")(branch)
    branch = _conv_affine(branch, filters, 3, 1, prefix, "2")
    shortcut = layers.AveragePooling2D(2, strides=2, name=f"{prefix}_shortcut_pool")(x) if downsample else x
    # The pooled shortcut may be larger (4x4 vs 3x3, 2x2 vs 1x1) or have fewer channels.
    summed = ZeroPaddedAdd(name=f"{prefix}_add")([branch, shortcut])
    return layers.ReLU(name=f"{prefix}_relu2")(summed)


def _block_prefixes() -> list[tuple[str, int, bool]]:
    """(layer-name prefix, filters, downsamples) of every residual block, input side first."""
    blocks = []
    for stage, (filters, count, downsamples) in enumerate(_STAGES, start=1):
        for block in range(1, count + 1):
            blocks.append((f"stage{stage}_block{block}", filters, downsamples and block == 1))
    return blocks


def _build_graph(mean_rgb, name: str) -> keras.Model:
    chips = keras.Input((FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3), dtype="float32", name="chip")  # (B, 150, 150, 3)
    # Scaled in float32 whatever the policy: in bfloat16 the mean itself would be off by up to 0.3.
    x = DlibInputScaling(mean_rgb, dtype="float32", name="input_scaling")(chips)
    x = _conv_affine(x, _STEM_FILTERS, 7, 2, "stem")  # (B, 72, 72, 32)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)  # (B, 35, 35, 32)
    for prefix, filters, downsample in _block_prefixes():
        x = _residual_block(x, filters, downsample, prefix)  # ... (B, 2, 2, 256)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)  # (B, 256)
    # float32 so the model's output is float32 under a mixed policy too.
    descriptor = layers.Dense(DESCRIPTOR_DIM, use_bias=False, dtype="float32", name="descriptor")(x)  # (B, 128)
    return keras.Model(chips, descriptor, name=name)


def _conv_affine_names() -> list[tuple[str, str]]:
    """(conv, affine) layer names in dlib's order, input side first."""
    names = [("stem_conv", "stem_affine")]
    for prefix, _, _ in _block_prefixes():
        names += [(f"{prefix}_conv1", f"{prefix}_affine1"), (f"{prefix}_conv2", f"{prefix}_affine2")]
    return names


def _check_conv_matches(layer: layers.Conv2D, conv: dlib_format.Conv, source: str) -> np.ndarray:
    """dlib filters (num_filters, k, nr, nc) -> Keras kernel (nr, nc, k, num_filters), checked."""
    kernel = conv.filters.transpose(2, 3, 1, 0)
    same_padding = tuple(size // 2 for size in kernel.shape[:2])
    keras_padding = (0, 0) if layer.padding == "valid" else same_padding
    if kernel.shape != tuple(layer.kernel.shape) or conv.stride != tuple(layer.strides) or conv.padding != keras_padding:
        raise dlib_format.DlibFormatError(
            f"{source}: the convolution for {layer.name} has kernel {kernel.shape}, stride {conv.stride} and padding "
            f"{conv.padding}; the Keras layer has {tuple(layer.kernel.shape)}, {tuple(layer.strides)} and {keras_padding}"
        )
    return kernel


def load_dlib_weights(model: keras.Model, network: DlibNetwork, source: str = "dlib network") -> None:
    """Copy dlib's parameters into a model made by :func:`build_face_resnet`.

    Args:
        model: the Keras network (any dtype policy).
        network: read by :func:`facetrip.models.dlib_format.read_face_recognition_resnet`.
        source: where the network came from, for error messages.

    Raises:
        DlibFormatError: a layer's shape, stride or padding differs between the two.
    """
    convs = network.of_kind(dlib_format.Conv)
    affines = network.of_kind(dlib_format.Affine)
    (fully_connected,) = network.of_kind(dlib_format.FullyConnected)
    for (conv_name, affine_name), conv, affine in zip(_conv_affine_names(), convs, affines, strict=True):
        conv_layer = model.get_layer(conv_name)
        conv_layer.set_weights([_check_conv_matches(conv_layer, conv, source), conv.bias])
        model.get_layer(affine_name).set_weights([affine.gamma, affine.beta])
    model.get_layer("descriptor").set_weights([fully_connected.weights])


def build_face_resnet(weights: str | Path | None = "dlib", name: str = "face_resnet") -> keras.Model:
    """dlib's face-recognition ResNet in Keras layers, following the global dtype policy.

    Args:
        weights: "dlib" (default) for the weights in the face_recognition_models wheel, read
            now; None for a random start (same architecture, no file read); or the path of
            a dlib file of the same network.
        name: the model's name.

    Returns:
        A model from (B, 150, 150, 3) float32 RGB chips in [0, 1] (an aligned 8-bit chip / 255)
        to (B, 128) float32 dlib descriptors (not L2-normalised). Every layer is trainable
        (see :func:`freeze_face_resnet`).

    Raises:
        MissingFaceResnetWeightsError: weights="dlib" without the face_recognition_models wheel.
        DlibFormatError: the weights file is not this network.
    """
    if weights is None:
        return _build_graph(DLIB_MEAN_RGB, name)
    path = face_resnet_weights_path() if isinstance(weights, str) and weights == "dlib" else Path(weights)
    network = dlib_format.read_face_recognition_resnet(path)
    model = _build_graph(network.input.mean_rgb.tolist(), name)
    load_dlib_weights(model, network, source=str(path))
    return model


def _freeze_rank(layer_name: str) -> int:
    """The first index in FREEZE_LEVELS whose level freezes this layer ("all" for the head)."""
    group = layer_name.split("_", 1)[0]
    return FREEZE_LEVELS.index(group) if group in FREEZE_LEVELS[1:-1] else len(FREEZE_LEVELS) - 1


def freeze_face_resnet(model: keras.Model, level: str) -> keras.Model:
    """Freeze the input side of a :func:`build_face_resnet` model, up to ``level``.

    Args:
        model: the face ResNet.
        level: "none" trains everything; "stem" freezes the stem; "stageN" freezes the stem
            and stages 1..N; "all" freezes every layer, the final dense included.

    Returns:
        The same model, with each layer's ``trainable`` set (recompile it after this).

    Raises:
        ValueError: an unknown level.
    """
    if level not in FREEZE_LEVELS:
        raise ValueError(f"Unknown freeze level {level!r}: choose one of {', '.join(FREEZE_LEVELS)}.")
    frozen_up_to = FREEZE_LEVELS.index(level)
    for layer in model.layers:
        layer.trainable = _freeze_rank(layer.name) > frozen_up_to
    return model
