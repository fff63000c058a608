"""A run directory from someone else: what facetrip checks before it trusts it.

* ``metadata.json``: every field the code reads has the right type and a sane range, so a
  crafted file cannot allocate gigabytes, crash with a traceback or flip every verdict.
* ``model.keras``: a zip of exactly the members Keras writes, each below a size limit and
  not a decompression bomb; its HDF5 weights declare a bounded amount of data and link to
  no other file; its config names only Keras' own classes and facetrip's registered ones
  (no Lambda layer, no class of another package), and no code of the file runs.
* Commands that write into the run directory (or an output folder) say which path cannot
  be written, in one line; ``evaluate`` prints what it computed first.
* ``verify`` gives the right verdict on known ORL pairs, with the tiny test run and with
  the pretrained face network.
"""

import io
import json
import math
import os
import shutil
import struct
import warnings
import zipfile
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from helpers import one_line_error
from facetrip.data.orl import orl_faces_root
from facetrip.runs import METADATA_FORMAT, RunError, read_metadata

# A valid metadata.json with the fields every run has (a hand-made run, as in test_evaluate_sources).
VALID_METADATA = {
    "format": METADATA_FORMAT,
    "facetrip_version": "0.1.0",
    "source": "orl_faces",
    "image_size": [16, 14],
    "channels": 1,
    "metric": "euclidean",
    "margin": 0.2,
    "threshold": 0.5,
    "threshold_source": "dev",
    "split": {"train": ["s1", "s2"], "dev": ["s3"], "test": ["s4"], "seed": 0},
}


