"""Every command writes only into an output folder that is its own: cluster, index, embed, export, data --export, mine.

A folder holding the user's files is refused in one line (exit 2) and left byte for byte as
it was, ``--overwrite`` or not, when a file there has a name the command writes; a new or
empty folder is written; a command's own earlier output is replaced with ``--overwrite``
(``data --export``: never), which removes only the command's own stale files.
"""

import json
import os
import shutil

import pytest

from conftest import run_cli
from facetrip.runs import OUTPUT_RECORD
from helpers import one_line_error, tree_digest

# The user's files in a folder given to a command: each folder command writes one of these names.
USERS_FILES = {"notes.txt": b"my notes", "cluster_000.png": b"my picture", "clusters.csv": b"photo,who\n",
               "gallery-0123.npz": b"my archive", "manifest.json": b"{}", "embeddings.npy": b"my array",
               "export.json": b"{\"mine\": true}"}
FOLDER_COMMANDS = ["cluster", "index", "embed", "export"]
COMMANDS = [*FOLDER_COMMANDS, "data", "mine"]


def orl(identity: int, image: int):
    from facetrip.data.orl import orl_faces_root

    return orl_faces_root() / f"s{identity}" / f"{image}.pgm"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """PEOPLE/<person>/<photo>: three ORL people, three photos each (a gallery, and photos to cluster or embed)."""
    root = tmp_path_factory.mktemp("people")
    for person in (1, 2, 3):
        (root / f"s{person}").mkdir()
        for photo in (1, 2, 3):
            shutil.copy(orl(person, photo), root / f"s{person}" / f"{photo}.pgm")
    return root


def arguments(command: str, run_dir, photos, data_dir, out) -> list:
    """The command line of ``command`` writing to ``out`` (mine: the triplets file ``out``)."""
    return {
        "cluster": ["cluster", run_dir, photos, "-o", out],
        "index": ["index", run_dir, photos, "-o", out],
        "embed": ["embed", photos, "--run", run_dir, "-o", out],
        "export": ["export", run_dir, "-o", out],
        "data": ["data", "orl_faces", "--data-dir", data_dir, "--no-face-chips", "--export", out],
        "mine": ["mine", run_dir, "--data-dir", data_dir, "-o", out],
    }[command]


def users_folder(folder):
    """A folder of the user's: files whose names the commands write, a note, a subfolder."""
    folder.mkdir(parents=True)
    for name, content in USERS_FILES.items():
        (folder / name).write_bytes(content)
    (folder / "album").mkdir()
    (folder / "album" / "1.txt").write_text("kept")
    return folder


def recorded(folder) -> list[str]:
    record = json.loads((folder / OUTPUT_RECORD).read_text())
    return record["files"]


@pytest.mark.slow
# data --export has no --overwrite: an export is the user's copy to edit, never replaced.
@pytest.mark.parametrize("command, overwrite", [(command, overwrite) for command in COMMANDS for overwrite in (False, True)
                                                if not (command == "data" and overwrite)])
def test_a_folder_of_the_users_files_is_refused_and_left_byte_for_byte(command, overwrite, finished_run, photos, data_dir,
                                                                         tmp_path):
    folder = users_folder(tmp_path / "mine")
    target = folder / "triplets.npz" if command == "mine" else folder
    if command == "mine":
        target.write_bytes(b"PK\x03\x04 the user's own archive")
    before = tree_digest(tmp_path)
    result = run_cli(*arguments(command, finished_run[0], photos, data_dir, target), *(["--overwrite"] if overwrite else []))
    why = {"data": "not an empty folder", "mine": "not a facetrip triplets file"}.get(command, "did not write and would replace")
    one_line_error(result, str(target), why)
    assert tree_digest(tmp_path) == before


def copy_run(run_dir, target):
    """A copy of the tiny run, without what commands write into it."""
    return shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("embeddings*", "triplets-*", "export-*"))


