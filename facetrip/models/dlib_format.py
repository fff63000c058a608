"""A reader of dlib's DNN file format, for dlib's face-recognition ResNet.

dlib saves a network by serialising its template stack from the loss layer inwards
(``dlib/dnn/core.h``): each ``add_layer`` writes its version, then its whole subnetwork, then
its own layer details and some per-layer state; tag and skip layers write a version and
their subnetwork only. So a file holds, in order:

    loss layer | one version per layer, outermost first | the input layer |
    each layer's details and state, innermost (input side) first

The tag and skip layers leave no trace beyond their version, so the structure comes from
the network definition in dlib's ``examples/dnn_face_recognition_ex.cpp``
(:func:`face_recognition_resnet_v1_structure`), and the reader checks the file against it,
record by record: a truncated or foreign file fails with a :class:`DlibFormatError` that
names the byte offset and what was expected there.

Encodings (``dlib/serialize.h``, ``dlib/float_details.h``, ``dlib/cuda/tensor.h``):

- integer of any width: a control byte (low 4 bits: number of payload bytes, 1..8;
  bit 0x80: negative), then the magnitude, little-endian. Zero is ``01 00``.
- float / double: an int64 mantissa then an int16 exponent, both as integers above;
  the value is ``mantissa * 2**exponent``, except the exponents 32000 (+inf), 32001
  (-inf) and 32002 or more (NaN).
- bool: the ASCII byte ``'0'`` or ``'1'``. string: its length, then its bytes.
- tensor: version 2, four dimensions (num_samples, k, nr, nc), then the values as
  little-endian float32. An alias tensor (a view into a layer's parameter block):
  version 1 and four dimensions, no values.

Only NumPy is needed: reading the weights never imports dlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrip.untrusted_files import UntrustedFileError, read_untrusted_bytes

# dlib's face network takes 22 MB; its other networks under 100 MB.
DLIB_FILE_SIZE_LIMIT = 512 << 20

# float_details.h: exponents that stand for special values instead of a power of two.
_EXPONENT_INFINITY = 32000
_EXPONENT_NEGATIVE_INFINITY = 32001

# Byte widths of the C++ integer types the format stores (LP64, as dlib's files are written).
_INT = 4
_LONG = 8
_SHORT = 2

# input_rgb_image_sized<150> in dnn_face_recognition_ex.cpp: the aligned face chip's side.
FACE_RECOGNITION_CHIP_SIZE = 150

# dlib's layer_mode: CONV_MODE is one gamma and beta per channel.
_CONV_MODE = 0
# dlib's fc_bias_mode.
_FC_HAS_BIAS = 0
_FC_NO_BIAS = 1


class DlibFormatError(ValueError):
    """The bytes are not the dlib network that was expected (truncated, foreign or corrupt)."""


# ---------------------------------------------------------------------------------------
# What the reader returns: one small record per layer, plain NumPy arrays.


@dataclass(frozen=True)
class InputRgbImage:
    """dlib's ``input_rgb_image_sized``: an 8-bit RGB image, fed as ``(pixel - mean) / 256``.

    Attributes:
        mean_rgb: (3,) float32, the mean red, green and blue pixel values subtracted.
        rows, cols: the only image size the network accepts.
    """

    mean_rgb: np.ndarray
    rows: int
    cols: int


@dataclass(frozen=True)
class Conv:
    """dlib's ``con_``: a 2-D convolution (cross-correlation) with a bias per filter.

    Attributes:
        filters: (num_filters, k, nr, nc) float32, dlib's layout (k = input channels).
        bias: (num_filters,) float32, or None when the layer has no bias.
        stride: (stride_y, stride_x).
        padding: (padding_y, padding_x) zero pixels added on each side.
    """

    filters: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """dlib's ``affine_`` in conv mode: ``x * gamma + beta`` per channel (a folded batch norm).

    Attributes:
        gamma: (k,) float32.
        beta: (k,) float32.
    """

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    """dlib's ``relu_``."""


@dataclass(frozen=True)
class Pool:
    """dlib's ``max_pool_`` or ``avg_pool_``.

    Attributes:
        mode: "max" or "avg".
        window: (nr, nc); (0, 0) pools over the whole input.
        stride: (stride_y, stride_x).
        padding: (padding_y, padding_x).
    """

    mode: str
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """dlib's ``add_prev_``: adds the output of the layer marked by ``tag``.

    Tensors of different shapes give the larger size in every axis; the smaller one's
    missing entries count as zeros at the end (last channels, bottom rows, right columns).
    """

    tag: int


