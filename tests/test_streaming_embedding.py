"""Embedding a split or gallery batch by batch into a memory-mapped ``.npy`` (facetrip.embedding).

The streamed file must hold what the in-memory :func:`embed_faces` returns, be a plain
``.npy`` that loads memory-mapped, appear under its name only when complete, and never
hold more than a batch of images or embeddings in memory.
"""

import json

import numpy as np
import pytest

from facetrip import embedding
from facetrip.embedding import (embed_faces, embed_faces_to_file, row_chunks, scratch_npy_path, write_embeddings,
                                write_npy_rows)
from facetrip.runs import OUTPUT_RECORD

IMAGE_SIZE, CHANNELS = (16, 14), 1


@pytest.fixture(scope="module")
def orl_records(data_dir):
    """ORL as the tiny config's model reads it: whole grey images, read from the prepared set's records."""
    from facetrip.data.records import RecordColumn, load_model_faces

    faces, _ = load_model_faces("orl_faces", data_dir=data_dir, face_chips=False)
    assert isinstance(faces.encoded, RecordColumn)
    return faces


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny config's network (tests/tiny.toml: resnet_small, width 4, 8 dimensions), untrained."""
    from facetrip.models import build_embedding_model

    return build_embedding_model((*IMAGE_SIZE, CHANNELS), embedding_dim=8, width=4)


class CountingModel:
    """A fake model: each image's mean, max and min pixel as its embedding; it records every batch it is given."""

    output_shape = (None, 3)

    def __init__(self, fail_at_batch=None):
        self.batch_sizes = []
        self.fail_at_batch = fail_at_batch

    def predict_on_batch(self, images):
        images = np.asarray(images)  # (B, H, W, C)
        if len(self.batch_sizes) == self.fail_at_batch:
            raise RuntimeError("the model failed mid-way")
        self.batch_sizes.append(len(images))
        return np.stack([images.mean(axis=(1, 2, 3)), images.max(axis=(1, 2, 3)), images.min(axis=(1, 2, 3))], axis=1)


def test_the_streamed_file_holds_what_embed_faces_returns(orl_records, tiny_model, tmp_path):
    faces = orl_records.take(np.arange(150))  # two full batches of 64 and a partial one
    expected = embed_faces(tiny_model, faces, IMAGE_SIZE, CHANNELS, batch_size=64)  # (150, 8)
    path = tmp_path / "embeddings.npy"
    streamed = embed_faces_to_file(tiny_model, faces, IMAGE_SIZE, CHANNELS, path, batch_size=64)
    assert isinstance(streamed, np.memmap) and streamed.mode == "r" and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    on_disk = np.load(path, mmap_mode="r")  # a valid .npy, memory-mapped
    assert on_disk.shape == (150, 8) and on_disk.dtype == np.float32
    np.testing.assert_array_equal(np.load(path), streamed)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["embeddings.npy"]  # no temporary file left


def test_an_interrupted_embedding_leaves_no_file_and_no_temporary(orl_records, tmp_path):
    path = tmp_path / "embeddings.npy"
    model = CountingModel(fail_at_batch=2)
    with pytest.raises(RuntimeError, match="mid-way"):
        embed_faces_to_file(model, orl_records.take(np.arange(100)), IMAGE_SIZE, CHANNELS, path, batch_size=16)
    assert model.batch_sizes == [16, 16]  # two batches were written when the third failed
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_embedding_keeps_the_file_it_would_have_replaced(orl_records, tmp_path):
    path = tmp_path / "embeddings.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        embed_faces_to_file(CountingModel(fail_at_batch=1), orl_records.take(np.arange(40)), IMAGE_SIZE, CHANNELS, path,
                            batch_size=16)
    assert path.read_bytes() == before and [item.name for item in tmp_path.iterdir()] == ["embeddings.npy"]


def test_memory_is_bounded_by_the_batch_not_the_set(orl_records, tmp_path, monkeypatch):
    """Every array the writer stores, and every batch the model sees, is at most one batch; the records are never read whole."""
    from facetrip.data.records import RecordColumn

    stored = []
    store = embedding._store_rows

    def counting_store(rows, start, chunk):
        stored.append(chunk.shape)
        store(rows, start, chunk)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole column of records was read into memory")

    monkeypatch.setattr(embedding, "_store_rows", counting_store)
    monkeypatch.setattr(RecordColumn, "__array__", refuse)
    monkeypatch.setattr(RecordColumn, "tolist", refuse)
    monkeypatch.setattr(np, "concatenate", refuse)
    model = CountingModel()
    embeddings = embed_faces_to_file(model, orl_records, IMAGE_SIZE, CHANNELS, tmp_path / "e.npy", batch_size=32)
    assert len(embeddings) == len(orl_records) == 400
    assert max(model.batch_sizes) == 32 and sum(model.batch_sizes) == 400
    assert max(shape[0] for shape in stored) <= 32 and sum(shape[0] for shape in stored) == 400


def test_rows_are_copied_a_chunk_at_a_time_and_a_wrong_count_writes_nothing(tmp_path):
    source = np.arange(70, dtype=np.float32).reshape(35, 2)
    np.save(tmp_path / "source.npy", source)
    mapped = np.load(tmp_path / "source.npy", mmap_mode="r")
    assert [len(chunk) for chunk in row_chunks(mapped, rows_per_chunk=10)] == [10, 10, 10, 5]
    chosen = np.zeros(35, bool)
    chosen[[3, 4, 30]] = True
    write_npy_rows(tmp_path / "chosen.npy", row_chunks(mapped, chosen, rows_per_chunk=2), 3)
    np.testing.assert_array_equal(np.load(tmp_path / "chosen.npy"), source[[3, 4, 30]])
    with pytest.raises(ValueError, match="Got 35 rows"):
        write_npy_rows(tmp_path / "short.npy", row_chunks(mapped), 36)
    write_npy_rows(tmp_path / "empty.npy", iter(()), 0, (2,))
    assert np.load(tmp_path / "empty.npy", mmap_mode="r").shape == (0, 2)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["chosen.npy", "empty.npy", "source.npy"]


