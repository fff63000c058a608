"""`facetrip data SOURCE --export DIR`: a data set written out as DIR/<identity>/<photo>."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from facetrip.cli import app
from facetrip.data import DataError
from facetrip.data.folder_export import export_faces, extension_of
from facetrip.data.sources import FaceImages

PNG = b"\x89PNG\r\n\x1a\n" + b"png payload"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg payload"


def _faces(encoded, labels, names, file_names):
    return FaceImages(np.array(encoded, dtype=object), np.array(labels), names, np.array(file_names), 3, "test")


def _pixel_digests(faces) -> list[str]:
    import io

    from PIL import Image

    return sorted(hashlib.sha256(np.asarray(Image.open(io.BytesIO(bytes(e))).convert("L")).tobytes()).hexdigest()
                  for e in faces.encoded)


def test_export_writes_each_photo_under_its_identity_with_the_extension_of_its_format(tmp_path):
    faces = _faces([PNG, JPEG, PNG], [0, 0, 1], ["ann", "bob"], ["ann/1.pgm", "ann/2.jpeg", "bob/1.pgm"])
    assert export_faces(faces, tmp_path / "out") == 3
    assert (tmp_path / "out/ann/1.png").read_bytes() == PNG
    assert (tmp_path / "out/ann/2.jpg").read_bytes() == JPEG
    assert (tmp_path / "out/bob/1.png").read_bytes() == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_same_stems_and_hostile_names_stay_apart_and_inside_the_folder(tmp_path):
    faces = _faces([PNG, PNG, PNG], [0, 0, 1], ["a/../b", ".hidden"], ["x/1.png", "y/1.pgm", "z/..png"])
    export_faces(faces, tmp_path / "out")
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["_hidden/_.png", "a_.._b/1-2.png", "a_.._b/1.png"]


def test_a_folder_with_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        export_faces(_faces([PNG], [0], ["a"], ["a/1.png"]), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_unknown_format_is_refused_and_nothing_is_left_behind(tmp_path):
    with pytest.raises(DataError, match="unknown format"):
        export_faces(_faces([PNG, b"%!PS-Adobe"], [0, 0], ["a"], ["a/1.png", "a/2.eps"]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    assert extension_of(b"GIF89a...") == ".gif"


def test_the_exported_orl_faces_read_back_as_the_same_folder_source(tmp_path):
    """ORL exported and read as folder:DIR gives the same 40 people and the same photos."""
    from facetrip.data import load_faces

    result = CliRunner().invoke(app, ["data", "orl_faces", "--data-dir", str(tmp_path / "tfds"), "--no-face-chips",
                                      "--export", str(tmp_path / "faces")])
    assert result.exit_code == 0, result.output
    assert "400 photos" in result.stdout
    orl = load_faces("orl_faces", str(tmp_path / "tfds"))
    folder = load_faces(f"folder:{tmp_path / 'faces'}", str(tmp_path / "tfds"))
    assert sorted(folder.identity_names) == sorted(orl.identity_names)
    # The same pixels (the folder source may store grey photos as RGB).
    assert _pixel_digests(folder) == _pixel_digests(orl)
    again = CliRunner().invoke(app, ["data", "orl_faces", "--data-dir", str(tmp_path / "tfds"), "--no-face-chips",
                                     "--export", str(tmp_path / "faces")])
    assert again.exit_code == 2 and "not an empty folder" in again.output


@pytest.mark.parametrize("names, shared", [
    (["bob", "ann", "bob "], "both be written to"),  # spaces at the ends are stripped
    (["a/b", "a_b"], "both be written to"),  # a separator becomes _
    ([".x", "_x"], "both be written to"),  # a leading dot becomes _
    (["Bob", "bob"], "one folder on a disk that ignores case"),
    (["caf\u00e9", "cafe\u0301"], "one folder on a disk that ignores case"),  # one name, two Unicode forms
])
def test_identities_sharing_a_folder_are_refused_naming_both_before_anything_is_written(tmp_path, names, shared):
    faces = _faces([PNG] * len(names), list(range(len(names))), names, [f"{i}.png" for i in range(len(names))])
    with pytest.raises(DataError) as refused:
        export_faces(faces, tmp_path / "out")
    message = str(refused.value)
    assert repr(names[-1]) in message and shared in message and "\n" not in message
    assert any(repr(name) in message for name in names[:-1])
    assert list(tmp_path.iterdir()) == []


def test_photos_whose_names_differ_only_in_case_stay_apart(tmp_path):
    faces = _faces([PNG, PNG], [0, 0], ["ann"], ["ann/Smile.png", "ann/smile.pgm"])
    export_faces(faces, tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out" / "ann").iterdir()) == ["Smile.png", "smile-2.png"]