@dataclass(frozen=True)
class Tag:
    """dlib's ``tagN``: marks the output below it, for a later skip or add_prev."""

    tag: int


@dataclass(frozen=True)
class Skip:
    """dlib's ``skipN``: continues from the output marked by ``tag`` instead of the one below."""

    tag: int


@dataclass(frozen=True)
class FullyConnected:
    """dlib's ``fc_``.

    Attributes:
        weights: (inputs, outputs) float32; output = input @ weights (+ bias).
        bias: (outputs,) float32, or None for ``fc_no_bias``.
    """

    weights: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class MetricLoss:
    """dlib's ``loss_metric_``: the training loss; it tells the descriptor's distance scale.

    Attributes:
        margin: the margin around the threshold used in training.
        distance_threshold: same-person pairs were trained to lie closer than this.
    """

    margin: float
    distance_threshold: float


Layer = Conv | Affine | Relu | Pool | AddPrev | Tag | Skip | FullyConnected


@dataclass(frozen=True)
class DlibNetwork:
    """A network read from a dlib file.

    Attributes:
        input: the input layer.
        layers: the layers in network order, input side first, tags and skips included.
        loss: the loss layer on top.
    """

    input: InputRgbImage
    layers: tuple[Layer, ...]
    loss: MetricLoss

    def of_kind(self, kind: type) -> list:
        """The layers of one type (for example ``Conv``), input side first."""
        return [layer for layer in self.layers if isinstance(layer, kind)]


# ---------------------------------------------------------------------------------------
# The expected structure, from dlib's examples/dnn_face_recognition_ex.cpp.


@dataclass(frozen=True)
class ExpectedLayer:
    """One layer the file must hold, with the template arguments dlib's deserialiser checks.

    Attributes:
        kind: "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "tag", "skip" or "fc".
        filters: con: num_filters; fc: number of outputs.
        window: con, pools: the filter or window size (square; 0 = the whole input).
        stride: con, pools: the stride (both axes).
        tag: add_prev, tag, skip: the tag number.
    """

    kind: str
    filters: int = 0
    window: int = 0
    stride: int = 1
    tag: int = 0

    @property
    def padding(self) -> int:
        """dlib's default padding for con and pools: none when strided, else window // 2."""
        return 0 if self.stride != 1 else self.window // 2


def _con(filters: int, window: int, stride: int) -> ExpectedLayer:
    return ExpectedLayer("con", filters=filters, window=window, stride=stride)


_AFFINE = ExpectedLayer("affine")
_RELU = ExpectedLayer("relu")


def _residual_branch(filters: int, stride: int) -> list[ExpectedLayer]:
    """``block<N, affine, stride>``: con 3x3/stride -> affine -> relu -> con 3x3 -> affine."""
    return [_con(filters, 3, stride), _AFFINE, _RELU, _con(filters, 3, 1), _AFFINE]


def _ares(filters: int) -> list[ExpectedLayer]:
    """``ares<N>``: relu(add_prev1(block(tag1(x)))), the identity residual block."""
    return [ExpectedLayer("tag", tag=1), *_residual_branch(filters, 1), ExpectedLayer("add_prev", tag=1), _RELU]


def _ares_down(filters: int) -> list[ExpectedLayer]:
    """``ares_down<N>``: relu(add_prev2(avg_pool 2x2/2(skip1(tag2(block/2(tag1(x))))))).

    The block output is tagged 2, the skip goes back to the block input (tag 1), whose
    2x2 average pool is added to the tagged block output.
    """
    return [
        ExpectedLayer("tag", tag=1),
        *_residual_branch(filters, 2),
        ExpectedLayer("tag", tag=2),
        ExpectedLayer("skip", tag=1),
        ExpectedLayer("avg_pool", window=2, stride=2),
        ExpectedLayer("add_prev", tag=2),
        _RELU,
    ]


def face_recognition_resnet_v1_structure() -> tuple[ExpectedLayer, ...]:
    """The layers of ``dlib_face_recognition_resnet_model_v1``, input side first (29 convolutions).

    Returns:
        The ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp`` as a flat tuple.
    """
    stem = [_con(32, 7, 2), _AFFINE, _RELU, ExpectedLayer("max_pool", window=3, stride=2)]
    stages = [
        *_ares(32) * 3,
        *_ares_down(64), *_ares(64) * 3,
        *_ares_down(128), *_ares(128) * 2,
        *_ares_down(256), *_ares(256) * 2,
        *_ares_down(256),
    ]
    head = [ExpectedLayer("avg_pool", window=0, stride=1), ExpectedLayer("fc", filters=128)]
    return tuple(stem + stages + head)


