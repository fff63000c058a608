"""Files facetrip did not write: FIFOs, devices, crafted headers and nesting get one line and exit 2, in bounded time.

The reader itself (:mod:`facetrip.untrusted_files`) is checked first, then each command on
the file a reviewer broke it with: a FIFO as a run's metadata or an index's data file, an
index archive whose header declares 335 GiB, a cut ANN file with a matching hash, nested
JSON and TOML, a folder given as ``--config``, and TF_CONFIG of the wrong shape.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
import time
import zipfile

import numpy as np
import pytest

from conftest import TINY, run_cli
from helpers import one_line_error
from facetrip.untrusted_files import (
    MAX_NESTING,
    UntrustedFileError,
    json_nesting_depth,
    load_npz_checked,
    parse_json_text,
    parse_toml_text,
    read_untrusted_bytes,
    read_untrusted_json,
    read_untrusted_toml,
    toml_nesting_depth,
)

# A command must answer a FIFO within this many seconds; after it, the FIFO is fed EOF so
# that a reader blocked on it (today's bug) returns and the test fails instead of hanging.
FIFO_PATIENCE = 20.0


@contextlib.contextmanager
def fifo_at(path):
    """A FIFO at ``path`` that a blocked reader is released from after FIFO_PATIENCE seconds; yields a timer."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    done = threading.Event()

    def release():
        if done.wait(FIFO_PATIENCE):
            return
        while not done.is_set():  # open for writing (works once a reader waits), then close: EOF
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        yield lambda: time.monotonic() - started
    finally:
        done.set()
        thread.join()


# ----------------------------------------------------------------------------- the reader