def copy_run(run_dir: Path, target: Path) -> Path:
    """A copy of a run directory without what commands write into it (evaluation, embeddings, triplets)."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("metrics.json", "roc.png", "logs", "embeddings*",
                                                                   "triplets-*", "export-*"))
    return target


def write_metadata(run_dir: Path, metadata) -> None:
    """``metadata.json`` as JSON that Python writes (NaN and Infinity as the bare words)."""
    (run_dir / "metadata.json").write_text(json.dumps(metadata))


def orl(identity: str, image: int) -> Path:
    return orl_faces_root() / identity / f"{image}.pgm"


# ----------------------------------------------------------------------------- metadata.json


def changed(**fields):
    """VALID_METADATA with some fields replaced or added."""
    return {**VALID_METADATA, **fields}


def without(field: str):
    """VALID_METADATA without ``field``."""
    return {key: value for key, value in VALID_METADATA.items() if key != field}


BAD_METADATA = {
    # field named in the error: metadata
    "image_size huge": ("image_size", changed(image_size=[100_000, 100_000])),
    "image_size one side": ("image_size", changed(image_size=[16])),
    "image_size strings": ("image_size", changed(image_size=["16", "14"])),
    "image_size fractions": ("image_size", changed(image_size=[16.5, 14])),
    "image_size zero": ("image_size", changed(image_size=[0, 14])),
    "image_size booleans": ("image_size", changed(image_size=[True, True])),
    "image_size text": ("image_size", changed(image_size="16x14")),
    "image_size missing": ("image_size", without("image_size")),
    "channels 2": ("channels", changed(channels=2)),
    "channels text": ("channels", changed(channels="1")),
    "channels missing": ("channels", without("channels")),
    "threshold NaN": ("threshold", changed(threshold=math.nan)),
    "threshold Infinity": ("threshold", changed(threshold=math.inf)),
    "threshold -Infinity": ("threshold", changed(threshold=-math.inf)),
    "threshold above any distance": ("threshold", changed(threshold=1e9)),
    "threshold text": ("threshold", changed(threshold="0.5")),
    "threshold boolean": ("threshold", changed(threshold=True)),
    "metric unknown": ("metric", changed(metric="manhattan")),
    "metric number": ("metric", changed(metric=3)),
    "metric rich markup": ("metric", changed(metric="[/bold]")),
    "metric missing": ("metric", without("metric")),
    "margin NaN": ("margin", changed(margin=math.nan)),
    "margin negative": ("margin", changed(margin=-1)),
    "margin word": ("margin", changed(margin="hard")),
    "source number": ("source", changed(source=5)),
    "source missing": ("source", without("source")),
    "format boolean": ("format", changed(format=True)),
    "face_chips text": ("face_chips", changed(face_chips="false")),
    "backbone list": ("backbone", changed(backbone=["resnet_small"])),
    "embedding_dim zero": ("embedding_dim", changed(embedding_dim=0)),
    "flip_tta number": ("flip_tta", changed(flip_tta=2)),
    "tta_shift negative": ("tta_shift", changed(tta_shift=-1)),
    "threshold_source list": ("threshold_source", changed(threshold_source=["dev"])),
    "threshold_source names a list": ("dev", changed(dev=[1, 2])),
    "calibration list": ("calibration", changed(calibration=[0.01])),
    "calibration far NaN": ("calibration.far", changed(calibration={"far": math.nan})),
    "calibration target_far 2": ("calibration.target_far", changed(calibration={"target_far": 2})),
    "calibration far_interval text": ("calibration.far_interval", changed(calibration={"far_interval": ["a", "b"]})),
    "calibration far_interval reversed": ("calibration.far_interval", changed(calibration={"far_interval": [0.5, 0.1]})),
    "calibration rule number": ("calibration.rule", changed(calibration={"rule": 5})),
    "calibration fallback list": ("calibration.fallback", changed(calibration={"fallback": ["x"]})),
    "saved distances NaN": ("calibration_different_distances", changed(calibration_different_distances=[0.5, math.nan])),
    "saved distances text": ("calibration_different_distances", changed(calibration_different_distances="0.5")),
    "split text": ("split", changed(split="s1")),
    "split train text": ("split.train", changed(split={**VALID_METADATA["split"], "train": "s1"})),
    "split test numbers": ("split.test", changed(split={**VALID_METADATA["split"], "test": [4]})),
    "split seed text": ("split.seed", changed(split={**VALID_METADATA["split"], "seed": "0"})),
    "chip text": ("chip", changed(chip="150")),
    "chip size text": ("chip.size", changed(face_chips=True, chip={"size": "150", "padding": 0.25, "alignment": "v2"})),
    "chip padding NaN": ("chip.padding", changed(face_chips=True, chip={"size": 150, "padding": math.nan, "alignment": "v2"})),
    "training_faces text": ("training_faces", changed(training_faces="400")),
}


@pytest.mark.parametrize("case", list(BAD_METADATA), ids=list(BAD_METADATA))
def test_read_metadata_refuses_a_bad_field_in_one_line_naming_it_and_the_file(case, tmp_path):
    field, metadata = BAD_METADATA[case]
    write_metadata(tmp_path, metadata)
    with pytest.raises(RunError) as raised:
        read_metadata(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and f"'{field}'" in message and str(tmp_path / "metadata.json") in message, message


@pytest.mark.parametrize("content", ["[1, 2]", '"a run"', "42", "null", "true"])
def test_read_metadata_refuses_a_file_that_is_not_a_json_object(content, tmp_path):
    (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(RunError, match="does not hold a JSON object"):
        read_metadata(tmp_path)


def test_read_metadata_refuses_unreadable_oversized_and_deeply_nested_files(tmp_path):
    (tmp_path / "metadata.json").mkdir()
    with pytest.raises(RunError, match="is a directory"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").rmdir()
    (tmp_path / "metadata.json").write_text(json.dumps(VALID_METADATA) + " " * (17 << 20))  # 17 MiB of padding
    with pytest.raises(RunError, match="larger than"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunError, match="nests deeper"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text('{"format": ' + "1" * 5000 + "}")  # above Python's int-digits limit
    with pytest.raises(RunError, match="corrupt"):
        read_metadata(tmp_path)


def test_read_metadata_accepts_what_facetrip_writes(tmp_path):
    """Absent optional fields, None where the code allows it, a threshold below 0 (a normal fit that accepts no pair)."""
    for metadata in (
        VALID_METADATA,
        changed(threshold=None, margin="soft", calibration=None, chip=None, training_faces=None),
        changed(threshold=-0.05, metric="squared", calibration={"far": 0.0, "far_interval": [0.0, 0.03], "fallback": None}),
        {key: value for key, value in VALID_METADATA.items() if key not in ("margin", "threshold", "split", "threshold_source")},
    ):
        write_metadata(tmp_path, metadata)
        assert read_metadata(tmp_path) == json.loads((tmp_path / "metadata.json").read_text())


def test_the_threshold_bound_knows_every_metric():
    from facetrip.mining import METRICS
    from facetrip.runs import LARGEST_DISTANCE

    assert set(LARGEST_DISTANCE) == set(METRICS)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["verify", "embed", "evaluate", "mine", "export"])
def test_every_command_refuses_a_nan_threshold_in_one_line(command, finished_run, tmp_path, data_dir):
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    write_metadata(run_dir, {**metadata, "threshold": math.nan})
    arguments = {
        "verify": ["verify", orl("s1", 1), orl("s1", 2), "--run", run_dir],
        "embed": ["embed", orl("s1", 1), "--run", run_dir, "-o", tmp_path / "out"],
        "evaluate": ["evaluate", run_dir, "--data-dir", data_dir, "--no-baselines"],
        "mine": ["mine", "--run", run_dir, "--data-dir", data_dir],
        "export": ["export", run_dir, "-o", tmp_path / "export"],
    }[command]
    one_line_error(run_cli(*arguments), "'threshold'", str(run_dir / "metadata.json"), "NaN")


@pytest.mark.slow
def test_verify_refuses_crafted_metadata_in_one_line(finished_run, tmp_path):
    """The cases that gave a traceback, a 120 GB allocation, or a silent verdict for every pair."""
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    for content, fragments in (
        (json.dumps([1, 2]), ("does not hold a JSON object",)),
        (json.dumps("a run"), ("does not hold a JSON object",)),
        (json.dumps({**metadata, "image_size": [100_000, 100_000]}), ("'image_size'", "[100000, 100000]")),
        (json.dumps({**metadata, "threshold": math.inf}), ("'threshold'", "Infinity")),
        (json.dumps({**metadata, "metric": "[/bold]"}), ("'metric'", "[/bold]")),
    ):
        (run_dir / "metadata.json").write_text(content)
        one_line_error(run_cli("verify", orl("s1", 1), orl("s1", 2), "--run", run_dir), str(run_dir), *fragments)


@pytest.mark.slow
def test_mine_and_embed_say_what_a_hand_made_run_does_not_record(finished_run, tmp_path, data_dir):
    """Both fields are optional in metadata.json (evaluate reads split.json); the commands that need them say so."""
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    write_metadata(run_dir, {**{key: value for key, value in metadata.items() if key != "margin"},
                             "split": {part: metadata["split"][part] for part in ("train", "dev", "test")}})
    one_line_error(run_cli("mine", "--run", run_dir, "--data-dir", data_dir), "records no margin", "--margin")
    one_line_error(run_cli("embed", "--run", run_dir, "--data-dir", data_dir), "no complete identity split", "seed")


# ----------------------------------------------------------------------------- model.keras: the archive


def rezip(source: Path, target: Path, replace=None, extra=None, compression=zipfile.ZIP_STORED) -> Path:
    """A copy of the .keras archive ``source`` with members replaced or added.

    Args:
        source: a model.keras.
        target: the file to write.
        replace: ``{member name: new bytes}``.
        extra: ``{member name: bytes}`` to add after the others.
        compression: how every member is stored.

    Returns:
        ``target``.
    """
    replace, extra = replace or {}, extra or {}
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", compression) as copy, \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # some archives are built with one on purpose
        for name in original.namelist():
            copy.writestr(name, replace.get(name, original.read(name)))
        for name, data in extra.items():
            copy.writestr(name, data)
    return target


def declare_unpacked_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that ``path``'s central directory declares for ``member``."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    position = 0
    for name in names:
        position = data.index(b"PK\x01\x02", position)  # central directory entries, in order
        if name == member:
            struct.pack_into("<I", data, position + 24, size)
        position += 4
    path.write_bytes(bytes(data))


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the tiny run to break."""
    return copy_run(finished_run[0], tmp_path / "run")


