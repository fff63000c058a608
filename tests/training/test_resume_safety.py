"""Training runs that never lose work: foreign folders, the run lock, atomic writes, and resume after kill -9 or damage.

The kill -9 tests run `facetrip train` in a subprocess with a small hook (``KILL_HOOK``)
that sends the process SIGKILL at a chosen moment: part-way through writing a
checkpoint's weights, right after opening the commit record ``training_metadata.json``
for writing, or when training ends (before the calibration), which leaves the last
checkpoint on disk to compare. The hook patches only what every version of the
checkpoint code goes through (Keras' h5 writer, Python's ``open``, the calibration).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_cli
from helpers import one_line_error

# Runs before the CLI in the subprocess; FACETRIP_TEST_KILL = "<moment>:<count>" says when to die:
#   weights:N  the N-th Keras weights file this process writes in a backup/ folder is cut to half, then SIGKILL
#   commit:N   the N-th opening for writing of a training_metadata.json file (or its temporary) empties it, then SIGKILL
#   end:1      SIGKILL when the training loop is over, before the threshold is calibrated
KILL_HOOK = r'''
import os, signal, sys
from pathlib import Path

_moment, _, _count = os.environ["FACETRIP_TEST_KILL"].partition(":")
_seen = {"weights": 0, "commit": 0}


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _count_and_maybe_die(moment, before_dying):
    _seen[moment] += 1
    if moment == _moment and _seen[moment] == int(_count):
        before_dying()
        _die()


from keras.src.saving import saving_lib

_close = saving_lib.H5IOStore.close


def _close_then_cut(self):
    _close(self)
    path = self.path_or_io
    if self.mode == "w" and isinstance(path, Path) and path.parent.name == "backup":
        _count_and_maybe_die("weights", lambda: os.truncate(path, path.stat().st_size // 2))


saving_lib.H5IOStore.close = _close_then_cut


def _on_open(event, arguments):
    if event != "open" or not isinstance(arguments[0], (str, os.PathLike)) or not isinstance(arguments[1], str):
        return
    path, mode = os.fspath(arguments[0]), arguments[1]
    if "training_metadata.json" in os.path.basename(path) and any(flag in mode for flag in "wa+"):
        # what opening with "w" does at once: a kill right after leaves the file empty
        _count_and_maybe_die("commit", lambda: os.path.exists(path) and os.truncate(path, 0))


sys.addaudithook(_on_open)

import facetrip.evaluation.threshold

_calibrate = facetrip.evaluation.threshold.calibrate_threshold


def _die_at_the_end(*arguments, **keywords):
    if _moment == "end":
        _die()
    return _calibrate(*arguments, **keywords)


facetrip.evaluation.threshold.calibrate_threshold = _die_at_the_end

from facetrip.cli import app

app(prog_name="facetrip")
'''


def train_until_killed(kill: str, *arguments) -> subprocess.CompletedProcess:
    """`facetrip train ARGUMENTS` in a subprocess that SIGKILLs itself at ``kill`` (see KILL_HOOK)."""
    environment = {**os.environ, "FACETRIP_TEST_KILL": kill}
    return subprocess.run([sys.executable, "-c", KILL_HOOK, "train", *map(str, arguments)], env=environment,
                          capture_output=True, text=True, timeout=900)


def squeezed(text: str) -> str:
    """``text`` without any white space: rich folds long lines, even inside a long path."""
    return "".join(text.split())


def all_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its contents, less the lock file (it names its holder)."""
    from facetrip.runs import LOCK_FILE

    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != LOCK_FILE}


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an h5 file, by its path inside the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def foreign_folder(path: Path) -> Path:
    """A folder of someone else's files, with a backup/ of their own holding a stale Keras state file."""
    (path / "backup").mkdir(parents=True)
    (path / "thesis.tex").write_text("\\documentclass{article}")
    (path / "backup" / "important.txt").write_text("do not delete")
    return path


# ------------------------------------------------------------------------ the run directory


