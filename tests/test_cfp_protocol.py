"""CFP's protocol in `facetrip evaluate --pairs SPLIT_FOLDER`: parsing, errors, and an evaluation.

A tiny CFP-shaped tree is written by the tests: four people, three frontal and two profile
photos each, the two photo lists, and the FF and FP splits of ten folds, each fold one
same and one different pair, built so that the expected pairs are known by construction.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from facetrip.evaluation.pairs_file import (
    PairsFileError,
    parse_cfp_fold_file,
    parse_cfp_photo_list,
    read_cfp_split,
    read_pairs,
)
from facetrip.runs import METADATA_FORMAT

REAL_CFP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cfp"
PEOPLE = ["001", "002", "003", "004"]
FRONTAL, PROFILE = 3, 2
FOLDS = 10


def flat(output: str) -> str:
    return " ".join(output.split())


def cfp_pairs(people: list[str]) -> dict[str, list[tuple[str, str, bool, int]]]:
    """The pairs of each split, ``(first path, second path, same, fold)``, fold by fold, same before different.

    Fold k: person k % 4 with themself and with person (k + 1) % 4; FF pairs frontal photos
    a = k % 3 + 1 and b = (k + 1) % 3 + 1, FP frontal a with profile k % 2 + 1.
    """
    splits = {"FF": [], "FP": []}
    for fold in range(FOLDS):
        person, other = people[fold % len(people)], people[(fold + 1) % len(people)]
        a, b, profile = fold % FRONTAL + 1, (fold + 1) % FRONTAL + 1, fold % PROFILE + 1
        splits["FF"] += [(f"{person}/frontal/{a:02d}.jpg", f"{person}/frontal/{b:02d}.jpg", True, fold),
                         (f"{person}/frontal/{a:02d}.jpg", f"{other}/frontal/{b:02d}.jpg", False, fold)]
        splits["FP"] += [(f"{person}/frontal/{a:02d}.jpg", f"{person}/profile/{profile:02d}.jpg", True, fold),
                         (f"{person}/frontal/{a:02d}.jpg", f"{other}/profile/{profile:02d}.jpg", False, fold)]
    return splits


def write_cfp(root: Path, people: list[str] = PEOPLE) -> Path:
    """A CFP-shaped tree at ``root``: ``Data/Images/<person>/{frontal,profile}/NN.jpg`` and ``Protocol``.

    Each person's photos are a fixed random 28 x 24 face plus noise, profiles a mirrored,
    noisier version. The photo lists number photos person by person, as CFP's do.

    Returns:
        ``root``.
    """
    images, protocol = root / "Data" / "Images", root / "Protocol"
    lists = {"frontal": [], "profile": []}
    for seed, person in enumerate(people):
        rng = np.random.default_rng(seed)
        face = rng.uniform(0, 255, (28, 24))
        for kind, count, noise in (("frontal", FRONTAL, 10), ("profile", PROFILE, 30)):
            (images / person / kind).mkdir(parents=True)
            for number in range(1, count + 1):
                pixels = (face if kind == "frontal" else face[:, ::-1]) + rng.normal(0, noise, face.shape)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(
                    images / person / kind / f"{number:02d}.jpg", quality=95)
                lists[kind].append(f"{person}/{kind}/{number:02d}.jpg")
    protocol.mkdir()
    for kind, name in (("frontal", "Pair_list_F.txt"), ("profile", "Pair_list_P.txt")):
        (protocol / name).write_text("".join(f"{n} ../Data/Images/{path}\n" for n, path in enumerate(lists[kind], 1)))
    number_of = {path: n for kind in lists for n, path in enumerate(lists[kind], 1)}
    for split, pairs in cfp_pairs(people).items():
        for fold in range(FOLDS):
            folder = protocol / "Split" / split / f"{fold + 1:02d}"
            folder.mkdir(parents=True)
            for file_name, same in (("same.txt", True), ("diff.txt", False)):
                lines = [f"{number_of[first]},{number_of[second]}\n" for first, second, is_same, in_fold in pairs
                         if in_fold == fold and is_same == same]
                (folder / file_name).write_text("".join(lines))
    return root


@pytest.fixture
def cfp(tmp_path) -> Path:
    return write_cfp(tmp_path / "cfp")


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("split", ["FF", "FP"])
def test_a_split_folder_gives_its_pairs_with_the_split_folders_as_folds(cfp, split):
    pairs = read_pairs(cfp / "Protocol" / "Split" / split)
    expected = cfp_pairs(PEOPLE)[split]
    assert list(zip(pairs.first_paths, pairs.second_paths, pairs.same.tolist(), pairs.folds.tolist())) == expected
    assert pairs.first_names == [first.split("/")[0] for first, *_ in expected]
    assert pairs.second_names == [second.split("/")[0] for _, second, *_ in expected]
    assert pairs.protocol.startswith(f"CFP-{split}, frontal with {'frontal' if split == 'FF' else 'profile'}")
    protocol = (cfp / "Protocol").resolve()
    assert pairs.listed_at["001/frontal/01.jpg"] == f"{protocol / 'Pair_list_F.txt'} line 1"
    # fold 0's different pair: 001's frontal 1 with 002's frontal 2 (listed 3 + 2nd) or with 002's profile 1 (2 + 1st)
    photo, listed = {"FF": ("002/frontal/02.jpg", "Pair_list_F.txt line 5"),
                     "FP": ("002/profile/01.jpg", "Pair_list_P.txt line 3")}[split]
    assert expected[1][1] == photo and pairs.listed_at[photo] == f"{protocol / listed}"


def test_pairs_are_matched_to_the_source_photos_by_path(cfp):
    pairs = read_cfp_split(cfp / "Protocol" / "Split" / "FP")
    file_names = np.array(sorted(str(path.relative_to(cfp / "Data" / "Images").as_posix())
                                 for path in (cfp / "Data" / "Images").rglob("*.jpg")))
    first, second = pairs.photo_indices(file_names, "folder:cfp")
    assert file_names[first].tolist() == pairs.first_paths and file_names[second].tolist() == pairs.second_paths
    with pytest.raises(PairsFileError, match=r"Pair_list_P.txt line 2: 001/profile/02.jpg is not in folder:cfp "
                                             r"\(its photos are named like 001/frontal/01.jpg\)"):
        pairs.photo_indices(file_names[file_names != "001/profile/02.jpg"], "folder:cfp")


def test_an_lfw_pairs_file_is_still_read_as_one(tmp_path):
    (tmp_path / "pairs.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    named = read_pairs(tmp_path / "pairs.txt")
    assert named.first_names == ["Ann", "Ann"] and named.second_numbers.tolist() == [2, 1] and named.folds is None


@pytest.mark.parametrize("text, message", [
    ("1 a/b/c.jpg\n3 a/b/d.jpg\n", "list.txt line 2: expected '2 PATH'"),
    ("1 a/b/c.jpg extra\n", "list.txt line 1: expected '1 PATH'"),
    ("1 b/c.jpg\n", "list.txt line 1: expected a path ending in IDENTITY/KIND/PHOTO"),
    ("1 ../x/../c.jpg\n", "list.txt line 1: expected a path ending in IDENTITY/KIND/PHOTO"),
    ("\n\n", "list.txt lists no photos"),
])
def test_a_photo_list_not_in_the_format_is_refused_naming_the_line(text, message):
    with pytest.raises(PairsFileError, match=message.replace("(", r"\(")):
        parse_cfp_photo_list(text, "list.txt")


def test_a_photo_list_keeps_the_identity_folder_and_the_path_inside_it():
    paths, lines = parse_cfp_photo_list("1 ../Data/Images/001/frontal/01.jpg\r\n\n2 ./x//002/profile/04.jpg", "l")
    assert paths == ["001/frontal/01.jpg", "002/profile/04.jpg"] and lines == [1, 3]


@pytest.mark.parametrize("text, message", [
    ("1;2\n", "same.txt line 1: expected 'i,j'"),
    ("1,2\n1\n", "same.txt line 2: expected 'i,j'"),
    ("1,2,3\n", "same.txt line 1: expected 'i,j'"),
    ("-1,2\n", "same.txt line 1: expected 'i,j'"),
    ("0,2\n", "same.txt line 1: photo number 0 is out of range: the first list numbers 1 to 5"),
    ("1,5\n2,6\n", "same.txt line 2: photo number 6 is out of range: the second list numbers 1 to 5"),
    ("1," + "9" * 5000 + "\n", "same.txt line 1: photo number 9999.* is out of range"),
])
def test_a_fold_file_not_in_the_format_is_refused_naming_the_line(text, message):
    with pytest.raises(PairsFileError, match=message):
        parse_cfp_fold_file(text, 5, 5, "same.txt")


def test_a_fold_file_gives_zero_based_indices_and_lines():
    indices, lines = parse_cfp_fold_file("5,1\n\n 2 , 3 \r\n", 5, 5, "f")
    assert indices.tolist() == [[4, 0], [1, 2]] and lines.tolist() == [1, 3]


# ----------------------------------------------------------------------------- the command's errors


@pytest.fixture
def stand_in_run(tmp_path) -> Path:
    """A run directory without a model: its metadata and split are read before the pairs, the model after."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metadata = {
        "format": METADATA_FORMAT, "source": "orl_faces", "image_size": [16, 14], "channels": 1, "metric": "euclidean",
        "split": {"train": ["s1"], "dev": ["s2"], "test": ["s3"]}, "threshold": 1.0, "threshold_source": "dev",
    }
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    return run_dir