def verify_with(run_dir):
    return run_cli("verify", orl("s1", 1), orl("s1", 2), "--run", run_dir)


@pytest.mark.slow
def test_a_model_file_that_is_not_a_zip_or_holds_other_members_is_refused(run_copy, tmp_path):
    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    model.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1000)  # a bare HDF5 file, not the .keras zip
    one_line_error(verify_with(run_copy), str(model), "not a zip archive")
    for extra in ({"assets/run.py": b"print('hello')"}, {"../outside.txt": b"x"}, {"config.json": b"{}"}):
        rezip(original, model, extra=extra)
        one_line_error(verify_with(run_copy), str(model), repr(next(iter(extra))))
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(model, "w") as copy:
        copy.writestr("metadata.json", source.read("metadata.json"))  # no config, no weights
    one_line_error(verify_with(run_copy), str(model), "config.json")


@pytest.mark.slow
def test_a_member_declaring_too_much_unpacked_data_is_refused_before_keras_reads_it(run_copy, tmp_path):
    from facetrip.runs import MODEL_MEMBER_LIMITS

    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    large_config = b'{"padding": "' + b" " * (MODEL_MEMBER_LIMITS["config.json"] + 1) + b'"}'
    rezip(original, model, replace={"config.json": large_config})  # stored: no compression to blame
    one_line_error(verify_with(run_copy), str(model), "config.json", "declares")
    shutil.copy(original, model)
    declare_unpacked_size(model, "model.weights.h5", 0xFFFF_FFF0)  # about 4 GiB
    one_line_error(verify_with(run_copy), str(model), "model.weights.h5", "declares")