def test_a_folder_of_other_files_is_refused_and_left_untouched(tmp_path, data_dir):
    folder = foreign_folder(tmp_path / "someone_elses")
    (folder / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')  # must not set the start
    before = all_files(folder)
    result = run_cli("train", "--config", TINY, "--run-dir", folder, "--data-dir", data_dir)
    assert "holds no facetrip run" in one_line_error(result) and "--overwrite" in result.stderr
    assert sorted(path.name for path in folder.rglob("*")) == sorted(Path(name).name for name in [*before, "backup"])
    assert all_files(folder) == before  # not even a lock file was written
    # --overwrite does not replace a file facetrip did not write either
    result = run_cli("train", "--config", TINY, "--run-dir", folder, "--data-dir", data_dir, "--overwrite")
    assert "training_metadata.json was not written by facetrip" in " ".join(one_line_error(result).split())
    assert all_files(folder) == before


@pytest.mark.slow
def test_overwrite_trains_into_a_folder_of_other_files_and_keeps_them(tmp_path, data_dir):
    folder = foreign_folder(tmp_path / "someone_elses")
    before = all_files(folder)
    result = run_cli("train", "--config", TINY, "--epochs", "1", "--run-dir", folder, "--data-dir", data_dir,
                     "--overwrite", "--no-evaluate")
    assert result.exit_code == 0, result.output
    after = all_files(folder)
    assert {name: after.get(name) for name in before} == before  # kept, unchanged, the backup/ file included
    assert json.loads((folder / "metadata.json").read_text())["epochs_completed"] == 1
    assert (folder / "backup").is_dir() and sorted(path.name for path in (folder / "backup").iterdir()) == ["important.txt"]


def test_a_second_process_cannot_train_into_a_locked_run(tmp_path, data_dir):
    from facetrip.config import Config
    from facetrip.runs import LOCK_FILE, run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = Config.from_toml(TINY)
    config.set("data.data_dir", data_dir)
    (run_dir / "config.toml").write_text(config.to_toml())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"handle = open({str(run_dir / LOCK_FILE)!r}, 'w')\n"
                               "fcntl.flock(handle, fcntl.LOCK_EX)\n"
                               "handle.write(f'{os.getpid()}\\n'); handle.flush()\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for arguments in (("--resume", run_dir), ("--config", TINY, "--run-dir", run_dir, "--overwrite")):
            result = run_cli("train", *arguments, "--no-evaluate")
            message = " ".join(one_line_error(result).split())
            assert f"in use by another facetrip process (pid {holder.pid})" in message, message
        assert sorted(path.name for path in run_dir.iterdir()) == [LOCK_FILE, "config.toml"]  # --overwrite removed nothing
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / LOCK_FILE).exists()  # left behind by a killed process: it no longer blocks
    with run_lock(run_dir):
        pass


# ------------------------------------------------------------------------ atomic writes


