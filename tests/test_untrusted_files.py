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
    check_npy_file,
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
        (npz_bytes(embeddings=embeddings, names=names)[:300], "corrupt"),
    ]:
        with pytest.raises(UntrustedFileError, match=match):
            load_npz_checked(bad, specs, "x.npz")


def test_an_npy_file_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros((4, 3), np.float32))
    check_npy_file(path, (None, 3), "f")
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 4)
    with pytest.raises(UntrustedFileError, match="header describes"):
        check_npy_file(path, (None, 3), "f")
    with pytest.raises(UntrustedFileError, match="shape"):
        np.save(path, np.zeros((4, 3), np.float32))
        check_npy_file(path, (None, 5), "f")


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
