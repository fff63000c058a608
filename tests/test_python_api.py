"""facetrip from Python: `load_run` (embed, verify, identify, the threshold) and `train`, against the commands."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facetrip
from conftest import REPO, TINY, run_cli
from facetrip.data.orl import orl_faces_root

# The README section whose Python code test_the_readme_section_runs_as_written runs.
README_SECTION = "## A run in your own Python program"


def orl(person: int, photo: int) -> Path:
    return orl_faces_root() / f"s{person}" / f"{photo}.pgm"


@pytest.fixture(scope="module")
def tiny_run(finished_run):
    """The session's tiny run (whole grey images, 8-d embeddings), loaded through the Python API."""
    return facetrip.load_run(finished_run[0])


@pytest.fixture(scope="module")
def chip_run():
    """A run on face chips without training: an untrained small Keras model behind 150 x 150 RGB chips."""
    import keras

    from facetrip.runs.loaded_run import Run

    keras.utils.set_random_seed(0)
    inputs = keras.Input((150, 150, 3))
    pooled = keras.layers.AveragePooling2D(10)(inputs)  # (15, 15, 3)
    model = keras.Model(inputs, keras.layers.Dense(8)(keras.layers.Flatten()(pooled)))
    metadata = {"image_size": [150, 150], "channels": 3, "face_chips": True, "metric": "euclidean", "threshold": 1.0}
    return facetrip.TrainedRun(Run(Path("chip-run"), model, metadata))


def test_importing_facetrip_and_its_api_names_leaves_tensorflow_out():
    code = ("import sys, facetrip\n"
            "facetrip.load_run, facetrip.train, facetrip.TrainedRun, facetrip.Verification, facetrip.Identification\n"
            "assert 'load_run' in dir(facetrip)\n"
            "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'load_runs'"):
        facetrip.load_runs


def the_same_photo_five_ways(photo: Path) -> dict:
    image = Image.open(photo)
    image.load()
    return {"path": photo, "text path": str(photo), "bytes": photo.read_bytes(), "PIL": image,
            "array": np.asarray(image)}  # (112, 92) grey uint8


@pytest.mark.slow
def test_a_photo_gives_one_embedding_as_a_path_bytes_a_pil_image_or_an_array(tiny_run):
    ways = the_same_photo_five_ways(orl(1, 1))
    embeddings = {kind: tiny_run.embed(photo) for kind, photo in ways.items()}
    assert embeddings["path"].shape == (1, 8) and embeddings["path"].dtype == np.float32
    for kind, embedding in embeddings.items():
        np.testing.assert_allclose(embedding, embeddings["path"], atol=1e-5, err_msg=kind)
    both = tiny_run.embed([orl(1, 1), orl(2, 1)])  # (2, 8), in order
    np.testing.assert_allclose(both[0], embeddings["path"][0], atol=1e-5)
    np.testing.assert_allclose(tiny_run.embed([ways["array"], np.asarray(Image.open(orl(2, 1)))]), both, atol=1e-5)
    colours = [Image.open(orl(person, 1)).convert("RGB") for person in (1, 2)]
    stacked = np.stack([np.asarray(colour) for colour in colours])  # (2, 112, 92, 3): two photos
    np.testing.assert_allclose(tiny_run.embed(stacked), tiny_run.embed(colours), atol=1e-5)
    assert tiny_run.embed([]).shape == (0, 8)


@pytest.mark.slow
def test_on_face_chips_every_kind_of_photo_gives_the_chip_of_its_file(chip_run):
    """A photo given as bytes, a PIL image or an (h, w, 3) RGB array is cut into the same face chip as its file."""
    from facetrip.data.face_chips import chip_from_file

    photo = orl(1, 1)
    ways = the_same_photo_five_ways(photo)
    ways["RGB array"] = np.asarray(Image.open(photo).convert("RGB"))  # (112, 92, 3)
    embeddings = chip_run.embed(list(ways.values()))  # (6, 8)
    for kind, embedding in zip(ways, embeddings):
        np.testing.assert_allclose(embedding, embeddings[0], atol=1e-5, err_msg=kind)
    found = chip_run.verify(ways["PIL"], ways["RGB array"])
    assert found.faces_detected == (chip_from_file(photo).faces_detected,) * 2
    assert found.faces_found == (found.faces_detected[0] > 0,) * 2
    assert found.distance == pytest.approx(0.0, abs=1e-5) and found.same_person
    assert chip_run.embed([]).shape == (0, 8)