def test_concurrent_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    """A second save of the same file while the first is still writing: both finish, the result loads."""
    import keras
    import matplotlib.figure

    from facetrip.runs import save_model_atomically
    from facetrip.training.history import plot_metrics

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "model.keras"
    save = keras.Model.save

    def save_while_another_writer_saves(self, path, *arguments, **keywords):
        save(self, path, *arguments, **keywords)
        if not hasattr(save_while_another_writer_saves, "done"):
            save_while_another_writer_saves.done = True
            save_model_atomically(model, target)  # the other writer, between our write and our rename

    monkeypatch.setattr(keras.Model, "save", save_while_another_writer_saves)
    save_model_atomically(model, target)
    assert keras.saving.load_model(target).count_params() == model.count_params()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]

    (tmp_path / "metrics.csv").write_text("epoch,loss\r\n0,1.5\r\n1,1.25\r\n")
    savefig = matplotlib.figure.Figure.savefig

    def plot_while_another_writer_plots(self, *arguments, **keywords):
        savefig(self, *arguments, **keywords)
        if not hasattr(plot_while_another_writer_plots, "done"):
            plot_while_another_writer_plots.done = True
            plot_metrics(tmp_path)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", plot_while_another_writer_plots)
    plot_metrics(tmp_path)
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.csv", "model.keras", "training_curves.png"]


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask):
    import keras

    from facetrip.runs import atomic_write_bytes, atomic_write_json, save_model_atomically

    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"data")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        atomic_write_bytes(tmp_path / "a.bin", b"replaced")  # replacing keeps to the umask as well
        save_model_atomically(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), tmp_path / "model.keras")
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.json", "model.keras"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("cut_short", ["2,0.3,0.00", "2,0.3,0.00025,1.75,N"], ids=["values missing", "last value cut"])
def test_training_curves_leave_out_a_row_cut_short(tmp_path, monkeypatch, cut_short):
    """The curves drawn are the complete rows' values against 1-based epochs; the PNG is the 4-panel figure
    at 100 dpi (1600 x 320), drawn, not blank."""
    import io

    import matplotlib.figure
    from PIL import Image

    from facetrip.training.history import plot_metrics

    drawn = []
    savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(self, *arguments, **keywords):
        drawn.append({(axis.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
                      for axis in self.axes for line in axis.lines})
        return savefig(self, *arguments, **keywords)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    header = "epoch,fraction_positive_triplets,learning_rate,loss,val_loss\r\n"
    (tmp_path / "metrics.csv").write_text(header + "0,0.5,0.001,2.5,NA\r\n1,0.4,0.0005,2.0,NA\r\n" + cut_short)
    plot_metrics(tmp_path)
    assert drawn == [{
        ("loss", "loss"): ([1, 2], [2.5, 2.0]),
        ("fraction of positive triplets", "fraction_positive_triplets"): ([1, 2], [0.5, 0.4]),
        ("learning rate", "learning_rate"): ([1, 2], [0.001, 0.0005]),
    }]
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.format == "PNG" and image.size == (1600, 320)
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200 and np.mean(pixels < 200) > 0.005  # dark lines on white


# ------------------------------------------------------------------------ resume after kill -9


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, data_dir):
    """A 2-epoch tiny run killed (SIGKILL) once training ended, before its threshold was calibrated.

    It keeps both checkpoints (epochs 1 and 2) and is left as it is: tests copy it.
    """
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    finished = train_until_killed("end:1", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
    assert finished.returncode == -signal.SIGKILL, finished.stderr
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.slow
def test_resume_after_kill_9_during_checkpoint_writes_matches_an_uninterrupted_run(interrupted_run, tmp_path, data_dir):
    """Killed writing checkpoint 2's weights, then its commit: the run still ends where an uninterrupted one does.

    Each resume continues from checkpoint 1, the last one committed whole. The weights and
    the optimizer state after epoch 2 equal, bit for bit, those of the uninterrupted run
    (``interrupted_run``, the same config and seed), since the batches and augmentation of
    an epoch depend only on the seed and the epoch number.
    """
    run_dir = tmp_path / "run"
    first = train_until_killed("weights:2", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = train_until_killed("commit:1", "--resume", run_dir, "--no-evaluate")
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert "resuming after epoch 1, from checkpoint backup/epoch-0001.weights.h5" in " ".join(second.stdout.split())
    third = train_until_killed("end:1", "--resume", run_dir, "--no-evaluate")
    assert third.returncode == -signal.SIGKILL, third.stderr
    assert "resuming after epoch 1, from checkpoint backup/epoch-0001.weights.h5" in " ".join(third.stdout.split())
    assert "Traceback" not in first.stderr + second.stderr + third.stderr

    resumed = h5_arrays(run_dir / "backup" / "epoch-0002.weights.h5")
    uninterrupted = h5_arrays(interrupted_run / "backup" / "epoch-0002.weights.h5")
    assert resumed.keys() == uninterrupted.keys()
    # the embedder's layers, the trainer's class centres ("vars/0") and the optimizer: its step count first
    assert any(name.startswith("embedder/layers/") for name in resumed) and "vars/0" in resumed
    assert int(resumed["optimizer/vars/0"]) > 0 and any(name.startswith("optimizer/vars/") for name in resumed)
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]  # epoch 1's rows of the killed attempts were replaced

    finished = run_cli("train", "--resume", run_dir, "--no-evaluate")  # only the calibration was left
    assert finished.exit_code == 0, finished.output
    assert "resuming after epoch 2, from checkpoint backup/epoch-0002.weights.h5" in " ".join(finished.output.split())
    assert not (run_dir / "backup").exists()
    assert json.loads((run_dir / "metadata.json").read_text())["threshold_source"] == "dev"


def cut(path: Path, how: str) -> None:
    """Damage a file as a kill or a full disk would: empty it, or cut it to half its size.

    A TOML file is cut just after the ``=`` of a statement past its middle, so that it is
    never valid TOML (a config cut at a line end is test_a_damaged_config_...'s case).
    """
    data = path.read_bytes()
    end = data.index(b"=", len(data) // 2) + 1 if path.suffix == ".toml" else len(data) // 2
    path.write_bytes(b"" if how == "empty" else data[:end])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["empty", "truncated"])
@pytest.mark.parametrize("name, continues_from", [
    ("backup/training_metadata.json", 2),  # the commit record: the newest whole checkpoint is used
    ("backup/epoch-0002.weights.h5", 1),  # the newest weights: back to the checkpoint before
    ("split.json", 2),  # restored from the checkpoint's copy
    ("config.toml", 2),  # likewise
    ("metrics.csv", 2),  # cleaned of the cut row
])
def test_resume_with_a_damaged_file_continues_from_the_last_whole_checkpoint(interrupted_run, tmp_path, name, how,
                                                                             continues_from):
    run_dir = copy_of(interrupted_run, tmp_path)
    original = (run_dir / name).read_bytes()
    cut(run_dir / name, how)
    result = run_cli("train", "--resume", run_dir, "--no-evaluate")
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and "Traceback" not in output, result.output
    assert f"resuming after epoch {continues_from}, from checkpoint backup/epoch-{continues_from:04d}.weights.h5" in output
    if name != "metrics.csv":
        assert squeezed(str(run_dir / name)) in squeezed(result.output)  # the warning names the damaged file
    if name in ("split.json", "config.toml"):
        assert (run_dir / name).read_bytes() == original
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["epochs_completed"] == 2 and metadata["threshold_source"] == "dev"
    assert not (run_dir / "backup").exists()
    if name == "metrics.csv":  # what the damage destroyed is gone; no row cut short is left
        rows = (run_dir / "metrics.csv").read_text().splitlines() if (run_dir / "metrics.csv").exists() else []
        assert all(row.count(",") == rows[0].count(",") for row in rows)
        assert [row.split(",")[0] for row in rows[1:]] in ([], ["0"])
    else:
        rows = (run_dir / "metrics.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"] and len({row.count(",") for row in rows}) == 1


@pytest.mark.slow
def test_resume_without_a_whole_checkpoint_is_a_one_line_error(interrupted_run, tmp_path):
    run_dir = copy_of(interrupted_run, tmp_path)
    for epoch in (1, 2):
        cut(run_dir / "backup" / f"epoch-{epoch:04d}.weights.h5", "truncated")
    before = all_files(run_dir)
    message = " ".join(one_line_error(run_cli("train", "--resume", run_dir)).split())
    assert "epoch-0002.weights.h5 is truncated or damaged" in message and "no earlier whole checkpoint" in message
    assert all_files(run_dir) == before


def test_checkpoints_are_chosen_by_their_commit_record_and_checksums(tmp_path):
    """The resume point, on hand-made checkpoints: the committed one, else the newest whole one before it."""
    import keras

    from facetrip.training import TrainingError, find_resume_point
    from facetrip.training.checkpoints import write_checkpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    backup = tmp_path / "backup"
    assert find_resume_point(tmp_path).checkpoint is None  # nothing saved yet: from the start
    for epoch in (1, 2, 3):
        write_checkpoint(model, backup, epoch, "", {"train": ["a"], "dev": ["b"], "test": ["c"], "seed": 0}, previous_epoch=epoch - 1 if epoch > 1 else None)
    assert sorted(path.name for path in backup.iterdir()) == [
        "epoch-0002.json", "epoch-0002.weights.h5", "epoch-0003.json", "epoch-0003.weights.h5", "training_metadata.json"]
    assert find_resume_point(tmp_path).epoch == 3 and find_resume_point(tmp_path).notes == ()

    # a whole checkpoint newer than the commit record was interrupted before its commit: not used
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0, "checkpoint": "epoch-0002"}')
    assert find_resume_point(tmp_path).epoch == 2
    cut(backup / "epoch-0002.json", "truncated")
    with pytest.raises(TrainingError, match="epoch-0002.json is empty or truncated, and no earlier whole checkpoint"):
        find_resume_point(tmp_path)
    cut(backup / "training_metadata.json", "empty")
    point = find_resume_point(tmp_path)
    assert point.epoch == 3 and "training_metadata.json is empty or truncated" in point.notes[0]
    (backup / "training_metadata.json").unlink()
    assert find_resume_point(tmp_path).epoch == 3


