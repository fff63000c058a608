"""A command writes only into an output folder that is its own (facetrip.runs.output_folder).

Each test builds a folder by hand, checks it as a small command would (one that writes
``result.csv`` and ``sheet_NNN.png``), and compares the whole tree before and after.
"""

import json
import os

import pytest

from facetrip.runs import OUTPUT_RECORD, CommandOutput, OutputFolderError, check_output_file, check_output_folder
from facetrip.runs.output_folder import RECORD_SIZE_LIMIT, read_output_record
from helpers import tree_digest

SHEETS = CommandOutput("facetrip sheets", ("result.csv", "sheet_[0-9][0-9][0-9].png"), option="-o")


def write_output(folder, names, overwrite=False):
    """What a command does: check, claim, write each file, finish; returns the names removed."""
    output_folder = check_output_folder(folder, SHEETS, overwrite)
    output_folder.claim(names)
    for name in names:
        (folder / name).write_text(f"written {name}")
    return output_folder.finish()


def recorded(folder) -> list[str]:
    return json.loads((folder / OUTPUT_RECORD).read_text())["files"]


def test_a_new_folder_is_written_and_its_files_recorded(tmp_path):
    folder = tmp_path / "missing" / "out"
    assert write_output(folder, ["result.csv", "sheet_000.png"]) == []
    assert sorted(path.name for path in folder.iterdir()) == [OUTPUT_RECORD, "result.csv", "sheet_000.png"]
    record = json.loads((folder / OUTPUT_RECORD).read_text())
    assert record["command"] == "facetrip sheets" and record["files"] == ["result.csv", "sheet_000.png"]


def test_an_empty_folder_is_written(tmp_path):
    write_output(tmp_path, ["result.csv"])
    assert recorded(tmp_path) == ["result.csv"]


def test_a_file_where_the_folder_must_go_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputFolderError, match="is a file, not a folder: choose another folder with -o"):
        check_output_folder(tmp_path / "out", SHEETS, overwrite=True)