def test_protocol_errors_are_one_line_naming_the_file_and_line(cfp, stand_in_run):
    split = cfp / "Protocol" / "Split" / "FP"
    protocol = (cfp / "Protocol").resolve()

    def refused(folder, *expected):
        result = run_cli("evaluate", stand_in_run, "--data", f"folder:{cfp / 'Data' / 'Images'}", "--pairs", folder)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3, result.output
        for text in expected:
            assert text in flat(result.output), (text, result.output)

    refused(cfp / "Protocol" / "Split", "is a folder but not a split of CFP's protocol", f"choose {cfp}/Protocol/Split/FF or")
    (split / "03" / "same.txt").write_text("1,2\n1:2\n")
    refused(split, f"{split}/03/same.txt line 2: expected 'i,j'")
    (split / "03" / "same.txt").write_text("1,2\n1,9\n")
    refused(split, f"{split}/03/same.txt line 2: photo number 9 is out of range: the second list numbers 1 to 8")
    (split / "03" / "same.txt").write_text("1,5\n")  # 001's frontal 1 with 003's profile 1
    refused(split, f"{split}/03/same.txt line 1: same.txt pairs 001/frontal/01.jpg with 003/profile/01.jpg, two people")
    shutil.rmtree(split / "10")
    refused(split, f"{split} lacks the fold 10", "01 .. 10, each with same.txt and diff.txt")
    (protocol / "Pair_list_P.txt").unlink()
    assert len(read_pairs(cfp / "Protocol" / "Split" / "FF")) == 2 * FOLDS  # FF needs no profile list
    shutil.copytree(cfp / "Protocol" / "Split" / "FF", split, dirs_exist_ok=True)
    refused(split, f"Cannot read CFP's photo list: {protocol / 'Pair_list_P.txt'}: no such file")
    (protocol / "Pair_list_F.txt").write_text("1 ../Data/Images/001/frontal/01.jpg\n2 oops\n")
    refused(split, f"{protocol / 'Pair_list_F.txt'} line 2: expected a path ending in IDENTITY/KIND/PHOTO")