# ---------------------------------------------------------------------------------------
# Primitive decoders: pure functions of (bytes, offset) -> (value, next offset).


def decode_integer(data: bytes, offset: int, max_bytes: int = _LONG, signed: bool = True) -> tuple[int, int]:
    """One integer in dlib's variable-length form.

    Args:
        data: the bytes.
        offset: where the control byte is.
        max_bytes: the width of the C++ type; more payload bytes than this is an error.
        signed: whether the type may be negative.

    Returns:
        (value, offset just after it).

    Raises:
        DlibFormatError: past the end, a malformed control byte or a negative unsigned value.
    """
    if offset >= len(data):
        raise DlibFormatError(f"at byte {offset}: expected an integer, found the end of the data")
    control = data[offset]
    size = control & 0x0F
    negative = bool(control & 0x80)
    if control & 0x70 or not 1 <= size <= max_bytes or (negative and not signed):
        raise DlibFormatError(
            f"at byte {offset}: expected the control byte of a {'signed' if signed else 'unsigned'} "
            f"{max_bytes}-byte integer, found 0x{control:02x}"
        )
    end = offset + 1 + size
    if end > len(data):
        raise DlibFormatError(f"at byte {offset}: an integer of {size} bytes runs past the end of the data")
    magnitude = int.from_bytes(data[offset + 1 : end], "little")
    return (-magnitude if negative else magnitude), end


def decode_float(data: bytes, offset: int) -> tuple[float, int]:
    """One float or double in dlib's portable form (int64 mantissa, int16 exponent).

    Args:
        data: the bytes.
        offset: where the mantissa's control byte is.

    Returns:
        (value, offset just after it).

    Raises:
        DlibFormatError: past the end, or dlib's old text format (never written since 2013).
    """
    if offset < len(data) and data[offset] & 0x70:
        raise DlibFormatError(f"at byte {offset}: expected a binary float, found 0x{data[offset]:02x} (old text format?)")
    mantissa, after_mantissa = decode_integer(data, offset, max_bytes=8)
    exponent, end = decode_integer(data, after_mantissa, max_bytes=_SHORT)
    if exponent < _EXPONENT_INFINITY:
        return math.ldexp(float(mantissa), exponent), end
    if exponent == _EXPONENT_INFINITY:
        return math.inf, end
    if exponent == _EXPONENT_NEGATIVE_INFINITY:
        return -math.inf, end
    return math.nan, end


def decode_bool(data: bytes, offset: int) -> tuple[bool, int]:
    """One bool: the ASCII byte '0' or '1'.

    Returns:
        (value, offset + 1).
    """
    if offset >= len(data) or data[offset] not in b"01":
        found = "the end of the data" if offset >= len(data) else f"0x{data[offset]:02x}"
        raise DlibFormatError(f"at byte {offset}: expected a bool ('0' or '1'), found {found}")
    return data[offset] == ord("1"), offset + 1


def decode_string(data: bytes, offset: int, max_length: int = 1 << 16) -> tuple[str, int]:
    """One string: its length (unsigned long), then its bytes.

    Args:
        data: the bytes.
        offset: where the length is.
        max_length: longer strings are taken as garbage (layer names are short).

    Returns:
        (text, offset just after it); bytes that are not ASCII are shown escaped.
    """
    length, start = decode_integer(data, offset, max_bytes=_LONG, signed=False)
    if length > max_length or start + length > len(data):
        raise DlibFormatError(f"at byte {offset}: expected a string, found a length of {length}")
    return data[start : start + length].decode("ascii", errors="backslashreplace"), start + length


# ---------------------------------------------------------------------------------------
# The reader: a cursor over the bytes that checks what it reads.


