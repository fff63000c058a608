"""`facetrip verify` and `facetrip embed`: results, and every bad input as a one-line error."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from facetrip.data.orl import orl_faces_root


def flat(output: str) -> str:
    return " ".join(output.split())


def png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds no pixel data (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.fixture
def faces():
    root = orl_faces_root()
    return root / "s1" / "1.pgm", root / "s1" / "2.pgm", root / "s2" / "1.pgm"


def verify_json(run_dir, first, second) -> dict:
    result = run_cli("verify", first, second, "--run", run_dir, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_verify_prints_distance_threshold_and_verdict(finished_run, faces):
    """The distance is the euclidean distance of the run's two embeddings; the verdict compares it with
    the run's threshold, and the table says the same as the JSON."""
    from facetrip.runs.loaded_run import Run

    run_dir, _ = finished_run
    verdict = verify_json(run_dir, faces[0], faces[2])
    metadata = json.loads((run_dir / "metadata.json").read_text())
    run = Run.load(run_dir)
    embeddings = run.embed_images(run.inputs_of_files([faces[0], faces[2]])[0])  # (2, 8)
    assert verdict["distance"] == pytest.approx(float(np.linalg.norm(embeddings[0] - embeddings[1])), rel=1e-5)
    assert verdict["threshold"] == metadata["threshold"]
    assert verdict["same_person"] == (verdict["distance"] <= verdict["threshold"])
    same_identity = verify_json(run_dir, faces[0], faces[1])
    table = run_cli("verify", faces[0], faces[1], "--run", run_dir)
    words = "same person" if same_identity["same_person"] else "different people"
    assert table.exit_code == 0 and "threshold" in table.output and words in flat(table.output), table.output
    assert f"{same_identity['distance']:.4f}" in table.output