@pytest.mark.slow
def test_a_compression_bomb_is_refused(run_copy, tmp_path):
    """48 MiB of zeros deflate to about 50 kB: a ratio no model file has."""
    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    rezip(original, model, replace={"model.weights.h5": bytes(48 << 20)}, compression=zipfile.ZIP_DEFLATED)
    one_line_error(verify_with(run_copy), str(model), "model.weights.h5", "compress")


@pytest.mark.slow
def test_a_normally_compressed_model_file_still_loads(run_copy, tmp_path):
    """The archive deflated (as a zip tool would re-pack it) is no bomb."""
    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    rezip(original, model, compression=zipfile.ZIP_DEFLATED)
    result = run_cli("verify", orl("s1", 1), orl("s1", 2), "--run", run_copy, "--json")
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- model.keras: the HDF5 weights


def edited_weights(model: Path, edit) -> bytes:
    """model.keras' model.weights.h5, changed by ``edit(h5py.File, first dataset's name, that dataset)``."""
    import h5py

    with zipfile.ZipFile(model) as archive:
        buffer = io.BytesIO(archive.read("model.weights.h5"))
    names = []
    with h5py.File(buffer, "r+") as weights:
        weights.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        edit(weights, names[0], weights[names[0]])
    return buffer.getvalue()


@pytest.mark.slow
def test_weights_declaring_more_data_than_the_limit_are_refused_before_they_are_read(run_copy, tmp_path):
    """A chunked dataset with no chunks written: a few kB on disk, 600 MiB when read."""
    from facetrip.runs import WEIGHTS_DATA_LIMIT

    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    values = WEIGHTS_DATA_LIMIT // 4 + 1

    def huge(weights, name, dataset):
        del weights[name]
        weights.create_dataset(name, shape=(values,), dtype="float32", chunks=(1 << 16,))

    rezip(original, model, replace={"model.weights.h5": edited_weights(original, huge)})
    assert model.stat().st_size < 2 * original.stat().st_size
    one_line_error(verify_with(run_copy), str(model), "model.weights.h5", "declares")