def verify_json(run_dir, first, second, *options) -> dict:
    result = run_cli("verify", first, second, "--run", run_dir, "--json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_verify_gives_what_the_verify_command_prints(finished_run, tiny_run):
    run_dir, _ = finished_run
    for first, second, options in ((orl(1, 1), orl(1, 2), ()), (orl(1, 1), orl(2, 1), ()),
                                   (orl(3, 1), orl(4, 1), ("--threshold", "0.25"))):
        printed = verify_json(run_dir, first, second, *options)
        given = {"threshold": float(options[1])} if options else {}
        found = tiny_run.verify(first, second, **given)
        assert found.distance == pytest.approx(printed["distance"], rel=1e-5, abs=1e-6)
        assert (found.threshold, found.same_person, found.metric, found.threshold_rule) == (
            printed["threshold"], printed["same_person"], printed["metric"], printed["threshold_rule"])
        assert found.threshold_warning == printed.get("threshold_warning")
        assert found.faces_detected is None and found.faces_found is None  # a run on whole images
        assert tiny_run.verify(first.read_bytes(), Image.open(second)).distance == pytest.approx(found.distance, abs=1e-5)
    assert tiny_run.threshold == json.loads((run_dir / "metadata.json").read_text())["threshold"]


@pytest.fixture(scope="module")
def gallery_index(finished_run, tmp_path_factory):
    """An index of three ORL people (photos 1 to 4 each), written by `facetrip index` with the tiny run."""
    root = tmp_path_factory.mktemp("api-gallery")
    for person in (1, 2, 3):
        (root / "gallery" / f"s{person}").mkdir(parents=True)
        for photo in range(1, 5):
            shutil.copy(orl(person, photo), root / "gallery" / f"s{person}" / f"{photo}.pgm")
    result = run_cli("index", finished_run[0], root / "gallery", "-o", root / "index")
    assert result.exit_code == 0, result.output
    return root / "index"


@pytest.mark.slow
def test_identify_gives_what_the_identify_command_prints(finished_run, tiny_run, gallery_index):
    photos = [orl(1, 5), orl(3, 9), orl(20, 1)]
    for options, keywords in (((), {}), (("--score", "nearest", "-k", "2"), {"score": "nearest", "top_k": 2})):
        result = run_cli("identify", finished_run[0], "--index", gallery_index, "--json", *options, *photos)
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output)
        found = tiny_run.identify(photos, gallery_index, **keywords)
        assert len(found) == len(photos)
        for identification, row in zip(found, printed["photos"]):
            assert (identification.decision, identification.person) == (row["decision"], row["person"])
            assert identification.distance == pytest.approx(row["distance"], rel=1e-5, abs=1e-6)
            assert [(match.person, match.file) for match in identification.matches] == [
                (match["person"], match["file"]) for match in row["matches"]]
            assert [match.distance for match in identification.matches] == pytest.approx(
                [match["distance"] for match in row["matches"]], rel=1e-5, abs=1e-6)
            assert identification.threshold == printed["threshold"] and identification.faces_detected is None
            assert (identification.threshold_rule, identification.decision_rule) == (
                printed["threshold_rule"], printed["decision_rule"]) == (printed["threshold_rule"], "false_alarm")
    per_pair = tiny_run.identify(photos[:1], gallery_index, threshold=0.5)[0]
    assert (per_pair.threshold, per_pair.decision_rule) == (0.5, "pair")
    read_once = tiny_run.load_index(gallery_index)
    again = tiny_run.identify([Image.open(photo) for photo in photos], read_once)
    assert [(one.decision, one.person) for one in again] == [(one.decision, one.person) for one in tiny_run.identify(photos, gallery_index)]


