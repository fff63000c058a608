"""`facetrip evaluate RUN --data SOURCE` on a data source the run was not trained on.

The pure helpers are tested on hand-made :class:`FaceImages`; the workflow on two small
image folders and a stand-in run whose "model" is its normalised pixels, so no network is
trained (the report's structure, not the model's quality, is what is checked).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.data import FaceImages
from facetrip.evaluation.report import (
    EvaluationError,
    evaluate_run,
    identities_of_another_source,
    is_same_source,
    pairs_of_identities,
)
from facetrip.runs import METADATA_FORMAT

IMAGE_SIZE = (16, 14)
TRAIN = ["t0", "t1", "t2", "t3"]
SPLIT = {"train": TRAIN, "dev": ["t4"], "test": ["t5", "t6"]}


def faces_of(counts: dict[str, int], source="folder:/faces") -> FaceImages:
    """FaceImages with ``counts[name]`` images per identity (no real image bytes)."""
    names = sorted(counts)
    labels = np.repeat(np.arange(len(names)), [counts[name] for name in names]).astype(np.int64)
    file_names = np.array([f"{names[label]}/{index}.png" for index, label in enumerate(labels)])
    return FaceImages(np.array([b""] * len(labels), dtype=object), labels, names, file_names, 1, source)


# ----------------------------------------------------------------------------- helpers


def test_sources_are_compared_by_what_they_name(tmp_path):
    (tmp_path / "faces").mkdir()
    assert is_same_source("orl", "orl_faces") and is_same_source("tfds:orl_faces", "orl_faces")
    assert is_same_source(f"folder:{tmp_path}/faces/", f"folder:{tmp_path}/./faces")
    assert is_same_source(str(tmp_path / "faces"), f"folder:{tmp_path / 'faces'}")  # a bare existing folder
    assert not is_same_source(f"folder:{tmp_path}/faces", "orl_faces")
    assert not is_same_source("tfds:lfw", "tfds:lfw:train") and not is_same_source(f"folder:{tmp_path}/a", f"folder:{tmp_path}/b")


def test_identities_named_like_training_identities_are_left_out():
    faces = faces_of({"t1": 2, "x": 3, "t3": 1, "y": 2})
    assert identities_of_another_source(faces, TRAIN) == (["x", "y"], ["t1", "t3"])
    assert identities_of_another_source(faces, []) == (["t1", "t3", "x", "y"], [])


def test_pairs_of_identities_index_into_the_whole_source():
    """Images by sorted name: t1 0, 1; t3 2; x 3, 4, 5; y 6, 7. x and y give 3 + 1 same pairs, 3 * 2 different."""
    faces = faces_of({"t1": 2, "x": 3, "t3": 1, "y": 2})
    pairs = pairs_of_identities(faces, ["x", "y"], max_pairs=100, seed=0)
    used = set(pairs.first) | set(pairs.second)
    assert used == {3, 4, 5, 6, 7} and (pairs.num_same, pairs.num_different) == (4, 6)
    assert np.array_equal(pairs.same, faces.labels[pairs.first] == faces.labels[pairs.second])
    sampled = pairs_of_identities(faces, ["x", "y"], max_pairs=2, seed=0)
    assert (sampled.num_same, sampled.num_different) == (2, 2) and "seeded balanced sample" in sampled.how


# ----------------------------------------------------------------------------- the workflow


def write_identity(root: Path, name: str, count: int, seed: int) -> None:
    """``count`` grey PNGs of one identity: a fixed random face plus a little noise per image."""
    rng = np.random.default_rng(seed)
    face = rng.uniform(0, 255, IMAGE_SIZE)
    (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.clip(face + rng.normal(0, 20, IMAGE_SIZE), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / name / f"{index}.png")


class PixelModel:
    """A stand-in model: an image's embedding is its L2-normalised pixels."""

    def __init__(self, image_size, channels):
        self.output_shape = (None, int(np.prod(image_size)) * channels)

    def predict_on_batch(self, images):
        flat = np.asarray(images, np.float32).reshape(len(images), -1)  # (B, H * W * C)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)


class PixelRun:
    """A stand-in for a loaded run without face chips: its "model" embeds an image as its L2-normalised pixels."""

    face_chips = False
    aligned = "none"

    def __init__(self, path, metadata):
        self.path, self.metadata = Path(path), metadata
        self.image_size, self.channels = tuple(metadata["image_size"]), metadata["channels"]
        self.model = PixelModel(self.image_size, self.channels)

    def prepare_faces(self, faces, progress=None):
        return faces, None  # the photos as they are: no face chips

    def embed_images(self, images, batch_size: int = 64):
        return self.model.predict_on_batch(images)