# ----------------------------------------------------------------------------- an evaluation


@pytest.mark.slow
def test_evaluate_on_a_cfp_split_folder(finished_run, cfp, tmp_path, data_dir):
    """The session's tiny ORL run scored on the synthetic CFP's FP pairs: 10 folds of one same and one different pair."""
    run_dir = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    source = f"folder:{cfp / 'Data' / 'Images'}"
    split = cfp / "Protocol" / "Split" / "FP"
    result = run_cli("evaluate", run_dir, "--data", source, "--pairs", split, "--data-dir", data_dir, "--json",
                     "--no-baselines")
    assert result.exit_code == 0, result.output
    report, _ = json.JSONDecoder().raw_decode(result.output)  # the JSON document, whatever is printed after it
    assert (report["pairs"]["same"], report["pairs"]["different"], report["pairs"]["identities"]) == (10, 10, 4)
    assert report["pairs"]["how"] == f"20 pairs of CFP-FP, frontal with profile ({split}) in 10 folds"
    used_photos = {photo for pair in cfp_pairs(PEOPLE)["FP"] for photo in pair[:2]}
    assert report["pairs"]["file"] == str(split) and report["pairs"]["images"] == len(used_photos)
    accuracy = report["model"]["accuracy"]
    assert accuracy["folds"] == "pairs file" and accuracy["num_folds"] == 10 and 0 <= accuracy["mean"] <= 1
    assert 0 <= report["model"]["auc"] <= 1

    (cfp / "Data" / "Images" / "002" / "profile" / "01.jpg").unlink()
    missing = run_cli("evaluate", run_dir, "--data", source, "--pairs", split, "--data-dir", data_dir)
    assert missing.exit_code == 2 and "Traceback" not in missing.output, missing.output
    assert f"Pair_list_P.txt line 3: 002/profile/01.jpg is not in {source}" in flat(missing.output), missing.output

    trained_on = json.loads((run_dir / "split.json").read_text())["train"][0]  # CFP's people are its folders' names
    people = write_cfp(tmp_path / "cfp_trained", [trained_on, *PEOPLE[1:]])
    refused = run_cli("evaluate", run_dir, "--data", f"folder:{people / 'Data' / 'Images'}", "--pairs",
                      people / "Protocol" / "Split" / "FF", "--data-dir", data_dir)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert f"1 identities of {people / 'Protocol' / 'Split' / 'FF'} are training identities of" in flat(refused.output)
    assert f"({trained_on})" in flat(refused.output)