@pytest.mark.slow
def test_bad_photos_and_arguments_raise_value_errors_in_one_line(tiny_run, gallery_index, tmp_path):
    from facetrip.data import ImageReadError
    from facetrip.evaluation.calibration import CalibrationError
    from facetrip.runs import RunError

    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = {
        str(tmp_path / "missing.png"): (ImageReadError, "missing.png"),
        str(tmp_path / "corrupt.jpg"): (ImageReadError, "corrupt.jpg is not a readable image"),
        b"not an image": (ImageReadError, "photo 2 (bytes) is not a readable image"),
        "float": (ImageReadError, "photo 2 is a float64 array of shape (4, 4, 3): give uint8 pixels"),
        "number": (ImageReadError, "photo 2 is a int: give a file path"),
    }
    stand_ins = {"float": np.zeros((4, 4, 3)), "number": 7}
    for photo, (error, message) in bad.items():
        with pytest.raises(error, match=re.escape(message)) as raised:
            tiny_run.embed([orl(1, 1), stand_ins.get(photo, photo)])
        assert "\n" not in str(raised.value)
    assert issubclass(ImageReadError, ValueError)
    with pytest.raises(CalibrationError, match="not both"):
        tiny_run.verify(orl(1, 1), orl(1, 2), threshold=0.5, far=0.01)
    with pytest.raises(ValueError, match="score must be one of"):
        tiny_run.identify(orl(1, 1), gallery_index, score="median")
    with pytest.raises(RunError) as raised:
        facetrip.load_run(tmp_path)  # an empty folder
    assert str(tmp_path) in str(raised.value) and "\n" not in str(raised.value)


def test_train_refuses_a_bad_config_before_loading_anything(tmp_path):
    from facetrip.config import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        facetrip.train({"train": {"epochs": -1}}, tmp_path / "run")
    with pytest.raises(ConfigError, match="not int"):
        facetrip.train(42, tmp_path / "run")
    with pytest.raises(ConfigError, match="does not exist"):
        facetrip.train(tmp_path / "missing.toml", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def readme_python_code() -> str:
    """The Python block of the README's section on facetrip from Python."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(README_SECTION):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_section_runs_as_written(finished_run, data_dir, tmp_path, monkeypatch, capsys):
    """The README's code, unchanged, in a folder laid out as the tour leaves it.

    ``runs/tour`` is a link to the session's tiny run, ``faces/`` holds ORL photos of s2 and
    s10 as PNG, ``people.idx`` is their index written by `facetrip index`, and
    ``configs/scratch.toml`` is tests/tiny.toml reading the session's prepared ORL set.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tour").symlink_to(finished_run[0])
    for person in (2, 10):
        (tmp_path / "faces" / f"s{person}").mkdir(parents=True)
        for photo in range(1, 4):
            Image.open(orl(person, photo)).save(tmp_path / "faces" / f"s{person}" / f"{photo}.png")
    indexed = run_cli("index", "runs/tour", "faces", "-o", "people.idx")
    assert indexed.exit_code == 0, indexed.output
    (tmp_path / "configs").mkdir()
    tiny = Path(TINY).read_text().replace("[data]\n", f"[data]\ndata_dir = {json.dumps(data_dir)}\n", 1)
    (tmp_path / "configs" / "scratch.toml").write_text(tiny)
    code = readme_python_code()
    assert len(code.strip().splitlines()) <= 10, code
    capsys.readouterr()

    names = {}
    exec(compile(code, "README.md", "exec"), names)

    assert names["embeddings"].shape == (2, 8)
    same = names["same"]
    printed = verify_json(Path("runs/tour"), "faces/s2/1.png", "faces/s2/2.png")
    assert same.distance == pytest.approx(printed["distance"], rel=1e-5, abs=1e-6)
    assert same.same_person == printed["same_person"]
    assert names["found"][0].matches[0].person in ("s2", "s10")
    assert (tmp_path / "runs" / "scratch" / "model.keras").is_file()
    assert names["scratch"].path == Path("runs/scratch") and names["scratch"].threshold is not None
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"runs/scratch {names['scratch'].threshold}"