def names_in(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.slow
def test_cluster_writes_an_empty_folder_and_replaces_only_its_own_sheets_with_overwrite(finished_run, photos, tmp_path):
    out = tmp_path / "clusters"
    out.mkdir()
    first = run_cli("cluster", finished_run[0], photos, "-o", out, "--threshold", "100")  # one cluster of every photo
    assert first.exit_code == 0, first.output
    assert (out / "cluster_000.png").is_file() and recorded(out) == ["cluster_000.png", "clusters.csv", "clusters.html",
                                                                      "clusters.json", "unclustered.csv"]
    (out / "notes.txt").write_bytes(b"the user's")
    (out / "cluster_1.png").write_bytes(b"not a name cluster writes")
    before = tree_digest(tmp_path)
    one_line_error(run_cli("cluster", finished_run[0], photos, "-o", out), str(out), "earlier facetrip cluster",
                   "--overwrite", "notes.txt")
    assert tree_digest(tmp_path) == before
    again = run_cli("cluster", finished_run[0], photos, "-o", out, "--threshold", "0.000001", "--overwrite")  # no cluster
    assert again.exit_code == 0, again.output
    assert names_in(out) == sorted([OUTPUT_RECORD, "cluster_1.png", "clusters.csv", "clusters.html", "clusters.json",
                                    "notes.txt", "unclustered.csv"])
    assert (out / "notes.txt").read_bytes() == b"the user's" and (out / "cluster_1.png").read_bytes() == b"not a name cluster writes"


@pytest.mark.slow
def test_index_replaces_only_its_own_data_file_with_overwrite_and_extends_its_own_index_with_add(finished_run, photos,
                                                                                                  tmp_path):
    out = tmp_path / "missing" / "index"
    assert run_cli("index", finished_run[0], photos, "-o", out).exit_code == 0
    earlier = set(out.glob("gallery-*.npz"))
    (out / "gallery-notes.txt").write_bytes(b"the user's")
    before = tree_digest(tmp_path)
    one_line_error(run_cli("index", finished_run[0], photos, "-o", out), str(out), "--add", "--overwrite")
    assert tree_digest(tmp_path) == before
    smaller = tmp_path / "smaller"
    shutil.copytree(photos / "s1", smaller / "s1")
    replaced = run_cli("index", finished_run[0], smaller, "-o", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    after = set(out.glob("gallery-*.npz"))
    assert len(after) == 1 and not after & earlier and (out / "gallery-notes.txt").read_bytes() == b"the user's"
    assert json.loads((out / "manifest.json").read_text())["entries"] == 3
    added = run_cli("index", finished_run[0], photos, "-o", out, "--add")
    assert added.exit_code == 0, added.output
    assert json.loads((out / "manifest.json").read_text())["entries"] == 12 and len(list(out.glob("gallery-*.npz"))) == 1
    assert names_in(out) == sorted([OUTPUT_RECORD, "gallery-notes.txt", "manifest.json", *(p.name for p in out.glob("gallery-*.npz"))])


@pytest.mark.slow
def test_an_index_written_without_a_record_is_recognised_by_its_manifest_and_hashes(finished_run, photos, tmp_path):
    """An index an earlier facetrip wrote (no record) takes --add; a forged manifest naming a user's file does not."""
    out = tmp_path / "index"
    smaller = tmp_path / "smaller"
    shutil.copytree(photos / "s1", smaller / "s1")
    assert run_cli("index", finished_run[0], smaller, "-o", out).exit_code == 0
    (out / OUTPUT_RECORD).unlink()
    added = run_cli("index", finished_run[0], photos, "-o", out, "--add")
    assert added.exit_code == 0, added.output
    assert json.loads((out / "manifest.json").read_text())["entries"] == 12 and len(list(out.glob("gallery-*.npz"))) == 1

    (out / OUTPUT_RECORD).unlink()
    (data_file,) = out.glob("gallery-*.npz")
    data_file.write_bytes(b"the user's own file, not the data the manifest's hash names")
    before = tree_digest(tmp_path)
    one_line_error(run_cli("index", finished_run[0], photos, "-o", out, "--overwrite"), str(out), data_file.name)
    assert tree_digest(tmp_path) == before


@pytest.mark.slow
def test_embed_into_the_runs_default_folder_replaces_only_its_own_files_with_overwrite(finished_run, photos, tmp_path,
                                                                                       monkeypatch):
    from facetrip import embedding

    run_dir = copy_run(finished_run[0], tmp_path / "run")
    assert run_cli("embed", photos, "--run", run_dir).exit_code == 0
    out = run_dir / "embeddings"
    assert (out / "checkpoint").is_file() and list(out.glob("embedding.ckpt-*"))
    (out / "notes.txt").write_bytes(b"the user's")
    before = tree_digest(tmp_path)
    one_line_error(run_cli("embed", photos, "--run", run_dir), str(out), "earlier facetrip embed", "--overwrite")
    assert tree_digest(tmp_path) == before
    monkeypatch.setattr(embedding, "PROJECTOR_CHECKPOINT_MAX_ROWS", 0)  # tensors.tsv only: the checkpoint is stale
    again = run_cli("embed", photos, "--run", run_dir, "--overwrite")
    assert again.exit_code == 0, again.output
    assert names_in(out) == sorted([OUTPUT_RECORD, "embeddings.npy", "metadata.tsv", "notes.txt", "projector_config.pbtxt",
                                    "tensors.tsv"])


@pytest.mark.slow
def test_an_export_in_another_format_replaces_only_the_earlier_exports_files(finished_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    first = run_cli("export", finished_run[0], "--format", "tflite", "-o", out)
    assert first.exit_code == 0, first.output
    (out / "notes.txt").write_bytes(b"the user's")
    before = tree_digest(tmp_path)
    one_line_error(run_cli("export", finished_run[0], "-o", out), str(out), "earlier facetrip export", "--overwrite")
    assert tree_digest(tmp_path) == before
    again = run_cli("export", finished_run[0], "--format", "savedmodel", "-o", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert names_in(out) == [OUTPUT_RECORD, "export.json", "notes.txt", "savedmodel"]  # model.tflite was its own
    assert json.loads((out / "export.json").read_text())["format"] == "savedmodel"


@pytest.mark.slow
def test_mine_replaces_only_a_triplets_file_it_wrote_and_only_with_overwrite(finished_run, data_dir, tmp_path):
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    target = run_dir / "triplets-train.npz"
    assert run_cli("mine", run_dir, "--data-dir", data_dir).exit_code == 0
    before = tree_digest(tmp_path)
    one_line_error(run_cli("mine", run_dir, "--data-dir", data_dir), str(target), "earlier facetrip mine", "--overwrite")
    assert tree_digest(tmp_path) == before
    again = run_cli("mine", run_dir, "--data-dir", data_dir, "--overwrite", "--seed", "1")
    assert again.exit_code == 0, again.output
    target.write_bytes(target.read_bytes()[:100])  # cut short: no longer a triplets file facetrip reads
    before = tree_digest(tmp_path)
    one_line_error(run_cli("mine", run_dir, "--data-dir", data_dir, "--overwrite"), str(target),
                   "not a facetrip triplets file")
    assert tree_digest(tmp_path) == before


DAMAGED_RECORDS = {
    "not json": b"{\"format\": 1, \"command\": ",
    "parent": json.dumps({"format": 1, "command": "facetrip cluster", "files": ["clusters.csv", "../outside.txt"]}).encode(),
    "fifo": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGED_RECORDS)
@pytest.mark.parametrize("command", ["cluster", "index"])
def test_a_damaged_record_is_refused_and_nothing_inside_or_outside_is_deleted(command, damage, finished_run, photos,
                                                                              data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside.txt").write_text("outside the folder")
    for name in ("clusters.csv", "cluster_000.png", "manifest.json", "gallery-0123.npz"):
        (out / name).write_text("written earlier")
    if DAMAGED_RECORDS[damage] is None:
        os.mkfifo(out / OUTPUT_RECORD)
    else:
        (out / OUTPUT_RECORD).write_bytes(DAMAGED_RECORDS[damage])
    before = tree_digest(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        one_line_error(run_cli(*arguments(command, finished_run[0], photos, data_dir, out), *overwrite),
                       str(out), OUTPUT_RECORD, "cannot trust")
    assert tree_digest(tmp_path) == before


@pytest.mark.slow
def test_identities_that_would_share_a_folder_are_refused_naming_both(data_dir, tmp_path):
    """``bob`` and ``bob `` are two people of a folder source; exported, both would be the folder ``bob``.

    The source is read (and, the first time, prepared, which logs a line) before its
    identities are known; the refusal is the one error line, and nothing is exported.
    """
    source = tmp_path / "people"
    for number, person in enumerate(("bob", "bob ", "ann", "cy")):
        (source / person).mkdir(parents=True)
        for photo in (1, 2):
            shutil.copy(orl(number + 1, photo), source / person / f"{photo}.pgm")
    before = tree_digest(tmp_path)
    result = run_cli("data", f"folder:{source}", "--data-dir", data_dir, "--no-face-chips", "--test", "1", "--dev", "1",
                     "-P", "2", "-K", "2", "--export", tmp_path / "export")
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(errors) == 1, result.output
    assert errors[0].startswith("Error: ") and "'bob'" in errors[0] and "'bob '" in errors[0], errors[0]
    assert str(tmp_path / "export" / "bob") in " ".join(result.stderr.split())
    assert tree_digest(tmp_path) == before
