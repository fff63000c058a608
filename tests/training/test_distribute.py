"""Training under tf.distribute: mirrored replicas equal one device, and `facetrip train --distribute` end to end.

Logical CPU devices must be configured before TensorFlow sets up its devices, so every
strategy runs in a subprocess of its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, run_cli

TOLERANCE = 1e-5  # float32, after 4 optimizer steps
# the memory holds embeddings of the model after each step: on some CPUs the soft-margin
# batch-hard case differs by 2e-5 there (mining each replica alone moves parameters by > 1e-3)
MEMORY_TOLERANCE = 5e-5
EQUAL_CASES = ("batch_all", "batch_hard", "semi_hard", "batch_all_soft", "batch_hard_soft", "semi_hard_soft",
               "classification_only", "uneven_batches", "no_positive_pair_on_a_replica", "keras_fit_semi_hard")
MEMORY_CASES = ("memory_batch_all", "memory_batch_hard", "memory_semi_hard", "memory_batch_hard_soft",
                "memory_uneven_batches", "memory_keras_fit_semi_hard", "memory_warmup_batch_all")


def python_subprocess(*arguments, environment=None, timeout=900):
    return subprocess.run([sys.executable, *map(str, arguments)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(environment or {})})


@pytest.fixture(scope="module")
def equality():
    """Every case of distributed_equality.py, run once: name -> its differences."""
    result = python_subprocess(Path(__file__).with_name("distributed_equality.py"))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", EQUAL_CASES)
def test_two_mirrored_replicas_train_exactly_as_one_device_on_the_whole_batch(equality, name):
    """Global-batch mining: every parameter after 4 steps, the losses and the batch statistics agree to 1e-5."""
    assert equality[name]["finite"]
    assert equality[name]["max_parameter_difference"] < TOLERANCE
    assert equality[name]["max_log_difference"] < TOLERANCE


@pytest.mark.parametrize("name", MEMORY_CASES)
def test_with_a_cross_batch_memory_every_replica_holds_and_mines_the_single_devices_memory(equality, name):
    """The memory holds global batches: every replica's copy equals one device's after 4 steps (24 rows: wrapped
    around; 40 rows switched on after one step), and so do the parameters and the logs."""
    assert equality[name]["finite"]
    assert equality[name]["rows_pushed"] == (sum((16, 15, 9, 1)) if "uneven" in name else
                                             16 * 3 if "warmup" in name else 16 * 4)
    assert equality[name]["max_memory_difference"] < MEMORY_TOLERANCE
    assert equality[name]["max_parameter_difference"] < TOLERANCE
    assert equality[name]["max_log_difference"] < TOLERANCE


def test_the_memory_changes_the_distributed_loss(equality):
    """The same batches and weights without a memory give another loss: the memory's columns are mined."""
    assert abs(equality["memory_batch_hard"]["loss"] - equality["batch_hard"]["loss"]) > 1e-3


@pytest.mark.parametrize("name", ("replica_scope_batch_hard", "replica_scope_batch_all", "memory_replica_scope_batch_hard"))
def test_replica_scope_mining_is_not_single_device_training(equality, name):
    assert equality[name]["finite"]
    assert equality[name]["max_parameter_difference"] > 100 * TOLERANCE


def test_each_global_batch_is_split_whole_and_in_order_even_when_uneven(equality):
    """16 rows: 8 + 8; 15: 8 + 7; 1: 1 + 0 (a replica may get no rows: its loss share is 0, not NaN)."""
    assert equality["split"] == [[list(range(8)), list(range(8, 16))],
                                 [list(range(100, 108)), list(range(108, 115))],
                                 [[200], []]]


# ------------------------------------------------------------------------------- the command

KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
import facetrip.training.callbacks as callbacks

_write = callbacks.write_checkpoint


def _write_then_die(*arguments, **keywords):
    checkpoint = _write(*arguments, **keywords)
    os.kill(os.getpid(), signal.SIGKILL)


callbacks.write_checkpoint = _write_then_die
from facetrip.cli import app