# ----------------------------------------------------------------------------- CFP itself


@pytest.mark.skipif(not (REAL_CFP / "Protocol").is_dir(), reason=f"CFP is not at {REAL_CFP} (see shared/data/README.md)")
@pytest.mark.parametrize("split", ["FF", "FP"])
def test_cfps_own_protocol_is_read_as_published(split):
    """7,000 pairs: 10 folds of 350 same and 350 different; every photo is in Data/Images; folds share no one."""
    pairs = read_pairs(REAL_CFP / "Protocol" / "Split" / split)
    assert len(pairs) == 7000 and pairs.same.sum() == 3500
    for fold in range(10):
        in_fold = pairs.folds == fold
        assert pairs.same[in_fold].sum() == 350 and (~pairs.same[in_fold]).sum() == 350
    assert all((REAL_CFP / "Data" / "Images" / path).is_file() for path in set(pairs.first_paths + pairs.second_paths))
    assert {path.split("/")[1] for path in pairs.second_paths} == {"frontal" if split == "FF" else "profile"}
    people_of_fold = [set(np.asarray(pairs.first_names + pairs.second_names)[np.tile(pairs.folds == fold, 2)])
                      for fold in range(10)]
    assert sum(map(len, people_of_fold)) == len(set().union(*people_of_fold)) == 500