def test_a_scratch_file_is_new_hidden_and_removed(tmp_path):
    (tmp_path / "users_file.npy").write_bytes(b"mine")
    with scratch_npy_path(tmp_path / "missing", tmp_path) as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(".facetrip-scratch-") and scratch.suffix == ".npy"
        write_npy_rows(scratch, [np.ones((2, 3))], 2)
        assert np.load(scratch, mmap_mode="r").shape == (2, 3)
    with pytest.raises(KeyError), scratch_npy_path(tmp_path) as scratch:
        raise KeyError("an error inside")
    assert [item.name for item in tmp_path.iterdir()] == ["users_file.npy"]


def test_written_embeddings_of_a_memmap_match_those_of_an_array(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((23, 4)).astype(np.float32)
    np.save(tmp_path / "source.npy", embeddings)
    labels, paths = [f"person\t{i % 3}" for i in range(23)], [f"/photos/{i}.png" for i in range(23)]
    write_embeddings(tmp_path / "array", embeddings, labels, paths)
    write_embeddings(tmp_path / "mapped", np.load(tmp_path / "source.npy", mmap_mode="r"), iter(labels), iter(paths))
    for name in ("embeddings.npy", "metadata.tsv", "tensors.tsv", "projector_config.pbtxt"):
        assert (tmp_path / "array" / name).read_bytes() == (tmp_path / "mapped" / name).read_bytes(), name
    assert (tmp_path / "mapped" / "tensors.tsv").read_text().count("\n") == 23


def test_a_set_above_the_checkpoint_cap_points_the_projector_at_tensors_tsv(tmp_path, monkeypatch):
    """Small sets get the projector checkpoint; larger ones none (it needs every row in memory), and no stale one."""
    embeddings = np.eye(5, dtype=np.float32)
    write_embeddings(tmp_path, embeddings, list("abcde"), list("vwxyz"))
    assert list(tmp_path.glob("embedding.ckpt-*")) and "tensor_name" in (tmp_path / "projector_config.pbtxt").read_text()
    monkeypatch.setattr(embedding, "PROJECTOR_CHECKPOINT_MAX_ROWS", 4)
    write_embeddings(tmp_path, embeddings, list("abcde"), list("vwxyz"))
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "tensors.tsv"' in config and "tensor_name" not in config
    assert not list(tmp_path.glob("embedding.ckpt-*")) and not (tmp_path / "checkpoint").exists()


def test_a_metadata_row_that_cannot_be_written_replaces_none_of_the_files(tmp_path):
    write_embeddings(tmp_path, np.eye(2, dtype=np.float32), ["a", "b"], ["x", "y"])
    before = {name: (tmp_path / name).read_bytes() for name in ("embeddings.npy", "metadata.tsv", "tensors.tsv")}

    class Unprintable:
        def __str__(self):
            raise ValueError("no text")

    with pytest.raises(ValueError, match="no text"):
        write_embeddings(tmp_path, np.eye(3, dtype=np.float32), ["a", "b", Unprintable()], ["x", "y", "z"])
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    # no temporary left; the record of what embed wrote stays
    assert [item.name for item in tmp_path.iterdir() if item.name.startswith(".")] == [OUTPUT_RECORD]


def test_distances_of_pairs_a_chunk_at_a_time_are_those_of_all_at_once(tmp_path):
    from facetrip.evaluation.pairs import distances_between, distances_of_pairs

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    first, second = rng.integers(0, 50, 333), rng.integers(0, 50, 333)
    for metric in ("euclidean", "squared", "cosine"):
        np.testing.assert_array_equal(distances_of_pairs(mapped.__getitem__, first, second, metric, pairs_per_chunk=40),
                                      distances_between(vectors[first], vectors[second], metric))


@pytest.mark.slow
def test_embed_of_a_split_streams_and_leaves_no_scratch_file(finished_run, tmp_path, data_dir, monkeypatch):
    """`facetrip embed --split test` writes the model's embeddings of the split, from the streamed file."""
    from conftest import run_cli
    from facetrip.data.records import load_model_faces
    from facetrip.data import IdentitySplit
    from facetrip.runs.loaded_run import Run

    run_dir, _ = finished_run
    result = run_cli("embed", "--run", run_dir, "--split", "test", "--data-dir", data_dir, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    written = np.load(tmp_path / "out" / "embeddings.npy", mmap_mode="r")
    run = Run.load(run_dir)
    faces, _ = load_model_faces("orl_faces", data_dir=data_dir, face_chips=False)
    faces = faces.restricted_to(IdentitySplit.from_dict(run.metadata["split"]).identities("test"))
    np.testing.assert_allclose(written, embed_faces(run.model, faces, run.image_size, run.channels), atol=1e-5)
    assert json.loads(result.stdout)["embedding_dim"] == written.shape[1]
    assert [item.name for item in (tmp_path / "out").iterdir() if item.name.startswith(".")] == [OUTPUT_RECORD]
    assert not list(run_dir.glob(".facetrip-scratch-*"))