app(prog_name="facetrip")
"""


def facetrip_subprocess(*arguments, kill_after_first_checkpoint=False, environment=None):
    if kill_after_first_checkpoint:
        return python_subprocess("-c", KILL_AFTER_FIRST_CHECKPOINT, "train", *arguments, environment=environment)
    return python_subprocess("-m", "facetrip.cli", "train", *arguments, environment=environment)


def test_mirrored_run_checkpoints_resumes_and_loads_on_one_device(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    killed = facetrip_subprocess("--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--distribute",
                                 "mirrored", "--replicas", "2", "--memory", "32", "--no-evaluate",
                                 kill_after_first_checkpoint=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (run_dir / "backup" / "epoch-0001.weights.h5").is_file()
    resumed = facetrip_subprocess("--resume", run_dir, "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in " ".join(resumed.stdout.split())

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["distribute"] == {"strategy": "mirrored", "replicas": 2, "mining_scope": "global"}
    assert metadata["memory"] == {"size": 32, "warmup_steps": 0}
    assert metadata["epochs_completed"] == 2 and metadata["threshold"] is not None
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]
    assert not (run_dir / "backup").exists()

    from facetrip.runs import load_embedding_model

    model = load_embedding_model(run_dir)  # this process has one CPU device
    embeddings = np.asarray(model([np.random.default_rng(0).random((3, 16, 14, 1), np.float32)]))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    exported = run_cli("export", run_dir, "--output", tmp_path / "export")
    assert exported.exit_code == 0, exported.output


@pytest.mark.parametrize("arguments, message", [
    (("--distribute", "ring"), "train.distribute must be one of none, mirrored, multi-worker"),
    (("--mining-scope", "batch"), "train.mining_scope must be one of global, replica"),
    (("--replicas", "2"), "train.replicas = 2 needs train.distribute = mirrored"),
    (("--replicas", "-1"), "train.replicas must be"),
    (("--distribute", "multi-worker"), "--distribute multi-worker needs TF_CONFIG"),
    (("--distribute", "mirrored", "--strategy", "offline"), "--distribute trains the online strategies"),
])
def test_distribution_errors_are_one_line(tmp_path, data_dir, monkeypatch, arguments, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir, *arguments)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ multi-worker


def free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("127.0.0.1", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def train_workers(*arguments, kill_after_first_checkpoint=False, workers=2):
    """`facetrip train ARGUMENTS` as a cluster of ``workers`` processes on 127.0.0.1; their results, chief first."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    script = KILL_AFTER_FIRST_CHECKPOINT if kill_after_first_checkpoint else "from facetrip.cli import app; app(prog_name='facetrip')"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, "train", *map(str, arguments)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(workers)
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=900)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.mark.slow
def test_two_workers_train_checkpoint_resume_and_write_one_run_directory(tmp_path, data_dir):
    from facetrip.data.records import load_model_faces

    load_model_faces("orl_faces", data_dir=data_dir, face_chips=False)  # prepared once, before the workers start
    run_dir = tmp_path / "run"
    killed = train_workers("--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--distribute",
                           "multi-worker", "--no-evaluate", kill_after_first_checkpoint=True)
    assert [code for code, _, _ in killed] == [-9, -9], killed[0][2][-3000:] + killed[1][2][-3000:]
    assert (run_dir / "backup" / "epoch-0001.weights.h5").is_file()

    resumed = train_workers("--resume", run_dir, "--no-evaluate")
    for code, stdout, stderr in resumed:
        assert code == 0, stderr[-3000:]
        assert "resuming after epoch 1" in " ".join(stdout.split())
    assert "the chief writes it" in " ".join(resumed[1][1].split())
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["distribute"] == {"strategy": "multi-worker", "replicas": 2, "mining_scope": "global"}
    assert metadata["epochs_completed"] == 2 and metadata["threshold"] is not None
    assert [row.split(",")[0] for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["0", "1"]
    assert sorted(path.name for path in run_dir.iterdir() if not path.name.startswith(".")) == [
        "config.toml", "logs", "metadata.json", "metrics.csv", "model.keras", "split.json", "training_curves.png"]

    from facetrip.runs import load_embedding_model

    load_embedding_model(run_dir)  # on the one device of this process


def test_multi_worker_without_a_run_dir_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    result = run_cli("train", "--config", TINY, "--distribute", "multi-worker")
    assert result.exit_code == 2, result.output
    assert "--distribute multi-worker needs --run-dir" in " ".join(result.output.split())
