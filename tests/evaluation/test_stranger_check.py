"""The saved threshold checked on strangers from other photos (facetrip.evaluation.stranger_check)."""

import json
import logging

import numpy as np
import pytest

from conftest import TINY
from facetrip.evaluation.stranger_check import WARN_FACTOR, check_threshold_on_strangers, stranger_false_accepts


@pytest.mark.parametrize("seed", range(5))
def test_far_and_threshold_at_target_match_a_plain_count(seed):
    rng = np.random.default_rng(seed)
    distances = np.round(rng.uniform(0, 1, size=int(rng.integers(50, 400))), 2)  # ties, in any order
    threshold, target = float(rng.uniform(0.1, 0.9)), 0.05
    check = stranger_false_accepts(distances, threshold, target)
    assert check["far"] == sum(1 for d in distances if d <= threshold) / len(distances)
    assert check["different_pairs"] == len(distances) and check["target_far"] == target
    strict = check["threshold_at_target"]
    assert np.mean(distances <= strict) <= target  # meets the target ...
    next_up = distances[distances > strict].min()
    assert np.mean(distances <= next_up) > target  # ... and no larger distance does


def test_no_different_pairs_is_refused():
    with pytest.raises(ValueError, match="no different-people pairs"):
        stranger_false_accepts([], 0.5, 0.01)


def test_the_check_counts_the_strangers_pairs_under_the_threshold(data_dir, tmp_path, caplog):
    import keras

    from facetrip.config import Config
    from facetrip.data import image_dataset, load_faces

    config = Config.from_toml(TINY)  # whole grey 16 x 14 images
    config.set("data.source", f"folder:{tmp_path}")  # some other people: ORL's are strangers to the run
    config.data.data_dir = data_dir
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 14, 1)), keras.layers.Flatten(), keras.layers.Dense(8),
                              keras.layers.UnitNormalization()])
    # the reference: ORL's photos at the run's input, every different-people pair by hand
    faces = load_faces("orl_faces", data_dir=data_dir)
    images = np.concatenate([batch.numpy() for batch, _ in image_dataset(faces, (16, 14), 1)])
    embeddings = np.asarray(model(images))
    labels = np.asarray(faces.labels)
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    upper = np.triu(np.ones_like(distances, bool), 1) & (labels[:, None] != labels[None])
    different = distances[upper]
    threshold = float(np.quantile(different, 0.5))  # half the strangers accepted: far above the target
    with caplog.at_level(logging.WARNING, logger="facetrip.evaluation.stranger_check"):
        check = check_threshold_on_strangers(model, threshold, config, "euclidean")
    assert check["source"] == "orl_faces" and check["different_pairs"] == len(different) == 78_000
    assert check["far"] == pytest.approx(np.mean(different <= threshold), abs=2e-5)
    assert check["far"] > WARN_FACTOR * config.train.target_far
    assert "fits photos like the dev people's" in check["summary"]
    assert f"verify with --threshold {check['threshold_at_target']:.3f}" in check["summary"]
    assert any("accepts" in record.getMessage() for record in caplog.records)
    strict = stranger_false_accepts(different, threshold, config.train.target_far)["threshold_at_target"]
    assert check["threshold_at_target"] == pytest.approx(strict, abs=1e-5)
    # a threshold below every stranger pair: no warning
    quiet = check_threshold_on_strangers(model, float(different.min()) / 2, config, "euclidean")
    assert quiet["far"] == 0 and "fits photos" not in quiet["summary"]
    assert f"{check['threshold_at_target']:.3f} gives the target on them" in quiet["summary"]
    json.dumps(check)  # it goes into metadata.json


def test_the_check_is_skipped_on_the_training_source_and_when_off(pretrained_run):
    from facetrip.config import Config

    metadata = json.loads((pretrained_run / "metadata.json").read_text())
    assert metadata["stranger_check"] == {"source": "orl_faces", "skipped": "the run trains on these people"}
    config = Config()
    config.set("train.stranger_check", "")
    assert check_threshold_on_strangers(None, 0.5, config, "euclidean") is None
    config.set("train.stranger_check", "orl_faces")
    assert check_threshold_on_strangers(None, None, config, "euclidean") is None  # no threshold to check


def test_strangers_that_cannot_be_loaded_are_reported_not_raised(tmp_path, caplog):
    from facetrip.config import Config

    config = Config()
    config.set("train.stranger_check", f"folder:{tmp_path / 'nowhere'}")
    with caplog.at_level(logging.WARNING, logger="facetrip.evaluation.stranger_check"):
        check = check_threshold_on_strangers(None, 0.5, config, "euclidean")
    assert check["source"] == f"folder:{tmp_path / 'nowhere'}" and "does not exist" in check["skipped"]
    assert any("was not checked" in record.getMessage() for record in caplog.records)


def test_loose_threshold_note_only_above_the_warning_level():
    from facetrip.evaluation.stranger_check import loose_threshold_note

    def metadata(far, target=0.01):
        return {"stranger_check": {"source": "orl_faces", "far": far, "target_far": target, "summary": "too loose"}}

    assert loose_threshold_note(metadata(WARN_FACTOR * 0.01 + 1e-6)) == "too loose"
    assert loose_threshold_note(metadata(WARN_FACTOR * 0.01)) is None
    assert loose_threshold_note({"stranger_check": {"source": "orl_faces", "skipped": "the run trains on these people"}}) is None
    assert loose_threshold_note({}) is None


def test_verify_notes_a_threshold_that_accepted_too_many_strangers(finished_run, tmp_path):
    import shutil

    from conftest import run_cli
    from facetrip.data.orl import orl_faces_root

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    metadata["stranger_check"] = {"source": "orl_faces", "far": 0.5, "target_far": 0.01, "different_pairs": 78000,
                                  "threshold_at_target": 0.1, "summary": "On 40 strangers ... accepts 50% ..."}
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    first, second = orl_faces_root() / "s1" / "1.pgm", orl_faces_root() / "s2" / "1.pgm"
    saved = json.loads(run_cli("verify", first, second, "--run", run_dir, "--json").output)
    assert saved["threshold_warning"] == "On 40 strangers ... accepts 50% ..."
    given = json.loads(run_cli("verify", first, second, "--run", run_dir, "--json", "--threshold", "0.3").output)
    assert "threshold_warning" not in given  # the user's own threshold: nothing to warn about
    table = run_cli("verify", first, second, "--run", run_dir)
    assert table.exit_code == 0 and "Note: On 40 strangers ... accepts 50% ..." in " ".join(table.output.split())