class _Cursor:
    """Reads dlib records one after another; every error names the source and the byte offset."""

    def __init__(self, data: bytes, source: str):
        self.data = data
        self.source = source
        self.offset = 0

    def _decode(self, decoder, *args, **kwargs):
        try:
            value, self.offset = decoder(self.data, self.offset, *args, **kwargs)
        except DlibFormatError as error:
            raise DlibFormatError(f"{self.source}: {error}") from None
        return value

    def fail(self, offset: int, message: str) -> DlibFormatError:
        return DlibFormatError(f"{self.source}: at byte {offset}: {message}")

    def integer(self, max_bytes: int = _LONG, signed: bool = True) -> int:
        return self._decode(decode_integer, max_bytes=max_bytes, signed=signed)

    def floating(self) -> float:
        return self._decode(decode_float)

    def boolean(self) -> bool:
        return self._decode(decode_bool)

    def string(self) -> str:
        return self._decode(decode_string)

    def expect_integer(self, allowed: tuple[int, ...], what: str, max_bytes: int = _LONG) -> int:
        """An integer that must be one of ``allowed`` (a version, a size fixed by the template)."""
        start = self.offset
        value = self.integer(max_bytes=max_bytes)
        if value not in allowed:
            expected = " or ".join(str(number) for number in allowed)
            raise self.fail(start, f"expected {what} {expected}, found {value}")
        return value

    def expect_name(self, allowed: tuple[str, ...], what: str) -> str:
        """A record name such as 'con_4' that must be one of ``allowed``."""
        start = self.offset
        name = self.string()
        if name not in allowed:
            expected = " or ".join(repr(choice) for choice in allowed)
            raise self.fail(start, f"expected the {what} record {expected}, found {name!r}")
        return name

    def tensor(self, what: str) -> np.ndarray:
        """A resizable_tensor: (num_samples, k, nr, nc) float32 values."""
        start = self.offset
        self.expect_integer((2,), f"the tensor version of {what}", max_bytes=_INT)
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(start, f"{what}: negative tensor dimensions {shape}")
        count = math.prod(shape)
        end = self.offset + 4 * count
        if end > len(self.data):
            raise self.fail(start, f"{what}: a tensor of shape {shape} runs past the end of the data")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.offset)
        self.offset = end
        return values.astype(np.float32).reshape(shape)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: the shape of a view into a parameter block."""
        start = self.offset
        self.expect_integer((1,), f"the alias tensor version of {what}", max_bytes=_INT)
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(start, f"{what}: negative alias tensor dimensions {shape}")
        return shape

    def skip_multipliers(self, count: int) -> None:
        """Learning-rate and weight-decay multipliers: training settings, not needed to run."""
        for _ in range(count):
            self.floating()


# ---------------------------------------------------------------------------------------
# Records, one reader per layer type (the layout of each type's serialize() in layers.h).


def _read_loss(cursor: _Cursor) -> MetricLoss:
    cursor.expect_integer((1,), "add_loss_layer version", max_bytes=_INT)
    name = cursor.expect_name(("loss_metric_2", "loss_metric_"), "loss")
    if name == "loss_metric_":
        return MetricLoss(margin=0.1, distance_threshold=0.75)  # hard-coded in that old version
    margin = cursor.floating()
    return MetricLoss(margin=margin, distance_threshold=cursor.floating())


def _read_input(cursor: _Cursor) -> InputRgbImage:
    cursor.expect_name(("input_rgb_image_sized",), "input layer")
    mean_rgb = np.array([cursor.floating() for _ in range(3)], dtype=np.float32)
    start = cursor.offset
    rows = cursor.integer(signed=False)
    cols = cursor.integer(signed=False)
    if rows <= 0 or cols <= 0:
        raise cursor.fail(start, f"expected a positive input size, found {rows} x {cols}")
    return InputRgbImage(mean_rgb=mean_rgb, rows=rows, cols=cols)


def _check_window(cursor: _Cursor, start: int, what: str, found: tuple, expected: ExpectedLayer) -> None:
    """The (nr, nc, stride_y, stride_x, padding_y, padding_x) that dlib's template fixes."""
    wanted = (expected.window, expected.window, expected.stride, expected.stride, expected.padding, expected.padding)
    if tuple(found) != wanted:
        raise cursor.fail(
            start,
            f"{what}: expected (nr, nc, stride_y, stride_x, padding_y, padding_x) = {wanted}, found {tuple(found)}",
        )