def test_a_fifo_is_refused_at_once(tmp_path):
    with fifo_at(tmp_path / "metadata.json") as elapsed:
        with pytest.raises(UntrustedFileError, match="not a regular file") as error:
            read_untrusted_json(tmp_path / "metadata.json")
        assert elapsed() < FIFO_PATIENCE
    assert error.value.reason == "not regular"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_without_reading_it(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        read_untrusted_bytes(device, 1 << 20)


def test_the_size_cap_holds_and_a_file_at_the_cap_is_read(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"x" * 100)
    assert read_untrusted_bytes(path, 100) == b"x" * 100
    with pytest.raises(UntrustedFileError, match="larger than") as error:
        read_untrusted_bytes(path, 99)
    assert error.value.reason == "too large"
    with pytest.raises(UntrustedFileError) as error:
        read_untrusted_bytes(tmp_path / "none", 10)
    assert error.value.reason == "missing"
    with pytest.raises(UntrustedFileError, match="is a directory"):
        read_untrusted_bytes(tmp_path, 10)


def test_json_nesting_is_counted_outside_strings_and_refused_past_the_limit():
    assert json_nesting_depth('{"a": [1, {"b": "[[[{{\\"["}]}') == 3
    assert parse_json_text("[" * MAX_NESTING + "]" * MAX_NESTING, "x") == parse_json_text(
        "[" * MAX_NESTING + "]" * MAX_NESTING, "x")
    started = time.monotonic()
    with pytest.raises(UntrustedFileError, match="nests deeper") as error:
        parse_json_text("[" * 1_000_000 + "]" * 1_000_000, "split.json")  # RecursionError in json.loads
    assert error.value.reason == "too deep" and time.monotonic() - started < 5
    with pytest.raises(UntrustedFileError, match="not JSON"):
        parse_json_text("{not json", "x")


@pytest.mark.parametrize("text, depth", [
    ("a = 1.5\n[train]\nlr = [1.5, 2.5, 3.5]\n", 1),
    ('s = "a.b.c[[[{{"\n# a.b.c[[[[\nt = \'x.y[\'\n', 0),
    ('m = """\n[[[[ a.b.c\n"""\n', 0),
    ("x.y.z = 3\n", 2),
    ("b = {c.d = 1, e = [1.5]}\n", 2),
    ("[a.b.c]\nk = 1\n", 3),
])
def test_toml_nesting_counts_brackets_and_dotted_keys_but_not_strings_or_numbers(text, depth):
    assert toml_nesting_depth(text) == depth


@pytest.mark.parametrize("text", [
    "a = " + "[" * 100_000 + "]" * 100_000,
    "a = " + "{b = " * 5_000 + "1" + "}" * 5_000,
    ".".join(["k"] * 100_000) + " = 1",
    "[" + ".".join(["k"] * 100_000) + "]",
])
def test_deep_toml_is_refused_before_the_parser_recurses(text):
    started = time.monotonic()
    with pytest.raises(UntrustedFileError, match="nests deeper"):
        parse_toml_text(text, "config.toml")
    assert time.monotonic() - started < 5


def test_facetrips_own_config_reads_within_the_limits():
    assert "train" in read_untrusted_toml(TINY)


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def compressed_npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_a_deflated_member_is_refused_before_it_can_expand():
    """A zip bomb: 256 MiB of zeros deflate to some 260 kB; facetrip's archives are stored, never deflated."""
    bomb = compressed_npz(embeddings=np.zeros((1 << 16, 1024), np.float32))
    assert len(bomb) < 1 << 20
    with pytest.raises(UntrustedFileError, match="compressed"):
        load_npz_checked(bomb, {"embeddings": ((None, 1024), "f")}, "gallery.npz")


def crafted_npz(name: str, shape: tuple, dtype: str = "<f4") -> bytes:
    """An archive whose one member declares ``shape`` in its header and holds no data at all (about 200 bytes)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}.npy", header.getvalue())
    return buffer.getvalue()


def test_an_npz_header_declaring_335_gib_is_refused_before_anything_is_allocated():
    data = crafted_npz("embeddings", (300000, 300000))
    assert len(data) < 1024
    with pytest.raises(UntrustedFileError, match=r"shape \(300000, 300000\), expected 6 x 16") as error:
        load_npz_checked(data, {"embeddings": ((6, 16), "f")}, "gallery.npz")
    assert error.value.reason == "unexpected"
    with pytest.raises(UntrustedFileError, match="would take") as error:  # any shape asked for: the size cap holds
        load_npz_checked(data, {"embeddings": ((None, None), "f")}, "gallery.npz")
    assert error.value.reason == "too large"
    with pytest.raises(UntrustedFileError, match="would take"):
        load_npz_checked(data, None, "triplets.npz")


def test_npz_members_are_read_as_declared_and_foreign_ones_are_refused(rng):
    embeddings, names = rng.standard_normal((6, 16)).astype(np.float32), np.array(list("abcdef"))
    specs = {"embeddings": ((6, 16), "f"), "names": ((None,), "U")}
    arrays = load_npz_checked(npz_bytes(embeddings=embeddings, names=names), specs, "x.npz")
    np.testing.assert_array_equal(arrays["embeddings"], embeddings)
    assert arrays["names"].tolist() == names.tolist() and arrays["embeddings"].flags.writeable
    fortran = np.asfortranarray(embeddings)
    np.testing.assert_array_equal(load_npz_checked(npz_bytes(embeddings=fortran, names=names), specs, "x")["embeddings"],
                                  embeddings)
    for bad, match in [
        (npz_bytes(embeddings=embeddings, names=names.astype(object)), "type"),  # a pickle inside
        (npz_bytes(embeddings=embeddings.astype(np.int32), names=names), "type"),
        (npz_bytes(embeddings=embeddings[:5], names=names), "shape"),
        (npz_bytes(embeddings=embeddings), "no 'names' array"),
        (b"PK\x03\x04 not a zip", "corrupt"),
        (compressed_npz(embeddings=embeddings, names=names), "compressed"),
        (npz_bytes(embeddings=embeddings, names=names)[:300], "corrupt"),
    ]:
        with pytest.raises(UntrustedFileError, match=match):
            load_npz_checked(bad, specs, "x.npz")


# ----------------------------------------------------------------------------- the commands


def orl(person: int, photo: int):
    from facetrip.data.orl import orl_faces_root

    return orl_faces_root() / f"s{person}" / f"{photo}.pgm"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Two ORL people of two photos each."""
    root = tmp_path_factory.mktemp("gallery")
    for person in (1, 2):
        (root / f"s{person}").mkdir()
        for photo in (1, 2):
            shutil.copy(orl(person, photo), root / f"s{person}" / f"{photo}.pgm")
    return root


@pytest.fixture(scope="module")
def ann_index(pretrained_run, gallery, tmp_path_factory):
    """An index of the gallery with its approximate-search file."""
    pytest.importorskip("faiss")
    folder = tmp_path_factory.mktemp("index") / "people"
    result = run_cli("index", pretrained_run, gallery, "-o", folder, "--ann")
    assert result.exit_code == 0, result.output
    return folder


def copied(folder, tmp_path):
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def rehashed(index, manifest_key, data: bytes) -> None:
    """Replace an index file with ``data`` and give the manifest its hash, as a forger would."""
    manifest = json.loads((index / "manifest.json").read_text())
    entry = manifest if manifest_key == "data" else manifest["ann"]
    name = entry["data_file" if manifest_key == "data" else "file"]
    (index / name).write_bytes(data)
    entry["data_sha256" if manifest_key == "data" else "sha256"] = hashlib.sha256(data).hexdigest()
    (index / "manifest.json").write_text(json.dumps(manifest))


def test_a_fifo_as_a_runs_metadata_gets_one_line_from_verify(pretrained_run, tmp_path):
    run = copied(pretrained_run, tmp_path)
    with fifo_at(run / "metadata.json") as elapsed:
        result = run_cli("verify", orl(1, 1), orl(1, 2), "--run", run)
        assert elapsed() < FIFO_PATIENCE
    one_line_error(result, "metadata.json", "not a regular file")


def test_a_fifo_as_the_index_data_file_gets_one_line_from_identify(pretrained_run, ann_index, tmp_path):
    index = copied(ann_index, tmp_path)
    data_file = index / json.loads((index / "manifest.json").read_text())["data_file"]
    with fifo_at(data_file) as elapsed:
        result = run_cli("identify", pretrained_run, "--index", index, orl(1, 3))
        assert elapsed() < FIFO_PATIENCE
    one_line_error(result, data_file.name, "not a regular file")


def test_an_index_archive_declaring_335_gib_gets_one_line(pretrained_run, ann_index, tmp_path):
    index = copied(ann_index, tmp_path)
    rehashed(index, "data", crafted_npz("embeddings", (300000, 300000)))
    one_line_error(run_cli("identify", pretrained_run, "--index", index, orl(1, 3)), "(300000, 300000)")


def test_a_cut_ann_file_with_a_matching_hash_gets_one_line(pretrained_run, ann_index, tmp_path):
    index = copied(ann_index, tmp_path)
    ann_file = index / json.loads((index / "manifest.json").read_text())["ann"]["file"]
    rehashed(index, "ann", ann_file.read_bytes()[: ann_file.stat().st_size // 2])
    one_line_error(run_cli("identify", pretrained_run, "--index", index, "--ann", orl(1, 3)),
                   ann_file.name, "corrupt")


def test_a_deeply_nested_split_gets_one_line_from_evaluate(pretrained_run, tmp_path):
    run = copied(pretrained_run, tmp_path)
    (run / "split.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(run_cli("evaluate", run), "split.json", "nests deeper")


def test_a_deeply_nested_config_gets_one_line_from_train(tmp_path, data_dir):
    config = tmp_path / "config.toml"
    config.write_text("[train]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(run_cli("train", "--config", config, "--run-dir", tmp_path / "run", "--data-dir", data_dir),
                   "config.toml", "nests deeper")
    assert not (tmp_path / "run").exists()


def test_a_folder_as_config_is_named_as_the_config(tmp_path, data_dir):
    one_line_error(run_cli("train", "--config", tmp_path, "--run-dir", tmp_path / "run", "--data-dir", data_dir),
                   f"Config file {tmp_path} is not a file")


@pytest.mark.parametrize("tf_config, fragment", [
    ('{"cluster": 5, "task": {"type": "worker", "index": 0}}', "cluster must map"),
    ('{"cluster": {"worker": "host:1"}, "task": {"type": "worker", "index": 0}}', "cluster must map"),
    ('{"cluster": {"worker": ["host:1"]}}', "task must name"),
    ('{"cluster": {"worker": ["host:1"]}, "task": {"type": "chief", "index": 0}}', "task must name"),
    ('{"cluster": {"worker": ["host:1"]}, "task": {"type": "worker", "index": 3}}', "index must be"),
    ('{"cluster": {"worker": ["host:1"]}, "task": {"type": "worker", "index": true}}', "index must be"),
    ('[1, 2]', "cluster must map"),
    ("{not json", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "nests deeper"),
])
def test_tf_config_of_the_wrong_shape_gets_one_line(tmp_path, data_dir, monkeypatch, tf_config, fragment):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    result = run_cli("train", "--config", TINY, "--distribute", "multi-worker", "--run-dir", tmp_path / "run",
                     "--data-dir", data_dir)
    one_line_error(result, "TF_CONFIG", fragment)


def test_a_missing_source_folder_leaves_no_run_directory(tmp_path, data_dir):
    missing = tmp_path / "photos[/]x"
    one_line_error(run_cli("train", "--config", TINY, "--data", f"folder:{missing}", "--run-dir", tmp_path / "run",
                           "--data-dir", data_dir), str(missing), "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("planted", [("config.toml", ""), ("config.toml", "[train]\nepochs = 3\n"),
                                     ("metadata.json", '"facetrip_version"'), ("metadata.json", '["facetrip_version"]')])
def test_a_user_folder_that_only_looks_like_a_run_keeps_its_files_under_overwrite(tmp_path, planted):
    """An empty or short config.toml, or a metadata.json that merely holds facetrip's key as text, is not a run."""
    from facetrip.training import check_new_run_dir, is_facetrip_run
    from facetrip.training.errors import TrainingError

    name, text = planted
    (tmp_path / name).write_text(text)
    (tmp_path / "metrics.json").write_text('{"the user\'s": "numbers"}')
    assert not is_facetrip_run(tmp_path)
    with pytest.raises(TrainingError, match=r"(config|metadata|metrics)\.json|config\.toml") as error:
        check_new_run_dir(tmp_path, overwrite=True)
    assert "was not written by facetrip" in str(error.value)


def test_a_pairs_file_of_millions_of_short_lines_is_refused_without_holding_them(tmp_path):
    """4 million one-letter lines: today's parser held each as fields (896 MB for 8 MiB); the check stops at the first."""
    import tracemalloc

    from facetrip.evaluation import PairsFileError
    from facetrip.evaluation.pairs_file import parse_lfw_pairs

    text = "1\t1000000\n" + "a\n" * 4_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PairsFileError, match="line 2"):
            parse_lfw_pairs(text, "pairs.txt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    with pytest.raises(PairsFileError, match="announces 2 pair lines but the file has more"):
        parse_lfw_pairs("1\t1\nann 1 2\nann 1 bob 1\n" + "ann 1 2\n" * 1000, "pairs.txt")


def test_an_ann_file_of_another_faiss_kind_and_a_manifest_with_a_list_for_ann_get_one_line(tmp_path):
    faiss = pytest.importorskip("faiss")
    from facetrip.identification import ann
    from facetrip.identification.index import GalleryIndexError, read_manifest

    flat = faiss.IndexFlatL2(8)
    flat.add(np.zeros((4, 8), np.float32))
    with pytest.raises(ann.AnnFileError, match="IndexFlatL2, not the inverted-list index"):
        ann.load(faiss.serialize_index(flat).tobytes(), "ann-0.bin")
    manifest = {"kind": "facetrip gallery index", "format": 1, "model_fingerprint": "f", "metric": "cosine",
                "data_file": "gallery-0.npz", "data_sha256": "0", "entries": 1, "embedding_dim": 8, "sources": [],
                "ann": [1]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryIndexError, match="no valid 'ann'"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("change", [{"config": 5}, {"split": "x"}, {"split": {"train": 5}},
                                    {"weights": "../../elsewhere/epoch-0001.weights.h5"}])
def test_a_crafted_checkpoint_record_is_passed_over_not_raised(tmp_path, change):
    """--resume reads the record as untrusted: a field of the wrong type or a path out of the backup folder is damage."""
    from facetrip.training.checkpoints import CHECKPOINT_FORMAT, _read_checkpoint, file_sha256

    weights = tmp_path / "epoch-0001.weights.h5"
    weights.write_bytes(b"weights")
    record = {"format": CHECKPOINT_FORMAT, "epoch": 1, "weights": weights.name, "bytes": 7,
              "sha256": file_sha256(weights), "config": "[train]\nepochs = 2\n",
              "split": {"train": ["a"], "dev": ["b"], "test": ["c"], "seed": 0}}
    (tmp_path / "epoch-0001.json").write_text(json.dumps(record))
    checkpoint, problem = _read_checkpoint(tmp_path / "epoch-0001.json")
    assert checkpoint is not None and problem == ""
    (tmp_path / "epoch-0001.json").write_text(json.dumps({**record, **change}))
    checkpoint, problem = _read_checkpoint(tmp_path / "epoch-0001.json")
    assert checkpoint is None and "epoch-0001.json" in problem


def test_a_metrics_log_with_a_field_over_csvs_limit_reads_as_damaged_rows(tmp_path):
    from facetrip.training.history import metric_rows

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\n0,1.5\n1," + "9" * 200_000 + "\n2,0.5\n")
    columns, rows = metric_rows(path)
    assert columns == ["epoch", "loss"] and [row["epoch"] for row in rows] == ["0", "2"]
    path.write_text("epoch," + "x" * 200_000 + "\n0,1\n")
    assert metric_rows(path) == ([], [])


def test_mine_recognises_its_triplets_file_without_reading_a_large_archive_directory(tmp_path):
    """The user's archive of many members is not a triplets file, told from its end record alone."""
    from facetrip.mining.triplet_files import is_triplets_file

    archive_path = tmp_path / "triplets.npz"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for number in range(200):
            archive.writestr(f"member{number}.npy", b"x")
    assert not is_triplets_file(archive_path)
    with fifo_at(tmp_path / "fifo.npz") as elapsed:
        assert not is_triplets_file(tmp_path / "fifo.npz")
        assert elapsed() < FIFO_PATIENCE


def test_a_fifo_in_a_prepared_sets_folder_gets_one_line_before_tfds_waits_on_it(tmp_path):
    from facetrip.data.prepared import PreparedFaces

    data_dir = tmp_path / "tfds"
    (data_dir / PreparedFaces.name / "orl_faces_photos" / "1.0.0").mkdir(parents=True)
    with fifo_at(data_dir / PreparedFaces.name / "orl_faces_photos" / "1.0.0" / "dataset_info.json") as elapsed:
        result = run_cli("data", "--data-dir", data_dir, "--no-face-chips")
        assert elapsed() < FIFO_PATIENCE
    one_line_error(result, "dataset_info.json", "not a regular file")