def test_the_earlier_output_is_replaced_only_with_overwrite_and_only_its_stale_files_go(tmp_path):
    write_output(tmp_path, ["result.csv", "sheet_000.png", "sheet_001.png"])
    before = tree_digest(tmp_path)
    with pytest.raises(OutputFolderError, match="holds the output of an earlier facetrip sheets .* give --overwrite"):
        check_output_folder(tmp_path, SHEETS)
    assert tree_digest(tmp_path) == before
    assert write_output(tmp_path, ["result.csv", "sheet_000.png"], overwrite=True) == ["sheet_001.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [OUTPUT_RECORD, "result.csv", "sheet_000.png"]
    assert recorded(tmp_path) == ["result.csv", "sheet_000.png"]


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    before = tree_digest(tmp_path)
    with pytest.raises(OutputFolderError) as refused:
        check_output_folder(tmp_path, SHEETS)
    assert "did not write (notes.txt, photos)" in str(refused.value) and "--overwrite" in str(refused.value)
    assert tree_digest(tmp_path) == before


def test_with_overwrite_other_files_stay_beside_the_output(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sheet_1.png").write_text("not a name the command writes")
    write_output(tmp_path, ["result.csv"], overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "sheet_1.png").exists()
    assert recorded(tmp_path) == ["result.csv"]
    write_output(tmp_path, ["sheet_000.png"], overwrite=True)  # result.csv, its own, goes; the others stay
    assert sorted(path.name for path in tmp_path.iterdir()) == [OUTPUT_RECORD, "notes.txt", "sheet_000.png", "sheet_1.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_of_a_name_the_command_writes_is_never_replaced(tmp_path, overwrite):
    (tmp_path / "sheet_000.png").write_bytes(b"the user's picture")
    (tmp_path / "notes.txt").write_text("mine")
    before = tree_digest(tmp_path)
    with pytest.raises(OutputFolderError, match="holds sheet_000.png, which facetrip sheets did not write and would replace"):
        check_output_folder(tmp_path, SHEETS, overwrite)
    assert tree_digest(tmp_path) == before


def test_a_colliding_file_beside_the_commands_own_output_is_refused_too(tmp_path):
    write_output(tmp_path, ["result.csv"])
    (tmp_path / "sheet_007.png").write_text("the user's")
    with pytest.raises(OutputFolderError, match="sheet_007.png"):
        check_output_folder(tmp_path, SHEETS, overwrite=True)


def test_a_file_appearing_after_the_check_is_not_replaced(tmp_path):
    checked = check_output_folder(tmp_path, SHEETS)
    (tmp_path / "result.csv").write_text("written meanwhile")
    with pytest.raises(OutputFolderError, match="result.csv"):
        checked.claim(["result.csv"])
    assert (tmp_path / "result.csv").read_text() == "written meanwhile" and not (tmp_path / OUTPUT_RECORD).exists()


def test_a_name_the_command_does_not_declare_is_a_mistake_of_the_command(tmp_path):
    checked = check_output_folder(tmp_path, SHEETS)
    for name in ("notes.txt", "../result.csv", OUTPUT_RECORD):
        with pytest.raises(ValueError, match="does not declare"):
            checked.claim([name])


def test_an_interrupted_output_is_still_the_commands_own(tmp_path):
    """Names are recorded before their files are written: a kill before finish() leaves them listed."""
    write_output(tmp_path, ["result.csv", "sheet_000.png"])
    checked = check_output_folder(tmp_path, SHEETS, overwrite=True)
    checked.claim(["sheet_001.png"])
    (tmp_path / "sheet_001.png").write_text("half")  # killed here
    assert recorded(tmp_path) == ["result.csv", "sheet_000.png", "sheet_001.png"]
    assert write_output(tmp_path, ["result.csv"], overwrite=True) == ["sheet_000.png", "sheet_001.png"]


def test_a_listed_name_that_became_a_folder_or_a_link_is_left_alone(tmp_path):
    write_output(tmp_path, ["result.csv", "sheet_000.png", "sheet_001.png"])
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("elsewhere")
    (tmp_path / "sheet_000.png").unlink()
    (tmp_path / "sheet_000.png").mkdir()
    (tmp_path / "sheet_000.png" / "inside.txt").write_text("kept")
    (tmp_path / "sheet_001.png").unlink()
    (tmp_path / "sheet_001.png").symlink_to(outside)
    assert write_output(tmp_path, ["result.csv"], overwrite=True) == []
    assert (tmp_path / "sheet_000.png" / "inside.txt").read_text() == "kept"
    assert (tmp_path / "sheet_001.png").is_symlink() and outside.read_text() == "elsewhere"
    assert recorded(tmp_path) == ["result.csv", "sheet_000.png", "sheet_001.png"]


def damaged_record(folder, damage: str) -> None:
    """A record that must not be trusted, beside the command's earlier files and a file of the user's."""
    write_output(folder, ["result.csv", "sheet_000.png"])
    (folder / "notes.txt").write_text("mine")
    record = folder / OUTPUT_RECORD
    written = {"format": 1, "command": "facetrip sheets", "files": ["result.csv"]}
    if damage == "not json":
        record.write_bytes(b"\xff{not json")
    elif damage == "fifo":
        record.unlink()
        os.mkfifo(record)
    elif damage == "huge":
        record.write_bytes(b" " * (RECORD_SIZE_LIMIT + 1))
    elif damage == "a folder":
        record.unlink()
        record.mkdir()
    elif damage == "deeply nested":
        record.write_text("[" * 100_000 + "]" * 100_000)
    else:
        files = {"parent": ["../notes.txt"], "path": ["sub/result.csv"], "absolute": ["/etc/passwd"],
                 "dot": ["."], "foreign name": ["notes.txt"], "not text": [7]}
        if damage in files:
            written["files"] = ["result.csv", *files[damage]]
        elif damage == "another command":
            written["command"] = "facetrip embed"
        elif damage == "no list":
            written["files"] = "result.csv"
        elif damage == "another format":
            written["format"] = 2
        record.write_text(json.dumps(written))


DAMAGES = ["not json", "fifo", "huge", "a folder", "deeply nested", "parent", "path", "absolute", "dot", "foreign name",
           "not text", "another command", "no list", "another format"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_makes_the_folder_a_strangers_and_nothing_is_touched(tmp_path, damage):
    folder = tmp_path / "out"
    folder.mkdir()
    damaged_record(folder, damage)
    before, around = tree_digest(folder), tree_digest(tmp_path)
    names, distrust = read_output_record(folder, SHEETS)
    assert names is None and distrust
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match=f"holds {OUTPUT_RECORD}, which facetrip sheets cannot trust"):
            check_output_folder(folder, SHEETS, overwrite)
    assert tree_digest(folder) == before and tree_digest(tmp_path) == around


def test_a_single_file_is_replaced_only_with_overwrite_and_only_when_facetrip_wrote_it(tmp_path):
    def ours(path):
        return path.read_bytes().startswith(b"facetrip")

    target = tmp_path / "triplets.npz"
    check_output_file(target, ours, "a facetrip file", "facetrip mine")  # missing: taken
    target.write_bytes(b"facetrip triplets")
    with pytest.raises(OutputFolderError, match="earlier facetrip mine: give --overwrite"):
        check_output_file(target, ours, "a facetrip file", "facetrip mine")
    check_output_file(target, ours, "a facetrip file", "facetrip mine", overwrite=True)
    target.write_bytes(b"the user's own archive")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="is not a facetrip file: facetrip mine never replaces it"):
            check_output_file(target, ours, "a facetrip file", "facetrip mine", overwrite)
    target.unlink()
    os.mkfifo(target)  # never opened: a FIFO is no file facetrip wrote
    with pytest.raises(OutputFolderError, match="is not a facetrip file"):
        check_output_file(target, ours, "a facetrip file", "facetrip mine", overwrite=True)
    target.unlink()
    target.mkdir()
    with pytest.raises(OutputFolderError, match="is a folder, not a file: choose another file with --output"):
        check_output_file(target, ours, "a facetrip file", "facetrip mine", overwrite=True)