def _split_parameters(cursor: _Cursor, start: int, what: str, params: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    """Cut a layer's flat parameter block into the views its alias tensors describe."""
    flat = params.reshape(-1)
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != flat.size:
        raise cursor.fail(start, f"{what}: parameter block of {flat.size} values does not hold {shapes}")
    pieces, begin = [], 0
    for shape, size in zip(shapes, sizes):
        pieces.append(flat[begin : begin + size].reshape(shape))
        begin += size
    return pieces


def _read_con(cursor: _Cursor, expected: ExpectedLayer) -> Conv:
    start = cursor.offset
    name = cursor.expect_name(("con_4", "con_5"), "convolution")
    params = cursor.tensor("con_ parameters")
    num_filters = cursor.integer()
    geometry = (
        cursor.integer(), cursor.integer(),  # nr, nc (long)
        cursor.integer(_INT), cursor.integer(_INT),  # stride_y, stride_x
        cursor.integer(_INT), cursor.integer(_INT),  # padding_y, padding_x
    )
    filter_shape = cursor.alias_tensor("con_ filters")
    cursor.alias_tensor("con_ biases")  # the bias's shape: its values are in the parameter block
    cursor.skip_multipliers(4)
    use_bias = cursor.boolean() if name == "con_5" else True
    if num_filters != expected.filters:
        raise cursor.fail(start, f"convolution: expected {expected.filters} filters, found {num_filters}")
    _check_window(cursor, start, "convolution", geometry, expected)
    if filter_shape[0] != num_filters or filter_shape[2:] != geometry[:2]:
        raise cursor.fail(start, f"convolution: filter shape {filter_shape} does not match its settings")
    shapes = [filter_shape, (num_filters,)] if use_bias else [filter_shape]
    pieces = _split_parameters(cursor, start, "convolution", params, shapes)
    return Conv(filters=pieces[0], bias=pieces[1] if use_bias else None, stride=geometry[2:4], padding=geometry[4:6])


def _read_affine(cursor: _Cursor, expected: ExpectedLayer) -> Affine:
    del expected
    start = cursor.offset
    name = cursor.expect_name(("affine_2", "affine_"), "affine")
    params = cursor.tensor("affine_ parameters")
    gamma_shape = cursor.alias_tensor("affine_ gamma")
    beta_shape = cursor.alias_tensor("affine_ beta")
    mode = cursor.integer(_INT)
    disabled = cursor.boolean() if name == "affine_2" else False
    if mode != _CONV_MODE or disabled:
        raise cursor.fail(
            start, f"affine: expected an enabled per-channel (conv mode) affine, found mode {mode}, disabled={disabled}"
        )
    channels = gamma_shape[1]
    if gamma_shape != (1, channels, 1, 1) or beta_shape != gamma_shape:
        raise cursor.fail(start, f"affine: expected per-channel gamma and beta, found {gamma_shape} and {beta_shape}")
    gamma, beta = _split_parameters(cursor, start, "affine", params, [(channels,), (channels,)])
    return Affine(gamma=gamma, beta=beta)


def _read_relu(cursor: _Cursor, expected: ExpectedLayer) -> Relu:
    del expected
    cursor.expect_name(("relu_",), "relu")
    return Relu()


def _read_pool(cursor: _Cursor, expected: ExpectedLayer) -> Pool:
    start = cursor.offset
    mode = "max" if expected.kind == "max_pool" else "avg"
    cursor.expect_name((f"{mode}_pool_2",), f"{mode} pooling")
    geometry = (
        cursor.integer(), cursor.integer(),  # nr, nc (long)
        cursor.integer(_INT), cursor.integer(_INT),  # stride_y, stride_x
        cursor.integer(_INT), cursor.integer(_INT),  # padding_y, padding_x
    )
    _check_window(cursor, start, f"{mode} pooling", geometry, expected)
    return Pool(mode=mode, window=geometry[0:2], stride=geometry[2:4], padding=geometry[4:6])


def _read_add_prev(cursor: _Cursor, expected: ExpectedLayer) -> AddPrev:
    cursor.expect_name(("add_prev_",), "add_prev")
    return AddPrev(tag=expected.tag)


def _read_fc(cursor: _Cursor, expected: ExpectedLayer) -> FullyConnected:
    start = cursor.offset
    name = cursor.expect_name(("fc_2", "fc_3"), "fully connected")
    num_outputs = cursor.integer(signed=False)
    num_inputs = cursor.integer(signed=False)
    params = cursor.tensor("fc_ parameters")
    weight_shape = cursor.alias_tensor("fc_ weights")
    cursor.alias_tensor("fc_ biases")
    bias_mode = cursor.expect_integer((_FC_HAS_BIAS, _FC_NO_BIAS), "fc_ bias mode", max_bytes=_INT)
    cursor.skip_multipliers(4)
    use_bias = (cursor.boolean() if name == "fc_3" else True) and bias_mode == _FC_HAS_BIAS
    if num_outputs != expected.filters or weight_shape != (num_inputs, num_outputs, 1, 1):
        raise cursor.fail(
            start, f"fully connected: expected {expected.filters} outputs, found {num_outputs} (weights {weight_shape})"
        )
    # With a bias, dlib's parameter block has one more row, (num_inputs + 1, num_outputs).
    shapes = [(num_inputs, num_outputs), (num_outputs,)] if use_bias else [(num_inputs, num_outputs)]
    pieces = _split_parameters(cursor, start, "fc", params, shapes)
    return FullyConnected(weights=pieces[0], bias=pieces[1] if use_bias else None)


_DETAIL_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_relu,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "add_prev": _read_add_prev,
    "fc": _read_fc,
}