@pytest.mark.slow
def test_weights_that_link_to_another_file_are_refused(run_copy, tmp_path):
    """An HDF5 external link would make Keras read the weights from any file on this machine."""
    import h5py

    model = run_copy / "model.keras"
    original = tmp_path / "original.keras"
    shutil.copy(model, original)
    elsewhere = tmp_path / "elsewhere.h5"

    def linked(weights, name, dataset):
        with h5py.File(elsewhere, "w") as other:
            other.create_dataset("values", data=np.asarray(dataset))
        del weights[name]
        weights[name] = h5py.ExternalLink(str(elsewhere), "/values")

    rezip(original, model, replace={"model.weights.h5": edited_weights(original, linked)})
    one_line_error(verify_with(run_copy), str(model), "model.weights.h5", "link")


@pytest.mark.slow
def test_the_limits_leave_room_for_the_face_network(pretrained_run):  # noqa: F811  (the imported fixture)
    """facetrip's largest model (the pretrained face network) is far below every limit."""
    import h5py

    from facetrip.runs import MODEL_FILE_LIMIT, MODEL_MEMBER_LIMITS, WEIGHTS_DATA_LIMIT

    path = pretrained_run / "model.keras"
    assert path.stat().st_size * 10 < MODEL_FILE_LIMIT
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            assert info.file_size * 10 < MODEL_MEMBER_LIMITS[info.filename], info
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    sizes = []
    weights.visititems(lambda name, item: sizes.append(item.nbytes) if isinstance(item, h5py.Dataset) else None)
    assert sum(sizes) * 10 < WEIGHTS_DATA_LIMIT


# ----------------------------------------------------------------------------- model.keras: safe mode


def save_model_with(layer, run_dir: Path) -> None:
    """The run's model.keras replaced by a small model through ``layer``, saved by Keras itself."""
    import keras

    inputs = keras.Input((16, 14, 1))
    outputs = keras.layers.UnitNormalization()(keras.layers.Flatten()(layer(inputs)))
    keras.Model(inputs, outputs).save(run_dir / "model.keras")


@pytest.mark.slow
def test_a_lambda_layer_is_refused_and_its_code_never_runs(run_copy, tmp_path):
    import keras

    marker = tmp_path / "lambda-ran"
    marker_name = str(marker)  # in the lambda's closure, which Keras saves with its code
    save_model_with(keras.layers.Lambda(lambda images: (open(marker_name, "w").close(), images)[1]), run_copy)
    marker.unlink()  # building the model above called the lambda once
    one_line_error(verify_with(run_copy), str(run_copy / "model.keras"), "Lambda")
    assert not marker.exists()
    # The marker does catch code that runs: loading the same file without safe mode writes it.
    keras.models.load_model(run_copy / "model.keras", safe_mode=False)
    assert marker.exists()


class NotRegistered:
    """A layer class facetrip knows nothing of (defined lazily: keras is imported by the test)."""

    @staticmethod
    def layer_class(marker: Path):
        import keras

        class UnknownLayer(keras.layers.Layer):
            def __init__(self, marker=str(marker), **kwargs):
                super().__init__(**kwargs)
                self.marker = marker
                Path(marker).touch()  # proof that the class was instantiated

            def call(self, inputs):
                return inputs

            def get_config(self):
                return {**super().get_config(), "marker": self.marker}

        return UnknownLayer


@pytest.mark.slow
def test_a_class_facetrip_does_not_register_is_refused(run_copy, tmp_path):
    marker = tmp_path / "constructed"
    save_model_with(NotRegistered.layer_class(marker)(), run_copy)
    marker.unlink()
    one_line_error(verify_with(run_copy), str(run_copy / "model.keras"), "UnknownLayer", "does not provide")
    assert not marker.exists()


