"""Runs of the pretrained face network: photos of any kind through the one chip path, fine-tuning, export.

One run of the pretrained network without training (``facetrip train --epochs 0``) is
made per test session; LFW photos are used where the shared data holds them (skipped
otherwise).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import SHARED_DATA
from facetrip.data.orl import orl_faces_root

LFW_IMAGES = SHARED_DATA / "lfw" / "images"
needs_lfw = pytest.mark.skipif(not LFW_IMAGES.is_dir(), reason="LFW is not in ../shared/data")


def orl(identity: int, image: int) -> Path:
    return orl_faces_root() / f"s{identity}" / f"{image}.pgm"


def lfw(name: str, number: int) -> Path:
    return LFW_IMAGES / name / f"{name}_{number:04d}.jpg"


def verify(run_dir, first, second) -> dict:
    result = run_cli("verify", first, second, "--run", run_dir, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_the_pretrained_run_records_its_input_and_tells_orl_people_apart(pretrained_run):
    metadata = json.loads((pretrained_run / "metadata.json").read_text())
    assert metadata["backbone"] == "face_resnet" and metadata["face_chips"] is True
    assert metadata["image_size"] == [150, 150] and metadata["chip"]["size"] == 150
    assert metadata["training_faces"]["images"] == 400
    assert verify(pretrained_run, orl(1, 1), orl(1, 2))["same_person"] is True
    assert verify(pretrained_run, orl(1, 1), orl(2, 1))["same_person"] is False


@pytest.mark.slow
def test_a_small_face_in_a_large_rgba_photo_is_found_before_anything_is_resized(pretrained_run, tmp_path):
    """An ORL face pasted small into a 2400 x 1800 RGBA canvas: its chip is found at the photo's own
    resolution, so it embeds close to the original photo (the old path squashed the whole canvas)."""
    face = Image.open(orl(5, 1)).convert("RGB").resize((224, 272))
    canvas = Image.new("RGBA", (2400, 1800), (90, 120, 160, 255))
    canvas.paste(face, (1500, 700))
    canvas.save(tmp_path / "phone.png")
    result = verify(pretrained_run, orl(5, 2), tmp_path / "phone.png")
    assert result["faces_detected"] == [1, 1]
    assert result["same_person"] is True
    different = verify(pretrained_run, orl(6, 1), tmp_path / "phone.png")
    assert different["distance"] > result["distance"]


@pytest.mark.slow
def test_verify_and_embed_say_when_no_face_is_found(pretrained_run, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    table = run_cli("verify", orl(1, 1), tmp_path / "noise.png", "--run", pretrained_run)
    assert table.exit_code == 0, table.output
    assert "No face found in 1 of 2 photos" in " ".join(table.output.split())
    checked = verify(pretrained_run, orl(1, 1), tmp_path / "noise.png")
    assert checked["faces_detected"] == [1, 0] and checked["face_detectors"] == ["hog", "none"]
    hog_misses = verify(pretrained_run, orl(33, 4), orl(33, 5))  # HOG finds no face in s33/4.pgm; the CNN does
    assert hog_misses["face_detectors"] == ["cnn", "hog"] and hog_misses["faces_detected"] == [1, 1]
    folder = tmp_path / "photos" / "someone"
    folder.mkdir(parents=True)
    Image.open(orl(1, 1)).save(folder / "face.png")
    Image.open(tmp_path / "noise.png").save(folder / "noise.png")
    embedded = run_cli("embed", tmp_path / "photos", "--run", pretrained_run, "-o", tmp_path / "out", "--json")
    assert embedded.exit_code == 0, embedded.output
    report = json.loads(embedded.output)
    assert {Path(photo["path"]).name: photo["faces_detected"] for photo in report["photos"]} == {"face.png": 1, "noise.png": 0}
    assert {Path(photo["path"]).name: photo["face_detector"] for photo in report["photos"]} == {"face.png": "hog", "noise.png": "none"}
    assert "faces_detected" in (tmp_path / "out" / "metadata.tsv").read_text().splitlines()[0]


@needs_lfw
@pytest.mark.slow
def test_press_photos_of_lfw_people_are_told_apart_by_a_run_made_on_orl(pretrained_run, tmp_path):
    """A model used on another data set: LFW photos (250 x 250 colour JPEG), verified with a run made on ORL."""
    assert verify(pretrained_run, lfw("George_W_Bush", 1), lfw("George_W_Bush", 2))["same_person"] is True
    assert verify(pretrained_run, lfw("George_W_Bush", 1), lfw("Colin_Powell", 1))["same_person"] is False
    big = Image.open(lfw("Colin_Powell", 2)).resize((1000, 1000))  # a larger JPEG of the same photo
    big.save(tmp_path / "powell_big.jpg", quality=92)
    assert verify(pretrained_run, lfw("Colin_Powell", 1), tmp_path / "powell_big.jpg")["same_person"] is True


@pytest.mark.slow
def test_the_run_loads_and_embeds_in_a_fresh_process_without_dlib(pretrained_run, tmp_path):
    """model.keras holds the whole network: a new process loads it and embeds a chip without importing dlib."""
    from facetrip.data.face_chips import chip_from_file
    from facetrip.runs.loaded_run import Run

    chip = chip_from_file(orl(3, 3)).pixels
    np.save(tmp_path / "chip.npy", chip)
    expected = Run.load(pretrained_run).embed_images(chip[None].astype(np.float32) / 255.0)
    script = (
        "import sys, numpy as np\n"
        "from facetrip.runs import load_embedding_model\n"
        f"model = load_embedding_model({str(pretrained_run)!r})\n"
        f"chip = np.load({str(tmp_path / 'chip.npy')!r}).astype('float32')[None] / 255.0\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, model.predict(chip, verbose=0))\n"
        "assert 'dlib' not in sys.modules, 'dlib was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("export_format, tolerance", [("savedmodel", 1e-5), ("tflite", 1e-3)])
def test_exported_models_embed_real_chips_as_the_keras_model_does(pretrained_run, tmp_path, export_format, tolerance):
    import tensorflow as tf

    from facetrip.data.face_chips import chip_from_file
    from facetrip.runs.loaded_run import Run

    result = run_cli("export", pretrained_run, "--format", export_format, "-o", tmp_path / "export")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["input"]["shape"] == [None, 150, 150, 3] and info["input"]["dtype"] == "uint8"
    assert info["chip"]["alignment"] and info["threshold"] is not None
    chips = np.stack([chip_from_file(orl(identity, 1)).pixels for identity in (1, 2, 3)])  # (3, 150, 150, 3) uint8
    expected = Run.load(pretrained_run).embed_images(chips.astype(np.float32) / 255.0)
    if export_format == "savedmodel":
        serve = tf.saved_model.load(str(tmp_path / "export" / "savedmodel")).signatures["serving_default"]
        embeddings = serve(images=tf.constant(chips))["embeddings"].numpy()
    else:
        interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "export" / "model.tflite"))
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], chips.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], chips)
        interpreter.invoke()
        embeddings = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(embeddings, expected, atol=tolerance)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=tolerance)


def test_export_errors_are_one_line(tmp_path):
    result = run_cli("export", tmp_path / "nothing")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_fine_tuning_trains_the_face_network_unless_frozen(tmp_path, data_dir):
    """One short epoch, saved as trained (--weight-interpolation 1): with --freeze stage4 the last stage and
    the head change and the stem does not; with --freeze all the whole ResNet stays as it was."""
    from facetrip.runs.loaded_run import Run
    from facetrip.models.face_resnet import build_face_resnet

    pretrained = build_face_resnet()

    def changed(run_dir) -> dict[str, bool]:
        model = Run.load(run_dir).model
        backbone = next(layer for layer in _all_layers(model) if layer.name == "face_resnet")
        return {name: not np.array_equal(backbone.get_layer(name).get_weights()[0], pretrained.get_layer(name).get_weights()[0])
                for name in ("stem_conv", "stage3_block1_conv1", "stage5_block1_conv1", "descriptor")}

    for freeze, expected in (("stage4", {"stem_conv": False, "stage3_block1_conv1": False,
                                          "stage5_block1_conv1": True, "descriptor": True}),
                             ("all", {"stem_conv": False, "stage3_block1_conv1": False,
                                      "stage5_block1_conv1": False, "descriptor": False})):
        run_dir = tmp_path / freeze
        result = run_cli("train", "--epochs", "1", "-P", "4", "-K", "2", "--freeze", freeze, "--weight-interpolation",
                         "1", "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
        assert result.exit_code == 0, result.output
        assert changed(run_dir) == expected, freeze
        assert json.loads((run_dir / "metadata.json").read_text())["freeze"] == freeze


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def test_wrong_freeze_levels_and_input_sizes_are_one_line_errors(tmp_path, data_dir):
    result = run_cli("train", "--epochs", "0", "--freeze", "stage9", "--run-dir", tmp_path / "a", "--data-dir", data_dir)
    assert result.exit_code == 2 and "stage9" in result.output and "stage5" in result.output
    result = run_cli("train", "--epochs", "0", "--image-size", "112x92", "--run-dir", tmp_path / "b", "--data-dir", data_dir)
    assert result.exit_code == 2 and "150x150" in result.output


def strategy_loss_reference(strategy, margin):
    """A batch of random embeddings and the loss the strategy gives it, from the explicit loops of tests/reference.py.

    Returns ``(labels, embeddings, loss)``: a P x K = 4 x 2 batch, or for ``offline`` 4 triplets
    stacked as [anchors; positives; negatives].
    """
    import reference

    margin = margin if margin == "soft" else float(margin)
    embeddings = np.random.default_rng(7).normal(size=(12 if strategy == "offline" else 8, 4))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    if strategy == "offline":
        anchors, positives, negatives = np.split(embeddings, 3)
        return np.zeros(12, np.int64), embeddings, reference.explicit_triplets(anchors, positives, negatives, margin,
                                                                                 "euclidean")
    labels = np.repeat(np.arange(4), 2)
    if strategy == "batch_all":
        return labels, embeddings, reference.batch_all(labels, embeddings, margin, "euclidean")[0]
    return labels, embeddings, getattr(reference, strategy)(labels, embeddings, margin, "euclidean")


@pytest.mark.slow
@pytest.mark.parametrize("strategy, margin", [("batch_all", "0.2"), ("semi_hard", "0.2"), ("offline", "0.2"),
                                              ("batch_hard", "soft")])
def test_every_strategy_fine_tunes_the_face_network(tmp_path, data_dir, monkeypatch, strategy, margin):
    """One short epoch of each strategy on the face network (the last stage and the head training).

    The run trains with the strategy's own loss (its trainer's triplet loss equals the explicit-loop
    reference on a random batch), the epoch moves the last stage, the logged loss is the classification
    term plus the triplet term, the fine-tuned network is no worse on the dev people than the pretrained
    one, and the threshold is a euclidean distance between unit embeddings.
    """
    import csv

    from facetrip.training import run as training_run
    from facetrip.training.weight_choice import EER_TOLERANCE

    trainers, stage5_kernels = [], []
    build_trainer, fit_epochs = training_run.build_trainer, training_run.fit_epochs

    def stage5_kernel(trainer):
        backbone = next(layer for layer in _all_layers(trainer.embedder) if layer.name == "face_resnet")
        return backbone.get_layer("stage5_block1_conv1").get_weights()[0]

    def recording_build_trainer(*arguments, **options):
        trainers.append(build_trainer(*arguments, **options))
        return trainers[-1]

    def recording_fit_epochs(trainer, *arguments, **options):
        stage5_kernels.append(stage5_kernel(trainer))
        fit_epochs(trainer, *arguments, **options)
        stage5_kernels.append(stage5_kernel(trainer))

    monkeypatch.setattr(training_run, "build_trainer", recording_build_trainer)
    monkeypatch.setattr(training_run, "fit_epochs", recording_fit_epochs)
    run_dir = tmp_path / strategy
    result = run_cli("train", "--epochs", "1", "-P", "4", "-K", "2", "--freeze", "stage4", "--strategy", strategy,
                     "--margin", margin, "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
    assert result.exit_code == 0, result.output

    (trainer,) = trainers
    labels, embeddings, expected = strategy_loss_reference(strategy, margin)
    np.testing.assert_allclose(float(trainer.triplet_loss(labels, embeddings.astype(np.float32))), expected, rtol=1e-5)
    before, after = stage5_kernels
    assert np.abs(after - before).max() > 1e-6  # the epoch trained the last stage
    with (run_dir / "metrics.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    loss, triplet, classification = (float(row[key]) for key in ("loss", "triplet_loss", "classification_loss"))
    assert np.isfinite([loss, triplet, classification]).all() and triplet > 0.0
    np.testing.assert_allclose(loss, classification + triplet, rtol=1e-5)  # train.classification_weight = 1

    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert (metadata["strategy"], str(metadata["margin"])) == (strategy, margin)
    dev_eer = dict(metadata["weight_interpolation_choice"]["dev_eer"])
    assert dev_eer[1.0] <= dev_eer[0.0] + EER_TOLERANCE  # fine-tuned against pretrained, on people never trained on
    assert 0.0 < metadata["threshold"] < 2.0


@pytest.mark.slow
def test_weight_interpolation_saves_the_point_between_pretrained_and_fine_tuned(tmp_path, data_dir):
    """One short epoch, twice from the same seed: with --weight-interpolation 0.5 the saved stage-5 kernel is the
    mean of the pretrained kernel and the kernel that --weight-interpolation 1 (plain fine-tuning) saves."""
    from facetrip.runs.loaded_run import Run
    from facetrip.models.face_resnet import build_face_resnet

    pretrained = build_face_resnet().get_layer("stage5_block1_conv1").get_weights()[0]

    def train_and_read(share: str):
        run_dir = tmp_path / share
        result = run_cli("train", "--epochs", "1", "-P", "4", "-K", "2", "--freeze", "stage4", "--weight-interpolation",
                         share, "--run-dir", run_dir, "--data-dir", data_dir, "--no-evaluate")
        assert result.exit_code == 0, result.output
        assert json.loads((run_dir / "metadata.json").read_text())["weight_interpolation"] == float(share)
        backbone = next(layer for layer in _all_layers(Run.load(run_dir).model) if layer.name == "face_resnet")
        return backbone.get_layer("stage5_block1_conv1").get_weights()[0]

    fine_tuned, halfway = train_and_read("1"), train_and_read("0.5")
    movement = np.abs(fine_tuned - pretrained).max()
    assert movement > 1e-5  # the epoch moved the kernel (by about 1e-4 here)
    np.testing.assert_allclose(halfway, (pretrained + fine_tuned) / 2, rtol=0, atol=movement / 100)
    assert np.abs(halfway - fine_tuned).max() > movement / 4  # and the saved kernel is not the fine-tuned one

    # Below share 1 the run also keeps the fine-tuned end, and interpolate_run.py moves along the line from it.
    from facetrip.runs.fine_tuned_end import FINE_TUNED_WEIGHTS_FILE, load_fine_tuned_weights

    assert not (tmp_path / "1" / FINE_TUNED_WEIGHTS_FILE).exists()
    model = Run.load(tmp_path / "0.5").model
    record = json.loads((tmp_path / "0.5" / "metadata.json").read_text())["fine_tuned_weights"]
    model.set_weights(load_fine_tuned_weights(tmp_path / "0.5", record, model.get_weights()))
    kept = next(layer for layer in _all_layers(model) if layer.name == "face_resnet").get_layer(
        "stage5_block1_conv1").get_weights()[0]
    np.testing.assert_allclose(kept, fine_tuned, rtol=0, atol=movement / 100)

    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("interpolate_run", REPO / "scripts" / "interpolate_run.py")
    interpolate_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(interpolate_run)
    assert interpolate_run.main([str(tmp_path / "0.5"), "1", "-o", str(tmp_path / "moved"), "--data-dir",
                                 str(data_dir)]) == 0
    moved = next(layer for layer in _all_layers(Run.load(tmp_path / "moved").model)
                 if layer.name == "face_resnet").get_layer("stage5_block1_conv1").get_weights()[0]
    np.testing.assert_allclose(moved, kept, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_auto_weight_interpolation_saves_the_share_its_dev_errors_choose(tmp_path, data_dir):
    """The default, --weight-interpolation auto: every share from 0 to 1 is scored on the dev people, the
    rule's share is saved (its stage-5 kernel on the line between pretrained and fine-tuned) and the
    threshold is calibrated as that share requires (dev and training people when the pretrained
    weights are kept)."""
    from facetrip.models.face_resnet import build_face_resnet
    from facetrip.runs.loaded_run import Run
    from facetrip.training.weight_choice import SHARES, smallest_share_near_best

    pretrained = build_face_resnet().get_layer("stage5_block1_conv1").get_weights()[0]
    run_dir = tmp_path / "auto"
    result = run_cli("train", "--epochs", "1", "-P", "4", "-K", "2", "--freeze", "stage4", "--run-dir", run_dir,
                     "--data-dir", data_dir, "--no-evaluate")
    assert result.exit_code == 0, result.output
    metadata = json.loads((run_dir / "metadata.json").read_text())
    choice = metadata["weight_interpolation_choice"]
    dev_eer = [(share, eer) for share, eer in choice["dev_eer"]]
    assert [share for share, _ in dev_eer] == list(SHARES)
    assert all(0.0 <= eer <= 1.0 for _, eer in dev_eer)
    share = metadata["weight_interpolation"]
    assert share == smallest_share_near_best(dev_eer)
    assert f"weight interpolation {share:g} (auto)" in " ".join(result.output.split())
    assert metadata["threshold_source"] == ("dev_and_train" if share == 0 else "dev")

    backbone = next(layer for layer in _all_layers(Run.load(run_dir).model) if layer.name == "face_resnet")
    saved = backbone.get_layer("stage5_block1_conv1").get_weights()[0]
    if share == 0:  # ORL's dev people are told apart by the pretrained network already
        np.testing.assert_array_equal(saved, pretrained)
    else:
        assert np.abs(saved - pretrained).max() > 0
    # Below share 1 the fine-tuned end is kept (even at 0, where model.keras no longer holds any of it).
    assert ("fine_tuned_weights" in metadata) == (share < 1) == (run_dir / "fine_tuned_weights.npz").is_file()
