"""Config, the training workflow and `facetrip train`: run directories, resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, run_cli
from facetrip.config import Config, ConfigError


# --------------------------------------------------------------------------------- config


def test_default_toml_mirrors_the_code_defaults():
    assert Config.from_toml(REPO / "configs" / "default.toml") == Config()


def test_config_overrides_round_trip_and_errors(tmp_path):
    config = Config.from_toml(TINY)
    assert config.model.width == 4 and config.loss.strategy == "batch_hard"  # untouched keys keep defaults
    config.set("loss.margin", "soft")
    config.set("data.image_size", [20, 18])
    path = tmp_path / "saved.toml"
    path.write_text(config.to_toml())
    assert Config.from_toml(path) == config
    for key, value, message in (
        ("loss.margin", -1, "margin"),
        ("train.epochs", "ten", "whole number"),
        ("train.epoch", 3, "Unknown config key"),
        ("data.image_size", [1, 2, 3], "list of 2"),
    ):
        with pytest.raises(ConfigError, match=message):
            Config().set(key, value)
    path.write_text("[model\nwidth = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml(path)
    with pytest.raises(ConfigError, match="Unknown config section"):
        Config.from_dict({"optimiser": {}})


# ------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(finished_run):
    from facetrip.runs import load_embedding_model, read_metadata

    run_dir, output = finished_run
    for name in ("model.keras", "metadata.json", "config.toml", "split.json", "metrics.csv", "training_curves.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("events.out.tfevents*"))
    assert not (run_dir / "backup").exists()  # Keras removes its backup once training completes
    metadata = read_metadata(run_dir)
    assert metadata["epochs_completed"] == 2 and metadata["strategy"] == "batch_all"
    assert metadata["image_size"] == [16, 14] and metadata["channels"] == 1 and metadata["embedding_dim"] == 8
    assert isinstance(metadata["threshold"], float) and metadata["threshold_source"] == "dev"
    assert set(metadata["split"]["test"]).isdisjoint(metadata["split"]["train"])
    assert Config.from_toml(run_dir / "config.toml").loss.strategy == "batch_all"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "fraction_positive_triplets" in rows[0] and "learning_rate" in rows[0]
    model = load_embedding_model(run_dir)
    embeddings = model.predict(np.random.default_rng(0).uniform(size=(3, 16, 14, 1)).astype("float32"), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert "epoch 2/2" in " ".join(output.split()) and "Done:" in output


@pytest.mark.slow
def test_resume_continues_after_kill_9(tmp_path, data_dir):
    """Kill a training process after its second epoch, resume, and finish all epochs."""
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "facetrip.cli", "train", "--config", TINY, "--epochs", "5",
               "--run-dir", str(run_dir), "--data-dir", data_dir]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backup_state = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if backup_state.is_file() and json.loads(backup_state.read_text() or "{}").get("epoch", 0) >= 2:
                break
            if process.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("training did not reach epoch 2 in time")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    completed_before = json.loads(backup_state.read_text())["epoch"]
    assert 2 <= completed_before < 5

    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert f"resuming after epoch {completed_before}" in " ".join(result.output.split())
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["epochs_completed"] == 5
    epochs_logged = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs_logged[-1] == 4 and set(range(5)) <= set(epochs_logged)

    again = run_cli("train", "--resume", run_dir)
    assert again.exit_code == 2 and "nothing to resume" in " ".join(again.output.split())


def test_train_errors_are_one_line(tmp_path, data_dir):
    result = run_cli("train", "--resume", tmp_path)
    assert result.exit_code == 2 and "not a facetrip run directory" in " ".join(result.output.split())
    result = run_cli("train", "--margin", "wide", "--run-dir", tmp_path / "x")
    assert result.exit_code == 2 and "--margin must be" in " ".join(result.output.split())
    result = run_cli("train", "--config", tmp_path / "missing.toml")
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
    (tmp_path / "used").mkdir()
    from facetrip.config import Config

    (tmp_path / "used" / "config.toml").write_text(Config().to_toml())  # as training writes it: every section
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "used", "--data-dir", data_dir)
    assert result.exit_code == 2 and "already holds a run" in " ".join(result.output.split())


def test_nan_loss_stops_training_with_a_clear_message():
    from facetrip.training import TrainingDiverged
    from facetrip.training.callbacks import StopOnNonFiniteLoss

    callback = StopOnNonFiniteLoss()
    callback.on_epoch_begin(3)
    callback.on_train_batch_end(0, {"loss": 0.5})
    with pytest.raises(TrainingDiverged, match="epoch 4, step 2.*last good checkpoint"):
        callback.on_train_batch_end(1, {"loss": float("nan")})


def test_unknown_strategy_and_metric_are_one_line_errors(tmp_path, data_dir):
    result = run_cli("train", "--config", TINY, "--strategy", "hardest", "--run-dir", tmp_path / "a", "--data-dir", data_dir)
    assert result.exit_code == 2 and "choose one of batch_all, batch_hard, semi_hard, offline" in " ".join(result.output.split())
    result = run_cli("train", "--config", TINY, "--metric", "manhattan", "--run-dir", tmp_path / "b", "--data-dir", data_dir)
    assert result.exit_code == 2 and "Unknown metric" in result.output
    config = tmp_path / "head.toml"
    config.write_text(Path(TINY).read_text().replace("[model]", '[model]\nhead = "attention"'))
    result = run_cli("train", "--config", config, "--run-dir", tmp_path / "c", "--data-dir", data_dir)
    assert result.exit_code == 2 and "Unknown head" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_bf16_training_computes_in_bfloat16_and_saves_float32_unit_embeddings(tmp_path, data_dir):
    """One epoch with --precision bf16: the saved network computes its body in bfloat16 on float32 weights and
    its head in float32, so embeddings come out float32 with unit norm; the run's config says bf16, the
    process's Keras policy is float32 again afterwards, and the epoch's loss is finite."""
    import csv

    import keras

    from facetrip.runs import load_embedding_model, read_metadata

    run_dir = tmp_path / "bf16"
    try:
        result = run_cli("train", "--config", TINY, "--epochs", "1", "--precision", "bf16", "--run-dir", run_dir,
                         "--data-dir", data_dir)
        assert result.exit_code == 0, result.output
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert Config.from_toml(run_dir / "config.toml").train.precision == "bf16"
    metadata = read_metadata(run_dir)
    assert metadata["epochs_completed"] == 1 and 0.0 < metadata["threshold"] < 2.0
    with (run_dir / "metrics.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert np.isfinite(float(row["loss"])) and float(row["triplet_loss"]) > 0.0

    saved = load_embedding_model(run_dir)
    model = saved.get_layer("facetrip_embedder")  # inside the flip averaging
    stem = model.get_layer("stem_conv")
    assert stem.dtype_policy.compute_dtype == "bfloat16" and stem.kernel.dtype == "float32"
    for name in ("projection", "l2_normalise"):
        assert model.get_layer(name).dtype_policy.compute_dtype == "float32", name
    images = np.random.default_rng(0).uniform(size=(4, 16, 14, 1)).astype(np.float32)
    assert keras.ops.convert_to_numpy(model(images)).dtype == np.float32
    embeddings = saved.predict(images, verbose=0)
    assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_resnet50_backbone_is_keras_resnet50_under_the_centring_and_the_head():
    """RGB 64 x 48 images (a 2 x 2 final feature map): the embedding is Keras' ResNet50 (no top) of 2 x - 1,
    averaged over the map, projected and normalised, computed here from the layers' own weights."""
    from facetrip.models import build_embedding_model

    model = build_embedding_model(input_shape=(64, 48, 3), embedding_dim=16, backbone="resnet50")
    resnet = model.get_layer("resnet50")
    assert resnet.count_params() == 23_587_712  # keras.applications.ResNet50(include_top=False) on 3 channels
    images = np.random.default_rng(0).uniform(size=(3, 64, 48, 3)).astype(np.float32)
    embeddings = model(images, training=False).numpy()
    assert embeddings.shape == (3, 16) and embeddings.dtype == np.float32
    feature_map = resnet(2.0 * images - 1.0, training=False).numpy().astype(np.float64)  # (3, 2, 2, 2048)
    assert feature_map.shape == (3, 2, 2, 2048)
    kernel, bias = model.get_layer("projection").get_weights()
    projection = feature_map.mean(axis=(1, 2)) @ kernel + bias  # (3, 16)
    np.testing.assert_allclose(embeddings, projection / np.linalg.norm(projection, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert min(np.linalg.norm(embeddings[i] - embeddings[j]) for i in range(3) for j in range(i)) > 1e-3
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_embedding_model(backbone="vgg")


def test_learning_rate_warms_up_then_decays_and_the_optimizer_is_chosen_by_name():
    """Warm-up of one epoch (4 steps) to the peak, then cosine decay to 1% of it at the last step."""
    import keras

    from facetrip.training import TrainingError
    from facetrip.training.optimizer import build_optimizer, learning_rate_schedule

    config = Config()
    config.set("train.epochs", 5)
    config.set("train.learning_rate", 1e-3)
    config.set("train.lr_warmup_epochs", 1)
    schedule = learning_rate_schedule(config, steps_per_epoch=4)
    rates = [float(schedule(step)) for step in range(21)]
    assert rates[0] == 0.0 and rates[2] == pytest.approx(5e-4) and rates[4] == pytest.approx(1e-3)
    assert all(later <= earlier for earlier, later in zip(rates[4:], rates[5:]))
    assert rates[20] == pytest.approx(1e-5, rel=1e-3)
    assert isinstance(build_optimizer(config, 4), keras.optimizers.Lamb)
    config.set("train.optimizer", "adamw")
    assert isinstance(build_optimizer(config, 4), keras.optimizers.AdamW)
    config.set("train.optimizer", "sgd9")
    with pytest.raises(TrainingError, match="lamb, adamw"):
        build_optimizer(config, 4)
