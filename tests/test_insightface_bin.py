"""insightface's verification sets (``bin:PATH``): read without running their code, scored by insightface's protocol.

The .bin files are written here: ORL photos cropped square, resized to 112 x 112 and
JPEG-encoded, two a pair. The run evaluated is a stand-in with a real (tiny, untrained)
Keras model saved as ``model.keras``, so ``facetrip evaluate`` loads it as any run; its
numbers are checked against a plain NumPy reference of insightface's protocol.
"""

import io
import json
import pickle
import re
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from facetrip.data.insightface_bin import (
    MIN_PAIRS,
    VerificationBinError,
    load_restricted,
    read_verification_bin,
)
from facetrip.evaluation.insightface_protocol import consecutive_folds, verification_bin_pairs
from helpers import one_line_error

IMAGE_SIZE = 24


def orl_crop(person: int, photo: int) -> bytes:
    """ORL photo ``s<person>/<photo>.pgm`` (92 x 112 grey) cut square, as a 112 x 112 RGB JPEG."""
    from facetrip.data.orl import orl_faces_root

    with Image.open(orl_faces_root() / f"s{person}" / f"{photo}.pgm") as image:
        square = image.convert("RGB").crop((0, 10, 92, 102)).resize((112, 112), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    square.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def orl_pairs(num_pairs: int) -> tuple[list[bytes], list[bool]]:
    """Alternating same (one person's photos 1 and 2) and different pairs (photo 3 of two people)."""
    images, flags = [], []
    for index in range(num_pairs):
        person = index % 40 + 1
        if index % 2 == 0:
            images += [orl_crop(person, 1), orl_crop(person, 2)]
        else:
            images += [orl_crop(person, 3), orl_crop(person % 40 + 1, 4)]
        flags.append(index % 2 == 0)
    return images, flags


@pytest.fixture(scope="module")
def pairs_data():
    """12 pairs: 6 same, 6 different."""
    return orl_pairs(12)


def write_bin(path, content, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


# ----------------------------------------------------------------------------- Python 2 pickles, by hand


def _py2_string(data: bytes) -> bytes:
    """A Python 2 ``str`` as Python 2's pickler writes it (SHORT_BINSTRING / BINSTRING)."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def py2_pickle(images: list[bytes], flags, as_array: bool) -> bytes:
    """``(images, flags)`` as insightface's Python 2 scripts wrote it: protocol 2, str images, a 2.7-era numpy array."""
    parts = [b"\x80\x02", b"](", *map(_py2_string, images), b"e"]
    if as_array:
        parts += [
            b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"K\x00\x85", _py2_string(b"b"), b"\x87R",
            b"(K\x01K", bytes([len(flags)]), b"\x85", b"cnumpy\ndtype\n", _py2_string(b"b1"), b"K\x00K\x01\x87R",
            b"(K\x03", _py2_string(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
            b"\x89", _py2_string(bytes(int(flag) for flag in flags)), b"tb",
        ]
    else:
        parts += [b"](", *(b"\x88" if flag else b"\x89" for flag in flags), b"e"]
    return b"".join(parts) + b"\x86."


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("as_array", [False, True], ids=["list", "array"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL], ids=["protocol2", "highest"])
def test_images_and_flags_round_trip(tmp_path, pairs_data, protocol, as_array):
    images, flags = pairs_data
    path = write_bin(tmp_path / "set.bin", (images, np.array(flags) if as_array else flags), protocol)
    read = read_verification_bin(path)
    assert read.images == images and read.same.dtype == bool and read.same.tolist() == flags
    assert read.num_pairs == 12 and len(read.fingerprint) == 12


@pytest.mark.parametrize("as_array", [False, True], ids=["list", "array"])
def test_python_2_pickles_read_as_insightface_reads_them(tmp_path, pairs_data, as_array):
    """The hand-written Python 2 pickle is real: numpy itself reads it (encoding='bytes'), and so does facetrip."""
    images, flags = pairs_data
    data = py2_pickle(images, flags, as_array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core, as Python 2-era numpy named it
        reference_images, reference_flags = pickle.loads(data, encoding="bytes")
    assert reference_images == images and list(reference_flags) == flags
    (tmp_path / "py2.bin").write_bytes(data)
    read = read_verification_bin(tmp_path / "py2.bin")
    assert read.images == images and read.same.tolist() == flags


def test_numpy_bool_scalars_are_flags_too(tmp_path, pairs_data):
    images, flags = pairs_data
    path = write_bin(tmp_path / "set.bin", (images, [np.bool_(flag) for flag in flags]), 2)
    assert read_verification_bin(path).same.tolist() == flags


REFUSED_GLOBALS = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("builtins", "eval"), ("builtins", "exec"),
    ("__builtin__", "eval"), ("builtins", "getattr"), ("builtins", "__import__"), ("builtins", "open"),
    ("builtins", "bytearray"), ("builtins", "set"), ("builtins", "bool"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"), ("functools", "partial"), ("pickle", "loads"),
    ("shutil", "rmtree"), ("sys", "modules"), ("io", "open"), ("codecs", "encode"), ("_codecs", "decode"),
    ("numpy", "load"), ("numpy", "frombuffer"), ("numpy", "array"), ("numpy", "memmap"), ("numpy.lib.npyio", "load"),
    ("numpy.testing._private.utils", "runstring"), ("numpy.core.multiarray", "_reconstruct_x"),
    ("numpy._core.multiarray", "frombuffer"), ("numpy.core.numeric", "fromstring"), ("torch", "load"),
]


def global_call_pickle(module: str, name: str, stack: bool) -> bytes:
    """A pickle that calls ``module.name()``: GLOBAL (protocol 2) or STACK_GLOBAL (protocol 4)."""
    if stack:
        unicode = [b"\x8c" + bytes([len(text)]) + text.encode() for text in (module, name)]
        return b"\x80\x04" + unicode[0] + unicode[1] + b"\x93)R."
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."


@pytest.mark.parametrize("stack", [False, True], ids=["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("module, name", REFUSED_GLOBALS, ids=lambda value: str(value))
def test_the_unpickler_refuses_every_global_that_is_not_data(tmp_path, module, name, stack):
    path = tmp_path / "evil.bin"
    path.write_bytes(global_call_pickle(module, name, stack))
    expected = re.escape(f"names the Python global {module}.{name}, ") + ".*nothing of the file was run"
    with pytest.raises(VerificationBinError, match=expected):
        read_verification_bin(path)


@pytest.mark.parametrize("content", [
    b"\x80\x02cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R.",  # numpy.dtype("O"): object arrays would unpickle objects
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85R.",
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.",  # only latin1 is how bytes are written
    b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncbuiltins\nlist\n)K\x00\x87R.",  # a refused subtype first
    b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x05\x85C\x01b\x87R.",  # not numpy's (0,)
], ids=["object-dtype", "float-dtype", "zlib-codec", "list-subtype", "sized-reconstruct"])
def test_the_allowed_names_accept_a_bool_array_and_nothing_else(tmp_path, content):
    (tmp_path / "odd.bin").write_bytes(content)
    with pytest.raises(VerificationBinError):
        read_verification_bin(tmp_path / "odd.bin")


class _Payload:
    """Unpickled by a plain unpickler, this creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch '{self.marker}'",)


def test_a_malicious_pickle_runs_nothing(tmp_path, pairs_data):
    """The payload is real (a plain pickle.loads creates the marker), and facetrip refuses it with no marker made."""
    images, flags = pairs_data
    control_marker, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(control_marker)))
    assert control_marker.exists()
    for content in ((images[:-1] + [_Payload(marker)], flags), (images, flags, _Payload(marker)), _Payload(marker)):
        path = write_bin(tmp_path / "evil.bin", content)
        with pytest.raises(VerificationBinError, match="names the Python global (os|posix).system"):
            read_verification_bin(path)
        assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ((["not bytes"] * 4, [True, False]), "image 0 as a str"),
    (([b"x"] * 4, [True, 1]), "flag 1 as a int"),
    (([b"x"] * 4, "TF"), "flags as a str"),
    (([b"x"] * 6, [True, False]), "6 images for 2 pairs"),
    (([b"x"] * 2, [True]), f"1 pair (at least {MIN_PAIRS})"),
    (([b"x"] * 4,), "a tuple of 1"),
    ({"images": [], "flags": []}, "a dict"),
    (([b"x"] * 4, np.zeros((2, 1), bool)), "not one dimension"),
], ids=["str-images", "int-flag", "str-flags", "too-many-images", "one-pair", "one-part", "dict", "2-d-flags"])
def test_a_wrong_structure_is_one_line(tmp_path, content, message):
    path = write_bin(tmp_path / "odd.bin", content)
    with pytest.raises(VerificationBinError) as caught:
        read_verification_bin(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_images_must_decode_as_square_crops(tmp_path, pairs_data):
    images, flags = pairs_data
    buffer = io.BytesIO()
    Image.new("RGB", (112, 96)).save(buffer, "PNG")
    with pytest.raises(VerificationBinError, match="image 3 of .* is not a readable image"):
        read_verification_bin(write_bin(tmp_path / "a.bin", (images[:3] + [b"\xff\xd8 no jpeg"] + images[4:], flags)))
    with pytest.raises(VerificationBinError, match="image 5 of .* is 112 x 96 pixels"):
        read_verification_bin(write_bin(tmp_path / "b.bin", (images[:5] + [buffer.getvalue()] + images[6:], flags)))


def test_cut_files_and_non_pickles_are_one_line(tmp_path, pairs_data):
    data = pickle.dumps(pairs_data, protocol=2)
    for cut in (1, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.bin").write_bytes(data[:cut])
        with pytest.raises(VerificationBinError, match="cut short|is not an insightface verification set"):
            read_verification_bin(tmp_path / "cut.bin")
    (tmp_path / "text.bin").write_bytes(b"hello, not a pickle\n")
    with pytest.raises(VerificationBinError, match="is not an insightface verification set"):
        read_verification_bin(tmp_path / "text.bin")


def test_a_bin_source_is_named_and_refused_where_identities_are_needed(tmp_path):
    from facetrip.data import DataError
    from facetrip.data.sources import check_source_folder, is_same_source, parse_source

    spec = parse_source(f"bin:{tmp_path}/lfw.bin")
    assert (spec.kind, spec.name, str(spec)) == ("bin", f"{tmp_path}/lfw.bin", f"bin:{tmp_path}/lfw.bin")
    assert is_same_source(f"bin:{tmp_path}/lfw.bin", f"bin:{tmp_path}/./lfw.bin")
    with pytest.raises(DataError, match="bin: needs"):
        parse_source("bin:")
    with pytest.raises(DataError, match="only `facetrip evaluate RUN --data bin:"):
        check_source_folder(f"bin:{tmp_path}/lfw.bin")


def test_load_faces_gives_the_crops_labelled_by_pair(tmp_path, pairs_data):
    from facetrip.data import load_faces

    path = write_bin(tmp_path / "set.bin", pairs_data)
    faces = load_faces(f"bin:{path}")
    assert list(faces.encoded) == pairs_data[0] and faces.labels.tolist() == np.repeat(np.arange(12), 2).tolist()
    assert faces.identity_names[:2] == ["pair 1", "pair 2"] and faces.source == f"bin:{path}"


# ----------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("num_pairs", [2, 7, 10, 23, 6000, 7001])
def test_folds_are_consecutive_blocks_as_sklearn_kfold_cuts_them(num_pairs):
    from sklearn.model_selection import KFold

    folds = consecutive_folds(num_pairs)
    splits = min(10, num_pairs)
    for fold, (_, held_out) in enumerate(KFold(n_splits=splits, shuffle=False).split(np.arange(num_pairs))):
        assert np.flatnonzero(folds == fold).tolist() == held_out.tolist()


def test_pairs_are_consecutive_images():
    pairs = verification_bin_pairs(np.array([True, False, True]), "/x/lfw.bin")
    assert pairs.first.tolist() == [0, 2, 4] and pairs.second.tolist() == [1, 3, 5]
    assert pairs.folds.tolist() == [0, 1, 2] and pairs.same.tolist() == [True, False, True]
    assert "lfw.bin" in pairs.how and "cannot be checked" in pairs.how


def test_load_restricted_gives_plain_data():
    assert load_restricted(pickle.dumps(([b"a"], [True]), protocol=0)) == ([b"a"], [True])


# ----------------------------------------------------------------------------- through the CLI, on a stand-in run


def stand_in_run(folder, face_chips: bool):
    """A run directory whose model is a small, untrained, seeded dense layer on 24 x 24 RGB (not mirror-symmetric)."""
    import keras

    from facetrip.runs import METADATA_FORMAT, save_model_atomically

    folder.mkdir(parents=True)
    model = keras.Sequential([keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(8, kernel_initializer=keras.initializers.RandomNormal(seed=7)),
                              keras.layers.UnitNormalization()])
    save_model_atomically(model, folder / "model.keras")
    metadata = {"format": METADATA_FORMAT, "source": "orl_faces", "image_size": [IMAGE_SIZE, IMAGE_SIZE], "channels": 3,
                "metric": "euclidean", "face_chips": face_chips, "aligned": "none", "threshold": 0.8,
                "threshold_source": "dev", "split": {"train": ["s1", "s2", "s3"], "dev": ["s4"], "test": ["s5"]}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def chip_run(tmp_path_factory):
    return stand_in_run(tmp_path_factory.mktemp("runs") / "chips", face_chips=True)


def test_cut_and_foreign_files_end_the_command_in_one_line(tmp_path, chip_run, pairs_data):
    data = pickle.dumps(pairs_data, protocol=2)
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.bin").write_bytes(b"hello, not a pickle\n")
    (tmp_path / "evil.bin").write_bytes(global_call_pickle("os", "system", stack=False))
    for name, fragment in (("cut.bin", "is cut short"), ("text.bin", "is not an insightface verification set"),
                           ("evil.bin", "names the Python global os.system"), ("missing.bin", "no such file")):
        one_line_error(run_cli("evaluate", chip_run, "--data", f"bin:{tmp_path / name}", "--data-dir", tmp_path / "d",
                               "--no-baselines"), fragment)
    one_line_error(run_cli("data", f"bin:{tmp_path / 'cut.bin'}", "--export", tmp_path / "crops"), "is cut short")
    for command in (("data", f"bin:{tmp_path / 'cut.bin'}", "--data-dir", tmp_path / "d"),  # what training would get
                    ("train", "--data", f"bin:{tmp_path / 'cut.bin'}", "--run-dir", tmp_path / "r")):
        one_line_error(run_cli(*command), "only `facetrip evaluate RUN --data bin:")
    assert not (tmp_path / "r").exists()


def reference_embeddings(model, faces) -> np.ndarray:
    """insightface's embedding in plain NumPy: normalise(f(x) + f(mirror(x))) of the chips as the model reads them."""
    from facetrip.data.model_input import decode_inputs

    inputs = decode_inputs(list(faces.encoded), (IMAGE_SIZE, IMAGE_SIZE), 3)  # (N, 24, 24, 3)
    summed = model.predict(inputs, verbose=0) + model.predict(inputs[:, :, ::-1], verbose=0)  # (N, D)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


def reference_accuracy(distances: np.ndarray, same: np.ndarray) -> list[float]:
    """insightface's calculate_roc accuracy per fold (sklearn KFold, no shuffle), thresholds at every midpoint."""
    from sklearn.model_selection import KFold

    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(distances):
        candidates = np.unique(distances[train])
        candidates = np.concatenate([[candidates[0] - 1], (candidates[:-1] + candidates[1:]) / 2, [candidates[-1] + 1]])
        train_accuracy = [np.mean((distances[train] <= threshold) == same[train]) for threshold in candidates]
        threshold = candidates[int(np.argmax(train_accuracy))]
        accuracies.append(float(np.mean((distances[test] <= threshold) == same[test])))
    return accuracies


@pytest.mark.parametrize("face_chips", [True, False], ids=["chips", "whole-images"])
def test_evaluate_scores_the_files_pairs_with_the_mirror_added(tmp_path, face_chips, chip_run, data_dir):
    """20 pairs (10 same, 10 different, two a fold): the AUC and each fold's accuracy are the NumPy reference's.

    The baselines (on chips) fit on the run's own training source, ORL.
    """
    from sklearn.metrics import roc_auc_score

    from facetrip.data.prepared_bin import load_prepared_bin
    from facetrip.data.model_input import decode_inputs
    from facetrip.runs import load_embedding_model

    run_dir = chip_run if face_chips else stand_in_run(tmp_path / "whole", face_chips=False)
    path = write_bin(tmp_path / "lfw.bin", orl_pairs(20), protocol=2)
    result = run_cli("evaluate", run_dir, "--data", f"bin:{path}", "--data-dir", data_dir, "--json",
                     "--baselines" if face_chips else "--no-baselines")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pairs = report["pairs"]
    assert (pairs["same"], pairs["different"], pairs["images"], pairs["identities"]) == (10, 10, 40, 0)
    assert "insightface's protocol: 10 consecutive folds" in pairs["how"] and "cannot be checked" in pairs["how"]
    assert report["source"] == f"bin:{path}" and (report["faces"] is not None) == face_chips
    assert report["files"]["metrics"].startswith("metrics-") and report["files"]["metrics"].endswith("lfw_bin.json")
    expected_baselines = {"raw pixels", "Eigenfaces", "Fisherfaces"} if face_chips else set()
    assert set(report["baselines"]) == expected_baselines, report["baselines_skipped"]
    assert json.loads((run_dir / report["files"]["metrics"]).read_text())["model"] == report["model"]

    faces, same = load_prepared_bin(f"bin:{path}", face_chips, data_dir=data_dir)
    model = load_embedding_model(run_dir)
    embeddings = reference_embeddings(model, faces)  # (40, 8)
    distances = np.linalg.norm(embeddings[0::2] - embeddings[1::2], axis=1)  # (20,)
    metrics = report["model"]
    assert metrics["auc"] == pytest.approx(roc_auc_score(same, -distances), abs=1e-9)
    assert metrics["accuracy"]["fold_accuracies"] == pytest.approx(reference_accuracy(distances, same))
    assert 0 <= metrics["eer"] <= 1 and metrics["accuracy"]["num_folds"] == 10
    plain = model.predict(decode_inputs(list(faces.encoded), (IMAGE_SIZE, IMAGE_SIZE), 3), verbose=0)  # no mirror
    plain_auc = roc_auc_score(same, -np.linalg.norm(plain[0::2] - plain[1::2], axis=1))
    assert plain_auc != pytest.approx(metrics["auc"], abs=1e-9)  # the mirror's embedding made a difference


def test_a_bin_source_refuses_a_pairs_file(tmp_path, chip_run, pairs_data):
    path = write_bin(tmp_path / "set.bin", pairs_data)
    (tmp_path / "pairs.txt").write_text("1\nName 1 2\nName 1 Other 1\n")
    one_line_error(run_cli("evaluate", chip_run, "--data", f"bin:{path}", "--pairs", tmp_path / "pairs.txt",
                           "--data-dir", tmp_path / "d"), "holds its own pairs")