@pytest.fixture
def registered_by_another_package():
    """A layer class registered with Keras by a package other than facetrip, unregistered afterwards."""
    import keras

    before = set(keras.saving.get_custom_objects())
    yield lambda marker: keras.saving.register_keras_serializable(package="thirdparty")(NotRegistered.layer_class(marker))
    for name in set(keras.saving.get_custom_objects()) - before:
        del keras.saving.get_custom_objects()[name]


@pytest.mark.slow
def test_a_class_another_package_registered_with_keras_is_refused(run_copy, tmp_path, registered_by_another_package):
    """Keras would build any class registered in the process; facetrip accepts only its own."""
    marker = tmp_path / "constructed"
    save_model_with(registered_by_another_package(marker)(), run_copy)
    marker.unlink()
    one_line_error(verify_with(run_copy), str(run_copy / "model.keras"), "thirdparty>UnknownLayer", "does not provide")
    assert not marker.exists()


# ----------------------------------------------------------------------------- paths that cannot be written


def unwritable_ways(run_dir: Path, blocked: Path):
    """The ways a command's target is made unwritable here, each undone after use.

    A folder put where the file must go (or a file where the folder must go) stops root as
    well; a read-only run directory is added when the tests do not run as root, for whom
    permission bits do not prevent writing.

    Args:
        run_dir: the run directory (made read-only).
        blocked: the file or folder the command writes (occupied by the other kind).

    Yields:
        A short name of each way, while it is in place.
    """
    occupied_by_folder = blocked.suffix != ""
    if occupied_by_folder:
        (blocked / "keep").mkdir(parents=True)  # a non-empty folder where a file must go
    else:
        blocked.write_text("a file where a folder must go")
    yield "occupied"
    if occupied_by_folder:
        shutil.rmtree(blocked)
    else:
        blocked.unlink()
    if os.geteuid() != 0:
        run_dir.chmod(0o555)
        try:
            yield "read-only"
        finally:
            run_dir.chmod(0o755)


def unwritable_ways_checked(run_dir: Path, blocked: Path, command):
    """``(way, result of command())`` for each of :func:`unwritable_ways`."""
    for way in unwritable_ways(run_dir, blocked):
        yield way, command()