@pytest.fixture
def two_sources(tmp_path, monkeypatch):
    """A run trained (by its metadata) on folder ``trained`` (t0 .. t6), and folder ``other``:
    t0 (named like a training identity) and o1, o2, o3, three images each."""
    trained, other = tmp_path / "trained", tmp_path / "other"
    for index, name in enumerate([*TRAIN, "t4", "t5", "t6"]):
        write_identity(trained, name, 4, seed=index)
    for index, name in enumerate(["t0", "o1", "o2", "o3"]):
        write_identity(other, name, 3, seed=100 + index)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metadata = {
        "format": METADATA_FORMAT, "source": f"folder:{trained}", "image_size": list(IMAGE_SIZE), "channels": 1,
        "metric": "euclidean", "split": SPLIT, "threshold": 1.2, "threshold_source": "dev",
    }
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    monkeypatch.setattr("facetrip.runs.loaded_run.Run.load", classmethod(lambda cls, path: PixelRun(path, metadata)))
    return run_dir, trained, other


@pytest.mark.slow
def test_another_source_is_evaluated_on_all_its_identities_but_those_named_like_training_ones(two_sources, data_dir):
    """o1, o2, o3 (t0 left out): 3 * 3 same pairs, 27 different; baselines fit on t0 .. t3 of the run's own folder."""
    run_dir, trained, other = two_sources
    report = evaluate_run(run_dir, data_source=f"folder:{other}", data_dir=data_dir)
    pairs = report["pairs"]
    assert (pairs["same"], pairs["different"], pairs["identities"], pairs["images"]) == (9, 27, 3, 9)
    assert pairs["left_out_identities"] == ["t0"]
    assert pairs["how"] == (f"all identities of folder:{other} (1 left out, named like training identities), "
                            f"a model trained on folder:{trained}: all 36 unordered pairs")
    assert report["source"] == f"folder:{other}" and report["training_source"] == f"folder:{trained}"
    assert set(report["baselines"]) == {"raw pixels", "Eigenfaces", "Fisherfaces"} and report["baselines_skipped"] is None
    assert report["baselines_fit"] == {"images": 16, "identities": 4, "centre": "the mean of the evaluated images",
                                       "input": "16x14x1"}
    assert report["threshold"]["rule"] == "equal error rate on dev identities" and report["threshold"]["target_far"] is None
    # the run's own evaluation stays; this one is written beside it, named after the source
    assert report["files"]["metrics"].startswith("metrics-") and not (run_dir / "metrics.json").exists()
    assert json.loads((run_dir / report["files"]["metrics"]).read_text()) == json.loads(json.dumps(report))

    shutil.rmtree(trained)  # the run's own source is gone: the model is still scored, the baselines say why not
    report = evaluate_run(run_dir, data_source=f"folder:{other}", data_dir=data_dir)
    assert report["baselines"] == {} and report["model"]["same_pairs"] == 9
    assert report["baselines_skipped"].startswith(f"the run's training source folder:{trained} cannot be loaded to fit them on (")
    without = evaluate_run(run_dir, data_source=f"folder:{other}", data_dir=data_dir, baselines=False)
    assert without["baselines_skipped"] is None


@pytest.mark.slow
def test_the_runs_own_source_by_another_name_still_means_its_test_identities(two_sources, data_dir):
    run_dir, trained, _ = two_sources
    report = evaluate_run(run_dir, data_source=f"folder:{trained}/", data_dir=data_dir, baselines=False)
    assert report["pairs"]["identities"] == 2 and report["pairs"]["left_out_identities"] == []
    assert report["pairs"]["how"] == "all 28 unordered pairs"  # t5, t6: 2 * 6 same + 16 different


@pytest.mark.slow
def test_a_source_of_only_training_names_is_refused(two_sources, data_dir, tmp_path):
    run_dir, _, _ = two_sources
    for index, name in enumerate(TRAIN[:2]):
        write_identity(tmp_path / "same_names", name, 2, seed=200 + index)
    with pytest.raises(EvaluationError, match="All 2 identities of folder:.*same_names are named like training identities"):
        evaluate_run(run_dir, data_source=f"folder:{tmp_path / 'same_names'}", data_dir=data_dir)
