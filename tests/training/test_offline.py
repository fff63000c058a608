"""`--strategy offline` training and `facetrip mine --offline` end to end (mining itself: test_mining.py)."""

import numpy as np
import pytest

from conftest import REPO, TINY, run_cli

SCRATCH = REPO / "configs" / "scratch.toml"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("offline") / "run"
    result = run_cli("train", "--config", TINY, "--strategy", "offline", "--epochs", "1", "--run-dir", run_dir,
                     "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.slow
def test_mine_counts_and_saves_triplets_of_the_train_split(offline_run, data_dir):
    from facetrip.mining import load_triplets
    from facetrip.runs import read_metadata

    result = run_cli("mine", "--offline", "--run", offline_run, "--data-dir", data_dir, "--max-triplets", "500")
    assert result.exit_code == 0, result.output
    saved = load_triplets(offline_run / "triplets-train.npz")
    assert saved.counts["total"] == 250 * 9 * 240  # 25 identities x 10 images: 9 positives, 240 negatives each
    assert saved.counts["easy"] + saved.counts["semi_hard"] + saved.counts["hard"] == saved.counts["total"]
    assert len(saved.triplets) == min(500, saved.counts["hard"] + saved.counts["semi_hard"])
    train = set(read_metadata(offline_run)["split"]["train"])
    names = saved.file_names[saved.triplets]  # (M, 3) "sN/M.pgm"
    identities = np.vectorize(lambda name: name.split("/")[0])(names)
    assert set(identities.ravel()) <= train
    assert np.all(identities[:, 0] == identities[:, 1]) and np.all(identities[:, 0] != identities[:, 2])
    text = " ".join(result.output.split())
    assert "semi-hard" in text and f"{saved.counts['total']:,}" in text


def train_split_embeddings(run_dir, data_dir):
    """The run's training images (in the order training indexes them) and the run's embeddings of them."""
    from facetrip.data import load_faces
    from facetrip.evaluation.report import preprocess_images
    from facetrip.runs.loaded_run import Run
    from facetrip.runs import read_metadata

    run = Run.load(run_dir)
    faces = load_faces("orl_faces", data_dir=data_dir).restricted_to(read_metadata(run_dir)["split"]["train"])
    return faces, run.embed_images(preprocess_images(faces, run.image_size, run.channels))


def triplet_gaps(embeddings, triplets):
    """d(a, p) - d(a, n) of each (anchor, positive, negative) row: negative when the triplet is satisfied."""
    anchors, positives, negatives = (embeddings[triplets[:, column]] for column in range(3))
    return np.linalg.norm(anchors - positives, axis=1) - np.linalg.norm(anchors - negatives, axis=1)


@pytest.mark.slow
def test_offline_training_trains_on_the_triplets_of_a_file(offline_run, tmp_path, data_dir, monkeypatch):
    """`train --strategy offline --triplets FILE` trains its first epoch on the file's triplets.

    The file holds 3 triplets that ``offline_run`` (the same config, seed and initial weights,
    one epoch on mined triplets) gets most wrong: for the 3 anchors of different identities
    with the largest d_ap - d_an, the farthest positive and the nearest negative. The new
    run's epoch is 31 batches (round(250 training images / P K = 8)) of 2 triplets (8 // 6 * 2,
    offline_triplets_per_batch), 62 triplets each drawn from those 3 (all 3 are drawn), and
    after it their mean d_ap - d_an is clearly below the mined run's: without the file it
    would train exactly as offline_run did.
    """
    from facetrip.data import pipeline
    from facetrip.mining import MiningResult, save_triplets

    faces, mined_embeddings = train_split_embeddings(offline_run, data_dir)
    labels = faces.labels
    distances = np.linalg.norm(mined_embeddings[:, None] - mined_embeddings[None], axis=2)  # (250, 250)
    same = labels[:, None] == labels[None]
    farthest_positive = np.where(same, distances, -np.inf).argmax(axis=1)
    nearest_negative = np.where(same, np.inf, distances).argmin(axis=1)
    candidates = np.stack([np.arange(len(labels)), farthest_positive, nearest_negative], axis=1)  # (250, 3)
    chosen, identities = [], set()
    for row in candidates[np.argsort(-triplet_gaps(mined_embeddings, candidates))]:
        if labels[row[0]] not in identities:
            chosen.append(row)
            identities.add(labels[row[0]])
        if len(chosen) == 3:
            break
    chosen = np.array(chosen)
    path = save_triplets(tmp_path / "three.npz", MiningResult(counts={"easy": 0, "semi_hard": 0, "hard": 3, "total": 3},
                                                               triplets=chosen, margin=0.2, metric="euclidean"),
                         file_names=faces.file_names)
    wanted = {tuple(names) for names in faces.file_names[chosen]}

    fed = []  # the (anchor, positive, negative) file names of every batch fit receives
    real_indexed_batches = pipeline.indexed_batches

    def recording_indexed_batches(batch_faces, index_batches, num_batches, batch_size, *arguments, **options):
        for _, stacked in index_batches():
            for batch in np.asarray(stacked).reshape(-1, 3, batch_size // 3):  # [anchors; positives; negatives]
                fed.extend(tuple(names) for names in batch_faces.file_names[batch.T])
        return real_indexed_batches(batch_faces, index_batches, num_batches, batch_size, *arguments, **options)

    monkeypatch.setattr(pipeline, "indexed_batches", recording_indexed_batches)
    run_dir = tmp_path / "from-file"
    result = run_cli("train", "--config", TINY, "--strategy", "offline", "--epochs", "1", "--triplets", path,
                     "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
    assert result.exit_code == 0, result.output
    assert len(fed) == 31 * 2 and set(fed) == wanted

    _, trained_embeddings = train_split_embeddings(run_dir, data_dir)
    mined_gap = triplet_gaps(mined_embeddings, chosen).mean()
    trained_gap = triplet_gaps(trained_embeddings, chosen).mean()
    assert mined_gap > 0  # the mined run has these 3 wrong (d_ap > d_an) ...
    # ... the run that trained on them much less so (measured: 0.89 against 0.27)
    assert trained_gap < mined_gap - 0.25, (trained_gap, mined_gap)

    bad = run_cli("train", "--config", TINY, "--strategy", "offline", "--triplets", tmp_path / "none.npz",
                  "--run-dir", tmp_path / "bad", "--data-dir", data_dir)
    assert bad.exit_code == 2 and "No triplets file" in " ".join(bad.output.split())


def test_offline_batches_hold_an_even_number_of_triplets():
    from types import SimpleNamespace

    from facetrip.training.offline import offline_triplets_per_batch

    for batch_size, expected in ((64, 20), (32, 10), (12, 4), (6, 2), (2, 1)):
        assert offline_triplets_per_batch(SimpleNamespace(batch_size=batch_size)) == expected


def assert_one_trained_epoch(run_dir, strategy, identities_per_batch, images_per_identity):
    """The run directory of a finished one-epoch run of ``strategy`` with P x K as given: its metadata,
    config, one metrics row whose loss is the classification term plus the triplet term (weight 1 each),
    a dev threshold within the euclidean range of unit embeddings, and dev errors better than chance."""
    import csv
    import json

    from facetrip.config import Config

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert (metadata["epochs"], metadata["epochs_completed"], metadata["strategy"]) == (1, 1, strategy)
    assert metadata["backbone"] == "resnet_small" and metadata["image_size"] == [32, 26]
    config = Config.from_toml(run_dir / "config.toml")
    assert (config.sampler.identities_per_batch, config.sampler.images_per_identity) == (identities_per_batch,
                                                                                          images_per_identity)
    assert 0.0 < metadata["threshold"] < 2.0 and metadata["threshold_source"] == "dev"
    assert 0.5 < metadata["dev"]["auc"] <= 1.0 and metadata["dev"]["eer"] < 0.5
    with (run_dir / "metrics.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    loss, triplet, classification = (float(row[key]) for key in ("loss", "triplet_loss", "classification_loss"))
    assert row["epoch"] == "0" and np.isfinite([loss, triplet, classification]).all()
    assert triplet > 0.0 and classification > 0.0  # both terms trained on
    np.testing.assert_allclose(loss, classification + triplet, rtol=1e-5)
    assert float(row["mean_embedding_norm"]) == pytest.approx(1.0, abs=1e-5)
    assert (run_dir / "model.keras").is_file()


@pytest.mark.slow
def test_offline_training_of_the_scratch_model_does_not_crash(tmp_path, data_dir):
    """Regression: with 21 triplets (63 images) per batch, TF's oneDNN kernels killed the process
    (segfault) training the from-scratch width-8 model (configs/scratch.toml, once the default);
    the run must now finish one epoch and train on both loss terms."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "facetrip.cli", "train", "--strategy", "offline", "--epochs", "1", "--no-evaluate",
               "--config", str(SCRATCH), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_one_trained_epoch(tmp_path / "run", "offline", 16, 4)


@pytest.mark.slow
def test_online_training_of_the_scratch_model_on_odd_batches_does_not_crash(tmp_path, data_dir):
    """Regression: P x K = 21 x 3 = 63 killed the process ('munmap_chunk(): invalid pointer') in
    oneDNN's strided 1x1 convolution of the width-8 model; the shortcut now subsamples first. The run
    finishes its epoch on 21 x 3 batches and trains on both loss terms."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "facetrip.cli", "train", "-P", "21", "-K", "3", "--epochs", "1", "--no-evaluate",
               "--config", str(SCRATCH), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_one_trained_epoch(tmp_path / "run", "batch_hard", 21, 3)