@pytest.mark.slow
def test_evaluate_prints_the_metrics_then_names_the_path_it_cannot_write(run_copy, data_dir):
    for way, result in unwritable_ways_checked(run_copy, run_copy / "roc.png", lambda: run_cli(
            "evaluate", run_copy, "--data-dir", data_dir, "--no-baselines")):
        one_line_error(result, str(run_copy / "roc.png"))
        assert "AUC" in result.stdout and "model" in result.stdout, (way, result.stdout)  # the metrics, printed first
        assert "Wrote" not in result.stdout, way
    assert not (run_copy / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_json_prints_the_report_before_the_error(run_copy, data_dir):
    (run_copy / "roc.png" / "keep").mkdir(parents=True)
    result = run_cli("evaluate", run_copy, "--data-dir", data_dir, "--no-baselines", "--json")
    one_line_error(result, str(run_copy / "roc.png"))
    report = json.loads(result.stdout)
    assert report["model"]["auc"] > 0.5 and report["files"] is None


@pytest.mark.slow
def test_embed_names_the_output_folder_it_cannot_write(run_copy, data_dir):
    for way, result in unwritable_ways_checked(run_copy, run_copy / "embeddings", lambda: run_cli(
            "embed", orl("s1", 1), orl("s2", 1), "--run", run_copy)):
        one_line_error(result, str(run_copy / "embeddings"))
    for way, result in unwritable_ways_checked(run_copy, run_copy / "embeddings-test", lambda: run_cli(
            "embed", "--run", run_copy, "--split", "test", "--data-dir", data_dir)):
        one_line_error(result, str(run_copy / "embeddings-test"))


@pytest.mark.slow
def test_mine_names_the_triplets_file_it_cannot_write(run_copy, data_dir):
    for way, result in unwritable_ways_checked(run_copy, run_copy / "triplets-train.npz", lambda: run_cli(
            "mine", "--run", run_copy, "--data-dir", data_dir)):
        line = one_line_error(result, str(run_copy / "triplets-train.npz"))
        assert "--output" in line, way


@pytest.mark.slow
def test_export_names_the_output_folder_it_cannot_write(run_copy, tmp_path):
    (tmp_path / "taken").write_text("a file where the export folder must go")
    one_line_error(run_cli("export", run_copy, "-o", tmp_path / "taken"), str(tmp_path / "taken"))


# ----------------------------------------------------------------------------- verify's verdicts on known pairs


def verdict(run_dir: Path, first: Path, second: Path) -> dict:
    result = run_cli("verify", first, second, "--run", run_dir, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_the_tiny_run_accepts_a_close_pair_of_one_person_and_rejects_a_far_pair_of_two(finished_run):
    """The tiny model is weak (most same pairs lie above its 1%-FAR threshold), so the pairs follow a rule
    that does not ask the model: among the photos of the run's test identities (never trained on), the
    same-person pair closest in raw pixels (at the model's input size) and the different-person pair
    farthest apart in raw pixels. A model that learned nothing, a broken distance or threshold, or an
    inverted verdict gets one of them wrong."""
    from facetrip.runs.loaded_run import Run

    run_dir, _ = finished_run
    run = Run.load(run_dir)
    test_identities = run.metadata["split"]["test"]
    photos = [orl(identity, number) for identity in test_identities for number in range(1, 11)]
    pixels = run.preprocess_files(photos).reshape(len(photos), -1)
    owner = np.repeat(np.arange(len(test_identities)), 10)
    pairs = list(combinations(range(len(photos)), 2))
    pixel_distance = {(a, b): float(np.linalg.norm(pixels[a] - pixels[b])) for a, b in pairs}
    same = min((pair for pair in pairs if owner[pair[0]] == owner[pair[1]]), key=pixel_distance.get)
    different = max((pair for pair in pairs if owner[pair[0]] != owner[pair[1]]), key=pixel_distance.get)

    accepted = verdict(run_dir, photos[same[0]], photos[same[1]])
    rejected = verdict(run_dir, photos[different[0]], photos[different[1]])
    assert accepted["same_person"] is True, accepted
    assert rejected["same_person"] is False, rejected
    assert accepted["distance"] < run.metadata["threshold"] < rejected["distance"]


@pytest.mark.slow
def test_the_face_network_accepts_each_test_person_and_rejects_each_pair_of_people(pretrained_run):  # noqa: F811
    """With the pretrained face network (``facetrip train --epochs 0``, the default recipe): photos 1 and 2
    of each of the run's ten test identities are the same person; photo 1 of each and photo 1 of the next
    one (in the split's order) are two people. Every photo has one detected face."""
    from facetrip.runs.loaded_run import Run
    from facetrip.verification import verify

    run = Run.load(pretrained_run)
    test_identities = run.metadata["split"]["test"]
    assert len(test_identities) == 10
    for identity, other in zip(test_identities, test_identities[1:] + test_identities[:1]):
        same = verify(run, orl(identity, 1), orl(identity, 2))
        different = verify(run, orl(identity, 1), orl(other, 1))
        assert same["faces_detected"] == different["faces_detected"] == [1, 1], (identity, other)
        assert same["same_person"] is True, (identity, same)
        assert different["same_person"] is False, (identity, other, different)
    # The command line gives the same verdicts.
    first, second = test_identities[:2]
    assert verdict(pretrained_run, orl(first, 1), orl(first, 2))["same_person"] is True
    assert verdict(pretrained_run, orl(first, 1), orl(second, 1))["same_person"] is False