@pytest.mark.slow
def test_verify_accepts_colour_rgba_16_bit_and_any_size(finished_run, faces, tmp_path):
    """The same face as grey PGM, RGB JPEG, RGBA PNG and 16-bit PNG at another size gives ~one embedding."""
    run_dir, _ = finished_run
    grey = np.asarray(Image.open(faces[0]))
    Image.fromarray(grey).convert("RGB").resize((184, 224)).save(tmp_path / "colour.jpg", quality=95)
    Image.fromarray(grey).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # mode I;16
    for name in ("colour.jpg", "alpha.png", "deep.png"):
        result = run_cli("verify", faces[0], tmp_path / name, "--run", run_dir, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["distance"] < 0.05, name


@pytest.mark.slow
def test_verify_bad_inputs_are_one_line_errors(finished_run, faces, tmp_path):
    run_dir, _ = finished_run
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a photo")
    jpeg = tmp_path / "whole.jpg"
    Image.open(faces[0]).convert("RGB").save(jpeg)
    (tmp_path / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    png_header_only(tmp_path / "huge.png", 12_000, 12_000)  # above facetrip's limit
    png_header_only(tmp_path / "bomb.png", 50_000, 50_000)  # above PIL's own bomb limit
    (tmp_path / "folder").mkdir()
    cases = {
        tmp_path / "missing.jpg": "no such file",
        tmp_path / "folder": "is a directory",
        tmp_path / "empty.jpg": "is empty",
        tmp_path / "text.jpg": "not a readable image",
        tmp_path / "truncated.jpg": "not a readable image",
        tmp_path / "huge.png": "too large to decode (12000 x 12000 pixels",
        tmp_path / "bomb.png": "too large to decode",
    }
    for path, message in cases.items():
        result = run_cli("verify", faces[0], path, "--run", run_dir)
        assert result.exit_code == 2, (path, result.output)
        assert message in flat(result.output) and "Traceback" not in result.output, (path, result.output)


@pytest.mark.slow
def test_bad_run_directories_are_one_line_errors(finished_run, faces, tmp_path):
    run_dir, _ = finished_run
    result = run_cli("verify", faces[0], faces[1], "--run", tmp_path / "nothing")
    assert result.exit_code == 2 and "does not exist" in flat(result.output)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "metadata.json").write_text((run_dir / "metadata.json").read_text())
    result = run_cli("verify", faces[0], faces[1], "--run", incomplete)
    assert result.exit_code == 2 and "has no model.keras" in flat(result.output)
    future = tmp_path / "future"
    future.mkdir()
    metadata = json.loads((run_dir / "metadata.json").read_text())
    (future / "metadata.json").write_text(json.dumps({**metadata, "format": 99, "facetrip_version": "9.0"}))
    (future / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    result = run_cli("verify", faces[0], faces[1], "--run", future)
    assert result.exit_code == 2 and "format this version cannot read" in flat(result.output)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text((run_dir / "metadata.json").read_text())
    (broken / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_cli("verify", faces[0], faces[1], "--run", broken)
    assert result.exit_code == 2 and "Cannot load" in flat(result.output) and "Traceback" not in result.output


@pytest.mark.slow
def test_embed_files_and_splits_write_projector_files(finished_run, tmp_path, data_dir):
    run_dir, _ = finished_run
    root = orl_faces_root()
    result = run_cli("embed", root / "s3", root / "s4" / "1.pgm", "--run", run_dir, "-o", tmp_path / "files")
    assert result.exit_code == 0, result.output
    embeddings = np.load(tmp_path / "files" / "embeddings.npy")
    rows = (tmp_path / "files" / "metadata.tsv").read_text().splitlines()
    assert embeddings.shape == (11, 8) and rows[0] == "label\tpath" and rows[1].startswith("s3\t") and rows[-1].startswith("s4\t")
    assert "embedding" in (tmp_path / "files" / "projector_config.pbtxt").read_text()
    assert list((tmp_path / "files").glob("embedding.ckpt-*.index"))

    result = run_cli("embed", "--run", run_dir, "--split", "test", "--data-dir", data_dir, "-o", tmp_path / "test")
    assert result.exit_code == 0, result.output
    test_identities = set(json.loads((run_dir / "metadata.json").read_text())["split"]["test"])
    labels = {row.split("\t")[0] for row in (tmp_path / "test" / "metadata.tsv").read_text().splitlines()[1:]}
    assert labels == test_identities and np.load(tmp_path / "test" / "embeddings.npy").shape == (100, 8)


@pytest.mark.slow
def test_a_fresh_process_loads_the_flip_averaged_model(finished_run, faces):
    """`verify` in a new process (nothing imported by training) loads the saved flip-TTA model."""
    import subprocess
    import sys

    run_dir, _ = finished_run
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["flip_tta"] is True and metadata["tta_shift"] == 1  # mirror and shift layers in the saved model
    result = subprocess.run([sys.executable, "-m", "facetrip.cli", "verify", str(faces[0]), str(faces[1]), "--run",
                             str(run_dir), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh, here = json.loads(result.stdout), verify_json(run_dir, faces[0], faces[1])
    assert fresh["distance"] == pytest.approx(here["distance"], rel=1e-5, abs=1e-7)  # the same model, loaded anew
    assert fresh["same_person"] == here["same_person"] and fresh["threshold"] == here["threshold"]


@pytest.mark.slow
def test_verify_names_each_photo_as_given_and_prints_markup_in_names_as_text(finished_run, faces, tmp_path,
                                                                            monkeypatch):
    """Two photos named 1.pgm in different folders stay apart; a name with [bold] in it is text, not rich markup."""
    run_dir, _ = finished_run
    monkeypatch.chdir(faces[0].parents[1])
    result = run_cli("verify", "s1/1.pgm", "s2/1.pgm", "--run", run_dir)
    assert result.exit_code == 0, result.output
    assert "s1/1.pgm" in result.output and "s2/1.pgm" in result.output, result.output
    odd = tmp_path / "[bold]x.pgm"
    odd.write_bytes(faces[1].read_bytes())
    monkeypatch.chdir(tmp_path)
    result = run_cli("verify", odd.name, faces[0], "--run", run_dir)
    assert result.exit_code == 0, result.output
    assert "[bold]x.pgm" in result.output, result.output