# Versions each wrapper has written over dlib's history (core.h), and what they add.
_ADD_LAYER_VERSIONS = (1, 2)  # 2 adds params_grad
_INPUT_ADD_LAYER_VERSIONS = (2, 3)  # the add_layer on the input; 3 adds sample_expansion_factor
_TAG_OR_SKIP_VERSIONS = (1,)


def _read_layer_state(cursor: _Cursor, version: int, on_input: bool) -> None:
    """The state an add_layer writes after its details: training scratch, not needed to run."""
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_..._disabled
        cursor.boolean()
    for what in ("x_grad", "cached_output"):
        cursor.tensor(what)
    if on_input:
        cursor.tensor("grad_final")
        if version >= 3:
            cursor.integer(_INT, signed=False)  # sample_expansion_factor
    elif version >= 2:
        cursor.tensor("params_grad")


def read_dlib_network(data: bytes, expected: tuple[ExpectedLayer, ...], source: str = "dlib network") -> DlibNetwork:
    """Parse a dlib network from its bytes, checking every record against ``expected``.

    Args:
        data: the whole file.
        expected: the layers, input side first (:func:`face_recognition_resnet_v1_structure`).
        source: a name for the data in error messages (the file path).

    Returns:
        The network, with its parameters as float32 NumPy arrays.

    Raises:
        DlibFormatError: with the byte offset and what was expected, at the first mismatch,
            at a truncation, or when bytes are left over after the last record.
    """
    cursor = _Cursor(data, source)
    loss = _read_loss(cursor)
    versions = []
    for position, layer in reversed(list(enumerate(expected))):  # outermost first
        if layer.kind in ("tag", "skip"):
            allowed, what = _TAG_OR_SKIP_VERSIONS, f"the {layer.kind}{layer.tag} layer version"
        elif position == 0:
            allowed, what = _INPUT_ADD_LAYER_VERSIONS, "the version of the add_layer on the input"
        else:
            allowed, what = _ADD_LAYER_VERSIONS, f"the add_layer version (for {layer.kind})"
        versions.append(cursor.expect_integer(allowed, what, max_bytes=_INT))
    versions.reverse()  # input side first, like expected
    network_input = _read_input(cursor)
    layers: list[Layer] = []
    for position, (layer, version) in enumerate(zip(expected, versions)):
        if layer.kind == "tag":
            layers.append(Tag(layer.tag))
        elif layer.kind == "skip":
            layers.append(Skip(layer.tag))
        else:
            layers.append(_DETAIL_READERS[layer.kind](cursor, layer))
            _read_layer_state(cursor, version, on_input=position == 0)
    if cursor.offset != len(data):
        raise cursor.fail(cursor.offset, f"expected the end of the network, found {len(data) - cursor.offset} more bytes")
    return DlibNetwork(input=network_input, layers=tuple(layers), loss=loss)


def read_face_recognition_resnet(path: str | Path) -> DlibNetwork:
    """Read ``dlib_face_recognition_resnet_model_v1.dat`` (or a file of the same network).

    Args:
        path: the .dat file.

    Returns:
        The network; its 150 x 150 input and 29 convolutions are checked.

    Raises:
        DlibFormatError: the file is not that network (the message says where and why).
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        data = read_untrusted_bytes(path, DLIB_FILE_SIZE_LIMIT, "dlib network file")
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise FileNotFoundError(2, "No such file", str(path)) from None
        raise DlibFormatError(str(error)) from None
    network = read_dlib_network(data, face_recognition_resnet_v1_structure(), source=str(path))
    if (network.input.rows, network.input.cols) != (FACE_RECOGNITION_CHIP_SIZE, FACE_RECOGNITION_CHIP_SIZE):
        raise DlibFormatError(
            f"{path}: expected an input of {FACE_RECOGNITION_CHIP_SIZE} x {FACE_RECOGNITION_CHIP_SIZE} pixels, "
            f"found {network.input.rows} x {network.input.cols}"
        )
    return network