def test_a_damaged_config_is_restored_from_the_checkpoint_and_an_edited_one_refused(tmp_path):
    import keras

    from facetrip.config import Config
    from facetrip.training import TrainingError, load_resume_config
    from facetrip.training.checkpoints import write_checkpoint

    config = Config.from_toml(TINY)
    text = config.to_toml()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    write_checkpoint(model, tmp_path / "backup", 1, text, {"train": ["a"], "dev": ["b"], "test": ["c"], "seed": 0})
    path = tmp_path / "config.toml"
    for damaged in ("", text[: text.index("margin = ") + len("margin = ")]):  # empty; cut inside a statement
        path.write_text(damaged)
        restored, notes = load_resume_config(tmp_path)
        assert restored == config and path.read_text() == text and str(path) in notes[0]
    path.write_text(text[: text.index("[train]")])  # cut at a line end: a valid config, but not the one trained
    with pytest.raises(TrainingError, match="differs from the config .* delete .* to continue with the checkpoint's copy"):
        load_resume_config(tmp_path)
    path.unlink()  # as the message says
    assert load_resume_config(tmp_path)[0] == config and path.read_text() == text


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    """Only temporaries of a checkpoint being written, and a metrics.csv row cut short: nothing to continue from."""
    from facetrip.training import find_resume_point
    from facetrip.training.history import trim_metrics

    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / ".epoch-0001.weights.h5.0123456789ab.weights.h5").write_bytes(b"\x89HDF")
    assert find_resume_point(tmp_path).checkpoint is None
    (tmp_path / "metrics.csv").write_text("epoch,loss\r\n0,1.5\r\n1,1.")
    trim_metrics(tmp_path / "metrics.csv", 1)
    assert (tmp_path / "metrics.csv").read_bytes() == b"epoch,loss\r\n0,1.5\r\n"  # as CSVLogger writes it
    trim_metrics(tmp_path / "metrics.csv", 0)
    assert not (tmp_path / "metrics.csv").exists()
