"""`--strategy offline` training and `facetrip mine --offline` end to end (mining itself: test_mining.py)."""

import numpy as np
import pytest

from conftest import TINY, run_cli


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
