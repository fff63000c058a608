"""Identification: search and scores on embeddings whose answers are known by construction, the on-disk
index and its refusals, and `facetrip index` / `identify` end to end on ORL photos."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import METRICS, run_cli
from helpers import one_line_error
from facetrip.identification import ann
from facetrip.identification.index import (GalleryIndex, GalleryIndexError, check_same_model, merged, model_fingerprint,
                                           read_index, write_index)
from facetrip.identification.metrics import dir_at_false_alarm, open_set_rates, rank1_accuracy
from facetrip.identification.search import (candidate_distances, distance_matrix, false_alarm_for_pair_far,
                                            identify_embeddings, pair_far_for_false_alarm, person_means, score_gallery,
                                            top_people, top_people_from_candidates)
from facetrip.runs import OUTPUT_RECORD


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def people_around_axes(rng, num_people=6, photos=3, dim=16, spread=0.05):
    """Person p's photos lie near the axis e_p: any probe near e_p is p's by construction."""
    centres = np.eye(dim, dtype=np.float32)[:num_people]
    labels = np.repeat(np.arange(num_people), photos)
    return unit(centres[labels] + spread * rng.standard_normal((len(labels), dim))), labels, centres


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("metric", METRICS)
def test_distance_matrix_is_the_pairwise_distance_of_evaluation(rng, metric):
    from facetrip.evaluation import distances_between

    queries, gallery = rng.standard_normal((5, 7)), rng.standard_normal((9, 7))
    expected = np.array([distances_between(np.repeat(query[None], 9, 0), gallery, metric) for query in queries])
    np.testing.assert_allclose(distance_matrix(queries, gallery, metric), expected, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_top_people_is_the_brute_force_minimum_over_each_persons_photos(rng, metric):
    """s(q, p) = min over p's photos: a double loop over probes and photos gives the expected table."""
    gallery = rng.standard_normal((40, 6)).astype(np.float32)
    labels = rng.permutation(np.arange(40) % 7)  # 7 people, photos in no order
    queries = rng.standard_normal((5, 6)).astype(np.float32)
    expected = np.full((5, 7), np.inf)
    for query in range(5):
        for row in range(40):
            distance = distance_matrix(queries[query:query + 1], gallery[row:row + 1], metric)[0, 0]
            expected[query, labels[row]] = min(expected[query, labels[row]], distance)
    matches = top_people(queries, gallery, labels, metric, k=3)
    np.testing.assert_allclose(matches.distances, np.sort(expected, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_array_equal(matches.people, np.argsort(expected, axis=1, kind="stable")[:, :3])
    assert np.all(labels[matches.rows] == matches.people)  # the photo named is the person's nearest
    found = distance_matrix(queries, gallery, metric)[np.arange(5)[:, None], matches.rows]
    np.testing.assert_allclose(found, matches.distances, atol=1e-5)


def test_probes_near_a_persons_axis_are_that_person_by_either_score(rng):
    gallery, labels, centres = people_around_axes(rng)
    probes = unit(centres + 0.05 * rng.standard_normal(centres.shape))
    for score in ("nearest", "mean"):
        vectors, vector_labels = score_gallery(gallery, labels, 6, score)
        matches = top_people(probes, vectors, vector_labels, "euclidean", k=2)
        np.testing.assert_array_equal(matches.people[:, 0], np.arange(6))


def test_fewer_people_than_k_pads_with_no_person(rng):
    gallery, labels, _ = people_around_axes(rng, num_people=2)
    matches = top_people(gallery[:1], gallery, labels, "cosine", k=4)
    assert list(matches.people[0, 2:]) == [-1, -1] and np.all(np.isinf(matches.distances[0, 2:]))
    assert [entry["person"] for entry in identify_embeddings(gallery[:1], matches, ["a", "b"], 1.0)[0]["matches"]] == ["a", "b"]


def test_mean_score_puts_the_mean_back_on_the_unit_sphere():
    """Two unit photos at +-45 degrees around e_0 average to 0.707 e_0; the mean score uses e_0 itself."""
    photos = unit([[1, 1], [1, -1]])
    means = person_means(photos, np.array([0, 0]), 1)
    np.testing.assert_allclose(means, [[1, 0]], atol=1e-6)
    raw = np.array([[2.0, 0.0], [4.0, 0.0]], np.float32)  # not unit vectors: the plain mean
    np.testing.assert_allclose(person_means(raw, np.array([0, 0]), 1), [[3, 0]])


@pytest.mark.parametrize("metric", METRICS)
def test_candidates_give_the_exact_answer_when_every_photo_is_a_candidate(rng, metric):
    gallery, labels, centres = people_around_axes(rng, spread=0.3)
    probes = unit(rng.standard_normal((4, 16)))
    rows = np.tile(rng.permutation(len(gallery)), (4, 1))
    rows[:, -2:] = -1  # no candidate there
    kept = rows[0, :-2]
    exact = top_people(probes, gallery[kept], labels[kept], metric, k=3)
    approximate = top_people_from_candidates(candidate_distances(probes, gallery, rows, metric), rows, labels, k=3)
    np.testing.assert_allclose(approximate.distances, exact.distances, atol=1e-5)
    np.testing.assert_array_equal(approximate.people, exact.people)


def test_the_best_person_is_known_at_the_threshold_and_unknown_just_above():
    """One gallery photo e_0 and a probe at squared distance exactly 0.25 from it (0.5 e_0)."""
    gallery, probe = np.array([[1.0, 0.0]], np.float32), np.array([[0.5, 0.0]], np.float32)
    matches = top_people(probe, gallery, np.array([0]), "squared", k=1)
    assert matches.distances[0, 0] == 0.25
    at = identify_embeddings(probe, matches, ["alice"], threshold=0.25)[0]
    below = identify_embeddings(probe, matches, ["alice"], threshold=np.nextafter(0.25, 0))[0]
    assert (at["decision"], at["person"]) == ("known", "alice")
    assert (below["decision"], below["person"]) == ("unknown", None)
    assert below["matches"][0]["person"] == "alice"  # the nearest is still listed


def test_open_set_rates_on_hand_made_distances():
    """Known probes: best 0.1 (right), 0.3 (right), 0.2 (wrong), 0.9 (right); strangers 0.25, 0.5, 0.6, 0.7.

    At t = 0.3: DIR = 2 / 4 (0.1 and 0.3 right and accepted; 0.2 accepted but wrong), false alarms 1 / 4.
    A false-alarm rate of at most 0 (no stranger accepted) puts t just below 0.25: DIR = 1 / 4.
    """
    known, correct, strangers = [0.1, 0.3, 0.2, 0.9], [True, True, False, True], [0.25, 0.5, 0.6, 0.7]
    assert open_set_rates(known, correct, strangers, 0.3) == {"threshold": 0.3, "dir": 0.5, "false_alarm": 0.25}
    strict = dir_at_false_alarm(known, correct, strangers, 0.2)  # floor(0.2 * 4) = 0 false alarms allowed
    assert strict["false_alarm"] == 0.0 and strict["dir"] == 0.25 and strict["threshold"] < 0.25
    assert rank1_accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


def test_the_pair_far_for_a_false_alarm_rate_inverts_the_chance_that_any_of_p_people_is_accepted():
    """With P = 100 people and FAR 0.0001 a pair, a stranger passes at least one: 1 - 0.9999^100 = 0.995%."""
    assert false_alarm_for_pair_far(1e-4, 100) == pytest.approx(1 - 0.9999**100)
    assert pair_far_for_false_alarm(false_alarm_for_pair_far(1e-4, 100), 100) == pytest.approx(1e-4)
    assert pair_far_for_false_alarm(0.01, 1) == pytest.approx(0.01)
    assert pair_far_for_false_alarm(0.01, 1670) == pytest.approx(0.01 / 1670, rel=0.01)


@pytest.mark.skipif(not ann.available(), reason="faiss (facetrip[ann]) is not installed")
@pytest.mark.parametrize("metric", METRICS)
def test_ann_finds_the_gallery_photo_a_probe_was_made_from(rng, metric):
    gallery = unit(rng.standard_normal((2000, 32)))
    probes = unit(gallery[:50] + 0.02 * rng.standard_normal((50, 32)))
    ann_index = ann.extend(ann.build(gallery[:1500], metric), gallery[1500:], metric)  # built, then extended
    loaded = ann.load(ann_index)
    assert ann.size(loaded) == 2000
    rows = ann.nearest_rows(loaded, probes, 10, metric)
    assert np.mean(rows[:, 0] == np.arange(50)) >= 0.98


def test_exact_search_is_chosen_below_the_size_and_without_the_library(monkeypatch):
    from facetrip.identification.workflows import search_method

    assert search_method(ann.ANN_MIN_ENTRIES - 1, "auto", saved_ann=True) == "exact"
    assert search_method(10, "exact", saved_ann=True) == "exact"
    monkeypatch.setattr(ann, "available", lambda: False)
    assert search_method(ann.ANN_MIN_ENTRIES, "auto", saved_ann=True) == "exact"  # no faiss: exact, always possible
    with pytest.raises(ann.AnnUnavailable, match="facetrip\\[ann\\]"):
        search_method(10, "ann", saved_ann=False)


@pytest.mark.skipif(not ann.available(), reason="faiss (facetrip[ann]) is not installed")
def test_identify_with_a_saved_ann_index_agrees_with_exact_search(rng):
    from facetrip.identification.photos import Embedded
    from facetrip.identification.workflows import identify_with_index

    gallery, labels, centres = people_around_axes(rng, num_people=8, photos=4, spread=0.1)
    names = np.array([f"p{label}" for label in labels])
    index, _ = merged(None, gallery, names, [f"/g/{i}.jpg" for i in range(len(names))], [1] * len(names),
                      {"metric": "cosine", "model_fingerprint": "f" * 64, "sources": []})
    index.ann = ann.build(index.embeddings, "cosine")
    probes = Embedded(unit(centres + 0.1 * rng.standard_normal(centres.shape)), np.ones(8, np.int64), np.zeros(8, object))
    for score in ("nearest", "mean"):
        exact = identify_with_index(index, probes, threshold=0.5, k=3, score=score, search="exact")
        approximate = identify_with_index(index, probes, threshold=0.5, k=3, score=score, search="ann")
        assert (exact["search"], approximate["search"]) == ("exact", "ann")
        assert [r["person"] for r in approximate["results"]] == [r["person"] for r in exact["results"]] == [f"p{i}" for i in range(8)]
        for mine, theirs in zip(approximate["results"], exact["results"]):
            assert mine["distance"] == pytest.approx(theirs["distance"], abs=1e-5)


# ----------------------------------------------------------------------------- the index on disk


def small_index(rng, manifest_extra=None):
    gallery, labels, _ = people_around_axes(rng, num_people=3, photos=2)
    names = np.array(["ann", "bob", "cy"])[labels]
    manifest = {"kind": "facetrip gallery index", "format": 1, "model_fingerprint": "f" * 64, "metric": "euclidean",
                "sources": [], **(manifest_extra or {})}
    index, repeated = merged(None, gallery, names, [f"/photos/{i}.jpg" for i in range(6)], [1] * 6, manifest)
    assert repeated == 0
    return index


def test_an_index_reads_back_as_written_and_adding_skips_files_already_in_it(tmp_path, rng):
    index = small_index(rng)
    write_index(tmp_path, index)
    again = read_index(tmp_path)
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    assert again.identities.tolist() == index.identities.tolist() and again.people == ["ann", "bob", "cy"]
    new = unit(rng.standard_normal((3, 16)))
    grown, repeated = merged(again, new, ["dee", "ann", "dee"], ["/photos/0.jpg", "/photos/9.jpg", "/photos/9.jpg"],
                             [1, 1, 1], again.manifest)
    assert repeated == 2 and len(grown) == 7 and grown.identities[-1] == "ann"
    write_index(tmp_path, grown)
    assert len(list(tmp_path.glob("gallery-*.npz"))) == 1  # the old data file is gone
    assert json.loads((tmp_path / "manifest.json").read_text())["entries"] == 7


def test_an_index_merged_into_a_memory_mapped_file_is_the_one_merged_in_memory(tmp_path, rng):
    """`facetrip index` merges and writes the gallery a chunk of rows at a time from memory-mapped files."""
    index = small_index(rng)
    new = unit(rng.standard_normal((3, 16))).astype(np.float32)
    np.save(tmp_path / "new.npy", new)
    arguments = (["dee", "ann", "dee"], ["/photos/0.jpg", "/photos/9.jpg", "/photos/8.jpg"], [1, 1, 1], index.manifest)
    in_memory, repeated = merged(index, new, *arguments)
    mapped, repeated_too = merged(index, np.load(tmp_path / "new.npy", mmap_mode="r"), *arguments,
                                  rows_path=tmp_path / "merged.npy")
    assert isinstance(mapped.embeddings, np.memmap) and repeated == repeated_too == 1
    np.testing.assert_array_equal(mapped.embeddings, in_memory.embeddings)
    assert mapped.files.tolist() == in_memory.files.tolist()
    write_index(tmp_path / "index", mapped)
    again = read_index(tmp_path / "index")  # the streamed data file matches its manifest's hash
    np.testing.assert_array_equal(again.embeddings, in_memory.embeddings)
    assert sorted(path.name for path in (tmp_path / "index").iterdir()) == [OUTPUT_RECORD, again.manifest["data_file"],
                                                                            "manifest.json"]


def test_a_name_that_is_not_utf8_survives_the_index(tmp_path, rng):
    index = small_index(rng)
    index.files[0] = "/photos/\udcff.jpg"  # the byte 0xff, as Python reads it from a file name
    write_index(tmp_path, index)
    assert read_index(tmp_path).files[0] == "/photos/\udcff.jpg"


@pytest.mark.parametrize("damage", ["missing folder", "no manifest", "manifest not json", "not an index",
                                    "data file changed", "data file missing", "data file outside"])
def test_a_damaged_index_is_refused_in_one_line(tmp_path, rng, damage):
    folder = tmp_path / "index"
    write_index(folder, small_index(rng))
    manifest = json.loads((folder / "manifest.json").read_text())
    data_file = folder / manifest["data_file"]
    if damage == "missing folder":
        folder = tmp_path / "nowhere"
    elif damage == "no manifest":
        (folder / "manifest.json").unlink()
    elif damage == "manifest not json":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "not an index":
        (folder / "manifest.json").write_text(json.dumps({"format": 1}))
    elif damage == "data file changed":
        data_file.write_bytes(data_file.read_bytes()[:-10])
    elif damage == "data file missing":
        data_file.unlink()
    else:
        (folder / "manifest.json").write_text(json.dumps({**manifest, "data_file": "../../etc/passwd"}))
    with pytest.raises(GalleryIndexError) as error:
        read_index(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arrays", ["pickled names", "wrong shape", "nan"])
def test_a_data_file_with_a_matching_hash_but_foreign_arrays_is_refused(tmp_path, rng, arrays):
    """Someone else's index: the manifest's hash matches, the arrays are not what it describes."""
    import hashlib
    import io

    write_index(tmp_path, small_index(rng))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    embeddings = np.zeros((6, 16), np.float32)
    names = np.array(["a"] * 6, dtype=object) if arrays == "pickled names" else np.array(["a"] * 6)
    if arrays == "wrong shape":
        embeddings = np.zeros((5, 16), np.float32)
    if arrays == "nan":
        embeddings[0, 0] = np.nan
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings, identities=names, files=np.array(["f"] * 6), faces_detected=np.ones(6, np.int64))
    (tmp_path / manifest["data_file"]).write_bytes(buffer.getvalue())
    manifest["data_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryIndexError, match="corrupt|does not hold|has shape|of type"):
        read_index(tmp_path)


def test_an_index_of_another_model_is_refused(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    for run, content in ((first, b"weights one"), (second, b"weights two")):
        run.mkdir()
        (run / "model.keras").write_bytes(content)
    metadata = {"metric": "euclidean", "face_chips": True, "image_size": [150, 150], "channels": 3}
    fingerprint = model_fingerprint(first, metadata)
    shutil.copytree(first, tmp_path / "copy")
    assert model_fingerprint(tmp_path / "copy", metadata) == fingerprint  # a copy of the run is the same model
    assert model_fingerprint(first, {**metadata, "metric": "cosine"}) != fingerprint
    check_same_model({"model_fingerprint": fingerprint}, fingerprint, first, "index")
    with pytest.raises(GalleryIndexError, match="another model"):
        check_same_model({"model_fingerprint": fingerprint, "run": str(first)}, model_fingerprint(second, metadata), second, "index")


# ----------------------------------------------------------------------------- the commands, on ORL photos


def orl(person: int, photo: int) -> Path:
    from facetrip.data.orl import orl_faces_root

    return orl_faces_root() / f"s{person}" / f"{photo}.pgm"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A gallery of 3 ORL people (4 photos each), their 5th photos, a stranger, a faceless and an RGBA photo."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for person in (1, 2, 3):
        (root / "gallery" / f"s{person}").mkdir(parents=True)
        for photo in range(1, 5):
            shutil.copy(orl(person, photo), root / "gallery" / f"s{person}" / f"{photo}.pgm")
    (root / "more" / "s4").mkdir(parents=True)
    shutil.copy(orl(4, 1), root / "more" / "s4" / "1.pgm")
    Image.new("L", (92, 112), 128).save(root / "blank.png")
    Image.open(orl(2, 5)).convert("RGBA").save(root / "s2_rgba.png")
    (root / "empty").mkdir()
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="module")
def index_dir(pretrained_run, photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index") / "people"
    result = run_cli("index", pretrained_run, photos / "gallery", "-o", folder)
    assert result.exit_code == 0, result.output
    assert "12 photos" in result.output and "3 people" in result.output
    return folder


def identified(pretrained_run, index_dir, *photos_and_options):
    result = run_cli("identify", pretrained_run, "--index", index_dir, "--json", *photos_and_options)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_identify_names_known_people_and_calls_a_stranger_unknown(pretrained_run, index_dir, photos):
    found = identified(pretrained_run, index_dir, orl(1, 5), orl(3, 9), photos / "s2_rgba.png", orl(20, 1), photos / "blank.png")
    decisions = [(photo["decision"], photo["person"]) for photo in found["photos"]]
    assert decisions == [("known", "s1"), ("known", "s3"), ("known", "s2"), ("unknown", None), ("no face", None)]
    assert found["search"] == "exact" and found["score"] == "mean" and found["metric"] == "euclidean"
    first = found["photos"][0]
    assert [match["person"] for match in first["matches"]][0] == "s1" and len(first["matches"]) == 3
    assert found["photos"][3]["distance"] > found["threshold"] >= first["distance"]
    by_photo = identified(pretrained_run, index_dir, "--score", "nearest", orl(1, 5))["photos"][0]
    assert by_photo["person"] == "s1" and Path(by_photo["matches"][0]["file"]).parent.name == "s1"
    assert first["matches"][0]["file"] is None  # a mean is no photo
    # by default at most identify.false_alarm (0.01) of strangers are named as one of the 3 people; --threshold
    # and --far decide per pair, as before
    assert (found["decision_rule"], found["false_alarm"], found["people"]) == ("false_alarm", 0.01, 3)
    assert "of strangers taken for one of 3 people" in found["threshold_rule"] and found["expected_false_alarm"] <= 0.011
    assert identified(pretrained_run, index_dir, "--false-alarm", "0.01", orl(1, 5))["threshold"] == found["threshold"]
    run_threshold = json.loads((pretrained_run / "metadata.json").read_text())["threshold"]
    per_pair = identified(pretrained_run, index_dir, "--threshold", str(run_threshold), orl(1, 5))
    assert (per_pair["decision_rule"], per_pair["false_alarm"]) == ("pair", None)
    assert per_pair["threshold"] > found["threshold"] and per_pair["threshold_rule"].startswith("pair rule: given threshold")
    assert per_pair["expected_false_alarm"] > 0.011
    assert identified(pretrained_run, index_dir, "--far", "0.01", orl(1, 5))["decision_rule"] == "pair"
    table = run_cli("identify", pretrained_run, "--index", index_dir, orl(1, 5), orl(20, 1))
    assert table.exit_code == 0 and "s1" in table.output and "unknown" in table.output
    assert "(false-alarm rule, identify.false_alarm 0.01: 1% of strangers taken for one of 3 people" in " ".join(table.output.split())
    table = run_cli("identify", pretrained_run, "--index", index_dir, "--threshold", "0.5", orl(1, 5))
    assert table.exit_code == 0 and "at most 0.5000 (pair rule: given threshold 0.5)" in " ".join(table.output.split())


@pytest.mark.slow
def test_an_index_written_before_the_decision_record_still_identifies(pretrained_run, index_dir, tmp_path):
    """No "open_set" record and no "people" count in the manifest: the rule counts the people of the index's data."""
    old = tmp_path / "old"
    shutil.copytree(index_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for later in ("open_set", "people"):
        del manifest[later]
    (old / "manifest.json").write_text(json.dumps(manifest))
    found = identified(pretrained_run, old, orl(1, 5))
    assert found["people"] == 3 and found["decision_rule"] == "false_alarm"
    assert found["threshold"] == identified(pretrained_run, index_dir, orl(1, 5))["threshold"]
    assert found["photos"][0]["person"] == "s1"


@pytest.mark.slow
def test_a_bad_identify_false_alarm_in_the_runs_config_is_one_line_with_exit_2(pretrained_run, index_dir, photos, tmp_path):
    """A copy of the run is the same model, so the index is its; only its config.toml's [identify] is wrong."""
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    config = (run / "config.toml").read_text()
    assert "[identify]" in config
    (run / "config.toml").write_text(config.replace("[identify]\nfalse_alarm = 0.01", "[identify]\nfalse_alarm = 1.5"))
    for command in (("identify", run, "--index", index_dir, orl(1, 5)),
                    ("index", run, photos / "more", "-o", tmp_path / "new")):
        one_line_error(run_cli(*command), "identify.false_alarm must be a number > 0 and < 1, not 1.5")
    assert not (tmp_path / "new").exists()  # refused before anything was embedded or written
    assert identified(run, index_dir, "--false-alarm", "0.05", orl(1, 5))["false_alarm"] == 0.05  # an option needs no config
    (run / "config.toml").write_text(config.replace("[identify]\nfalse_alarm = 0.01\n", ""))  # a run of before [identify]
    assert identified(run, index_dir, orl(1, 5))["false_alarm"] == 0.01


@pytest.mark.slow
def test_people_added_later_are_identified(pretrained_run, index_dir, photos, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(index_dir, grown)
    result = run_cli("index", pretrained_run, photos / "more", "-o", grown, "--add")
    assert result.exit_code == 0, result.output
    assert "13 photos of 4 people" in result.output
    assert identified(pretrained_run, grown, orl(4, 2))["photos"][0]["person"] == "s4"
    again = run_cli("index", pretrained_run, photos / "more", "-o", grown, "--add")
    assert again.exit_code == 0 and "1 already indexed" in again.output


@pytest.fixture(scope="module")
def other_run(pretrained_run, tmp_path_factory):
    """The pretrained run with its last layer's weights nudged: another model."""
    import keras

    from facetrip.runs import load_embedding_model, save_model_atomically

    run = tmp_path_factory.mktemp("runs") / "nudged"
    shutil.copytree(pretrained_run, run)
    model = load_embedding_model(run)
    layer = [layer for layer in model.layers if layer.weights][-1]
    layer.set_weights([weight + 1e-3 for weight in layer.get_weights()])
    save_model_atomically(model, run / "model.keras")
    keras.backend.clear_session()
    return run


@pytest.mark.slow
def test_bad_input_to_index_and_identify_is_one_line_with_exit_2(pretrained_run, other_run, index_dir, photos, tmp_path):
    one_line_error(run_cli("identify", other_run, "--index", index_dir, orl(1, 5)), "another model")
    one_line_error(run_cli("index", other_run, photos / "more", "-o", index_dir, "--add"), "another model")
    one_line_error(run_cli("identify", pretrained_run, "--index", tmp_path / "none", orl(1, 5)), "does not exist")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(index_dir, corrupt)
    data_file = next(corrupt.glob("gallery-*.npz"))
    data_file.write_bytes(b"garbage")
    one_line_error(run_cli("identify", pretrained_run, "--index", corrupt, orl(1, 5)), "corrupt")
    (corrupt / "manifest.json").write_text("{")
    one_line_error(run_cli("identify", pretrained_run, "--index", corrupt, orl(1, 5)), "corrupt")
    one_line_error(run_cli("identify", pretrained_run, "--index", index_dir, photos / "corrupt.jpg"), "corrupt.jpg")
    one_line_error(run_cli("identify", pretrained_run, "--index", index_dir, "--score", "median", orl(1, 5)), "--score")
    one_line_error(run_cli("index", pretrained_run, photos / "empty", "-o", tmp_path / "new"), "holds no images")
    one_line_error(run_cli("index", pretrained_run, photos / "gallery", "-o", index_dir), "--add", "--overwrite")
    one_line_error(run_cli("index", pretrained_run, photos / "gallery", "-o", tmp_path / "new", "--add"), "no index")
    faceless = tmp_path / "faceless" / "nobody"
    faceless.mkdir(parents=True)
    shutil.copy(photos / "blank.png", faceless / "blank.png")
    one_line_error(run_cli("index", pretrained_run, faceless.parent, "-o", tmp_path / "new"), "No face")
    one_line_error(run_cli("index", tmp_path / "no_run", photos / "gallery", "-o", tmp_path / "new"), "does not exist")


@pytest.mark.slow
def test_an_index_holds_its_manifest(index_dir):
    """What the manifest promises: the run, its model's fingerprint, the metric, the counts."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["entries"] == 12 and manifest["people"] == 3 and manifest["metric"] == "euclidean"
    decided = manifest["open_set"]  # identify's default decision for these 3 people, when the index was written
    assert (decided["decision_rule"], decided["people"], decided["false_alarm"]) == ("false_alarm", 3, 0.01)
    assert decided["pair_far"] == pytest.approx(pair_far_for_false_alarm(0.01, 3)) and decided["threshold"] > 0
    assert len(manifest["model_fingerprint"]) == 64 and manifest["ann"] is None
    index = read_index(index_dir)
    assert isinstance(index, GalleryIndex) and set(index.identities) == {"s1", "s2", "s3"}
    assert all(Path(name).is_absolute() for name in index.files)



def test_the_benchmark_skips_lfw_cleanly_and_measures_a_small_scale(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_identify", Path(__file__).parents[2] / "scripts" / "bench_identify.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = tmp_path / "report.md"
    assert bench.main(["--lfw", str(tmp_path / "no_lfw"), "--run", "x=nowhere", "--parts", "identification,scale",
                       "--sizes", "500", "--queries", "20", "--output", str(report)]) == 0
    assert "LFW not found" in capsys.readouterr().out
    text = report.read_text()
    assert "| 500 | exact (matrix product) |" in text and "## pretrained" not in text
