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


@pytest.mark.slow
def test_offline_training_can_start_from_a_mined_file(offline_run, tmp_path, data_dir):
    triplets = offline_run / "triplets-train.npz"
    if not triplets.exists():
        assert run_cli("mine", "--run", offline_run, "--data-dir", data_dir, "--max-triplets", "200").exit_code == 0
    result = run_cli("train", "--config", TINY, "--strategy", "offline", "--epochs", "1", "--triplets", triplets,
                     "--run-dir", tmp_path / "from-file", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    bad = run_cli("train", "--config", TINY, "--strategy", "offline", "--triplets", tmp_path / "none.npz",
                  "--run-dir", tmp_path / "bad", "--data-dir", data_dir)
    assert bad.exit_code == 2 and "No triplets file" in " ".join(bad.output.split())


def test_offline_batches_hold_an_even_number_of_triplets():
    from types import SimpleNamespace

    from facetrip.training import offline_triplets_per_batch

    for batch_size, expected in ((64, 20), (32, 10), (12, 4), (6, 2), (2, 1)):
        assert offline_triplets_per_batch(SimpleNamespace(batch_size=batch_size)) == expected


@pytest.mark.slow
def test_offline_training_of_the_scratch_model_does_not_crash(tmp_path, data_dir):
    """Regression: with 21 triplets (63 images) per batch, TF's oneDNN kernels killed the process
    (segfault) training the from-scratch width-8 model (configs/scratch.toml, the default until
    session 5); the run must now finish one epoch."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "facetrip.cli", "train", "--strategy", "offline", "--epochs", "1", "--no-evaluate",
               "--config", str(SCRATCH), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "model.keras").is_file()


@pytest.mark.slow
def test_online_training_of_the_scratch_model_on_odd_batches_does_not_crash(tmp_path, data_dir):
    """Regression: P x K = 21 x 3 = 63 killed the process ('munmap_chunk(): invalid pointer') in
    oneDNN's strided 1x1 convolution of the width-8 model; the shortcut now subsamples first."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "facetrip.cli", "train", "-P", "21", "-K", "3", "--epochs", "1", "--no-evaluate",
               "--config", str(SCRATCH), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "model.keras").is_file()
