"""Verification metrics, pair selection, LFW pairs files, baselines and `facetrip evaluate`.

The metric tests use pair sets small enough to work out by hand (the derivation is in
each docstring) and explicit-loop references; the command tests use the session's
finished tiny run (``finished_run``), copied before anything in it is changed.
"""

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from facetrip.data import FaceImages
from facetrip.evaluation import (
    PairsFileError,
    best_threshold,
    error_breakdown,
    k_fold_accuracy,
    parse_lfw_pairs,
    roc,
    stratified_folds,
    verification_metrics,
    verification_pairs,
    verification_summary,
)
from facetrip.evaluation.baselines import fit_baselines, fit_eigenfaces, fit_fisherfaces, fit_raw_pixels
from facetrip.evaluation.report import EvaluationError, image_index_by_name_and_number, pairs_from_file, run_split


def flat(output: str) -> str:
    return " ".join(output.split())


# ----------------------------------------------------------------------------- metrics


def test_perfectly_separable_pairs_give_auc_1_and_eer_0():
    """Every same pair closer than every different pair: one threshold makes no mistake."""
    distances = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    same = np.array([True] * 3 + [False] * 9)
    metrics = verification_metrics(distances, same, num_folds=3)
    assert metrics["auc"] == 1.0 and metrics["eer"] == 0.0
    assert 0.3 <= metrics["eer_threshold"] < 0.9
    assert metrics["tar_at_far_10pct"] == metrics["tar_at_far_1pct"] == metrics["tar_at_far_0.1pct"] == 1.0
    assert metrics["accuracy"]["mean"] == 1.0 and metrics["accuracy"]["std"] == 0.0
    assert (metrics["same_pairs"], metrics["different_pairs"]) == (3, 9)


def test_error_breakdown_by_hand():
    """Threshold 0.5. Same pairs: a (0.2, 0.7 -> 1 of 2 rejected), b (0.9 -> 1 of 1), c (0.1 -> none).
    Different pairs: a/b (0.4 accepted, 0.8 not -> 1 of 2), c/a written as (c, a) (0.3 -> 1 of 1),
    b/c (0.6 -> none). c has no false reject and b/c no false accept, so neither is listed."""
    distances = np.array([0.2, 0.7, 0.9, 0.1, 0.4, 0.8, 0.3, 0.6])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    first = ["a", "a", "b", "c", "a", "b", "c", "b"]
    second = ["a", "a", "b", "c", "b", "a", "a", "c"]
    errors = error_breakdown(distances, same, first, second, threshold=0.5)
    assert errors["false_rejects"] == [
        {"identity": "b", "rate": 1.0, "errors": 1, "pairs": 1},
        {"identity": "a", "rate": 0.5, "errors": 1, "pairs": 2},
    ]
    assert errors["false_accepts"] == [
        {"identities": ["a", "c"], "rate": 1.0, "errors": 1, "pairs": 1},
        {"identities": ["a", "b"], "rate": 0.5, "errors": 1, "pairs": 2},
    ]
    # a distance equal to the threshold is accepted, as everywhere else
    assert error_breakdown(distances, same, first, second, threshold=0.7)["false_rejects"][0]["identity"] == "b"
    assert error_breakdown(distances, same, first, second, threshold=0.5, top=1)["false_accepts"] == [
        {"identities": ["a", "c"], "rate": 1.0, "errors": 1, "pairs": 1}]


def test_small_roc_by_hand():
    """Six pairs: distances 0.1 .. 0.6 with same = T, T, F, T, F, F (P = 3 same, N = 3 different).

    Accepting d <= t for t = 0.1, 0.2, ..., 0.6 accepts, in order, S S D S D D, so
    TAR = 1/3, 2/3, 2/3, 1, 1, 1 and FAR = 0, 0, 1/3, 1/3, 2/3, 1 (after the accept-nothing
    point (0, 0)). AUC = the fraction of (same, different) pairs ordered correctly:
    same {0.1, 0.2, 0.4} against different {0.3, 0.5, 0.6}: 3 + 3 + 2 = 8 of 9.
    FRR = 1 - TAR; |FAR - FRR| is smallest (0) at t = 0.3: FAR = FRR = 1/3, so the
    EER is 1/3 with threshold 0.3. At most 10% (or 1%) false accepts means none: the
    best is t = 0.2, TAR 2/3.
    """
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    same = np.array([True, True, False, True, False, False])
    false_accept, true_accept, thresholds = roc(distances, same)
    np.testing.assert_allclose(false_accept, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(true_accept, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(thresholds[1:], distances)
    assert thresholds[0] == -np.inf
    metrics = verification_metrics(distances, same, num_folds=2)
    assert metrics["auc"] == pytest.approx(8 / 9)
    assert metrics["eer"] == pytest.approx(1 / 3) and metrics["eer_threshold"] == pytest.approx(0.3)
    assert metrics["tar_at_far_10pct"] == pytest.approx(2 / 3) and metrics["tar_at_far_10pct_threshold"] == pytest.approx(0.2)
    assert metrics["tar_at_far_1pct"] == pytest.approx(2 / 3)


def test_tar_at_far_allows_exactly_the_target_share_of_false_accepts():
    """4 same pairs at 0.2, 0.4, 0.6, 0.8; 10 different at 0.3, 0.7, 0.9, 1.0, ..., 1.5.

    FAR <= 10% allows one false accept of ten: t = 0.6 accepts 0.2, 0.3 (different),
    0.4, 0.6, so TAR = 3/4 (t = 0.7 would make FAR 2/10). FAR <= 1% or 0.1% allows none:
    t = 0.2, TAR = 1/4.
    """
    same_distances = [0.2, 0.4, 0.6, 0.8]
    different_distances = [0.3, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.55]
    distances = np.array(same_distances + different_distances)
    same = np.array([True] * 4 + [False] * 10)
    metrics = verification_metrics(distances, same, num_folds=2)
    assert metrics["tar_at_far_10pct"] == 0.75 and metrics["tar_at_far_10pct_threshold"] == pytest.approx(0.6)
    assert metrics["tar_at_far_1pct"] == 0.25 and metrics["tar_at_far_1pct_threshold"] == pytest.approx(0.2)
    assert metrics["tar_at_far_0.1pct"] == 0.25


def test_verification_summary_keeps_its_keys_for_threshold_calibration():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    same = np.array([True, True, False, True, False, False])
    summary = verification_summary(distances, same)
    assert set(summary) == {"auc", "eer", "eer_threshold", "tar_at_far_1pct"}
    assert summary["auc"] == pytest.approx(8 / 9) and summary["eer_threshold"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="both"):
        verification_summary(distances, np.ones(6, bool))


def reference_k_fold_accuracy(distances, same, folds, balanced):
    """Explicit loops: every candidate threshold of every fold, every pair counted one by one."""
    accuracies = []
    for fold in sorted(set(folds.tolist())):
        train = [index for index in range(len(distances)) if folds[index] != fold]
        held_out = [index for index in range(len(distances)) if folds[index] == fold]
        values = sorted(set(distances[index] for index in train))
        candidates = [values[0] - 1.0] + [(low + high) / 2 for low, high in zip(values, values[1:])] + [values[-1] + 1.0]

        def accuracy(indices, threshold):
            correct = {True: 0, False: 0}
            total = {True: 0, False: 0}
            for index in indices:
                total[bool(same[index])] += 1
                correct[bool(same[index])] += int((distances[index] <= threshold) == same[index])
            if not balanced:
                return sum(correct.values()) / len(indices)
            rates = [correct[kind] / total[kind] for kind in (True, False) if total[kind]]
            return sum(rates) / len(rates)

        best_threshold_value, best_accuracy = None, -1.0
        for candidate in candidates:  # ascending: ties keep the smallest
            score = accuracy(train, candidate)
            if score > best_accuracy + 1e-12:
                best_threshold_value, best_accuracy = candidate, score
        accuracies.append(accuracy(held_out, best_threshold_value))
    mean = sum(accuracies) / len(accuracies)
    return mean, (sum((value - mean) ** 2 for value in accuracies) / len(accuracies)) ** 0.5, accuracies


@pytest.mark.parametrize("balanced", [True, False])
def test_k_fold_accuracy_matches_an_explicit_loop(rng, balanced):
    same = rng.random(120) < 0.3
    distances = np.round(np.where(same, rng.normal(0.6, 0.25, 120), rng.normal(1.0, 0.25, 120)), 2)  # ties included
    for folds in (stratified_folds(same, 10, seed=3), rng.integers(0, 4, 120)):
        result = k_fold_accuracy(distances, same, folds=folds, balanced=balanced)
        mean, std, accuracies = reference_k_fold_accuracy(distances, same, folds, balanced)
        np.testing.assert_allclose(result["fold_accuracies"], accuracies)
        assert result["mean"] == pytest.approx(mean) and result["std"] == pytest.approx(std)
    assert 0.6 < result["mean"] < 1.0  # the classes overlap: neither trivial nor perfect


def test_balanced_accuracy_does_not_reward_rejecting_everything():
    """9 different pairs to each same pair, distances carrying no information: rejecting
    everything is 90% plain accuracy but 50% balanced accuracy."""
    same = np.array(([True] + [False] * 9) * 10)
    distances = np.ones(100)
    assert best_threshold(distances, same, balanced=False)[1] == pytest.approx(0.9)
    assert best_threshold(distances, same, balanced=True)[1] == pytest.approx(0.5)


def test_stratified_folds_are_seeded_and_keep_the_class_shares():
    same = np.array([True] * 30 + [False] * 270)
    folds = stratified_folds(same, 10, seed=0)
    assert (folds == stratified_folds(same, 10, seed=0)).all() and not (folds == stratified_folds(same, 10, seed=1)).all()
    for fold in range(10):
        assert same[folds == fold].sum() == 3 and (~same[folds == fold]).sum() == 27


# ----------------------------------------------------------------------------- pair selection


def test_small_sets_use_every_unordered_pair():
    labels = np.array([2, 0, 2, 1, 0, 2])
    pairs = verification_pairs(labels, max_pairs_per_class=100)
    first, second = np.triu_indices(6, k=1)
    assert (pairs.first == first).all() and (pairs.second == second).all()
    assert (pairs.same == (labels[first] == labels[second])).all() and pairs.num_same == 4
    assert "all 15" in pairs.how


def test_large_sets_get_a_seeded_balanced_sample_without_duplicates(rng):
    labels = rng.integers(0, 40, 600)  # about 4,500 same and 175,000 different pairs
    pairs = verification_pairs(labels, max_pairs_per_class=1000, seed=5)
    assert pairs.num_same == pairs.num_different == 1000
    assert (pairs.first < pairs.second).all()  # never i == j
    assert len(set(zip(pairs.first.tolist(), pairs.second.tolist()))) == 2000  # no pair twice
    assert (pairs.same == (labels[pairs.first] == labels[pairs.second])).all()
    again = verification_pairs(labels, max_pairs_per_class=1000, seed=5)
    other = verification_pairs(labels, max_pairs_per_class=1000, seed=6)
    assert (again.first == pairs.first).all() and (again.second == pairs.second).all()
    assert not (len(other.first) == len(pairs.first) and (other.first == pairs.first).all() and (other.second == pairs.second).all())
    assert "balanced" in pairs.how


def test_balanced_sample_is_limited_by_the_rarer_kind_and_covers_all_of_it():
    labels = np.repeat(np.arange(3), 4)  # 18 same pairs, 48 different
    pairs = verification_pairs(labels, max_pairs_per_class=30, seed=0)
    assert pairs.num_same == pairs.num_different == 18
    same_pairs = set(zip(pairs.first[pairs.same].tolist(), pairs.second[pairs.same].tolist()))
    first, second = np.triu_indices(12, k=1)
    assert same_pairs == {(i, j) for i, j in zip(first.tolist(), second.tolist()) if labels[i] == labels[j]}


def test_sampled_pairs_are_uniform_over_same_pairs(rng):
    """Each of the 45 + 10 same pairs of two identities (10 and 5 images) is drawn about equally often."""
    labels = np.array([0] * 10 + [1] * 5 + list(range(2, 40)))
    counts = {}
    for seed in range(400):
        pairs = verification_pairs(labels, max_pairs_per_class=11, seed=seed)
        for key in zip(pairs.first[pairs.same].tolist(), pairs.second[pairs.same].tolist()):
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 55
    expected = 400 * 11 / 55
    assert all(0.5 * expected < count < 1.6 * expected for count in counts.values()), counts


# ----------------------------------------------------------------------------- LFW pairs files

FOLDS_SAMPLE = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1

Abdullah_Gul\t13\t14
Abdullah_Gul\t13\t16
Abdel_Aziz_Al-Hakim\t1\tJim_Ryan\t1
Abdul_Majeed_Shobokshi\t1\tCharles_Cope\t1
"""

DEV_SAMPLE = """3
Aaron_Peirsol 1 2
Aaron_Peirsol 3 4
Aaron_Sorkin 1 2
AJ_Cook 1 Marsha_Thomason 1
Aaron_Sorkin 2 Frank_Keating 1
Abdullah 1 Christopher_Reeve 4
"""


def test_lfw_pairs_with_folds():
    named = parse_lfw_pairs(FOLDS_SAMPLE)
    assert len(named) == 8
    assert named.same.tolist() == [True, True, False, False] * 2
    assert named.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (named.first_names[0], named.first_numbers[0], named.second_names[0], named.second_numbers[0]) == ("Abel_Pacheco", 1, "Abel_Pacheco", 4)
    assert (named.first_names[3], named.second_names[3], named.second_numbers[3]) == ("Abdel_Madi_Shabneh", "Giancarlo_Fisichella", 1)
    assert named.second_numbers[5] == 16 and named.line_numbers[4] == 7  # the blank line 6 is skipped


def test_lfw_pairs_without_folds():
    named = parse_lfw_pairs(DEV_SAMPLE)
    assert named.folds is None and named.same.tolist() == [True] * 3 + [False] * 3
    assert (named.first_names[5], named.first_numbers[5], named.second_names[5], named.second_numbers[5]) == ("Abdullah", 1, "Christopher_Reeve", 4)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("ten\nA 1 2\n", "expected a header 'N' or 'FOLDS N'"),
        ("1 2 3\n", "expected a header"),
        ("2\nA 1 2\nB 1 2\nA 1 B 1\n", "announces 4 pair lines but the file has 3"),
        ("1\nA 1 B 2\nA 1 B 2\n", "line 2: expected 'name i j' (a matched pair)"),
        ("1\nA 1 2\nA 1 2\n", "line 3: expected 'name1 i name2 j' (a mismatched pair)"),
        ("1\nA 0 2\nA 1 B 2\n", "line 2: image numbers must be whole numbers >= 1"),
        ("1\nA 1 x\nA 1 B 2\n", "line 2: image numbers must be whole numbers >= 1"),
    ],
)
def test_malformed_pairs_files_name_the_line(text, message):
    with pytest.raises(PairsFileError) as error:
        parse_lfw_pairs(text, "pairs.txt")
    assert message in str(error.value) and str(error.value).startswith("pairs.txt")


def fake_faces(file_names, source="folder:/faces"):
    """FaceImages with the given file names (identity = first folder); no real image bytes."""
    names = sorted({name.split("/")[0] for name in file_names})
    labels = np.array([names.index(name.split("/")[0]) for name in file_names], np.int64)
    return FaceImages(np.array([b""] * len(file_names), dtype=object), labels, names, np.array(file_names), 3, source)


def test_image_numbers_come_from_lfw_and_orl_file_names():
    faces = fake_faces(["Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", "s7/3.pgm", "s7/10.pgm"])
    index = image_index_by_name_and_number(faces.file_names, faces.labels, faces.identity_names)
    assert index == {("Abel_Pacheco", 1): 0, ("Abel_Pacheco", 4): 1, ("s7", 3): 2, ("s7", 10): 3}
    tfds_style = image_index_by_name_and_number(np.array(["all/0", "all/1"]), np.array([0, 1]), ["a", "b"])
    assert tfds_style == {}  # "all" is no identity: these names carry no image numbers


def test_pairs_file_maps_onto_images_or_names_what_is_missing():
    faces = fake_faces([f"{name}/{name}_{number:04d}.jpg" for name in ("Ann", "Bob") for number in (1, 2, 3)])
    pairs = pairs_from_file(parse_lfw_pairs("1 1\nAnn 1 3\nAnn 2 Bob 3\n"), faces, "p.txt")
    assert pairs.first.tolist() == [0, 1] and pairs.second.tolist() == [2, 5] and pairs.same.tolist() == [True, False]
    assert pairs.folds.tolist() == [0, 0]
    with pytest.raises(PairsFileError, match="p.txt line 3: no identity 'Cid'"):
        pairs_from_file(parse_lfw_pairs("1\nAnn 1 3\nAnn 2 Cid 3\n"), faces, "p.txt")
    with pytest.raises(PairsFileError, match="p.txt line 2: Ann has no image number 9 .*3 images found"):
        pairs_from_file(parse_lfw_pairs("1\nAnn 1 9\nAnn 2 Bob 3\n"), faces, "p.txt")
    # a tfds data set without file names: images are named split/index, not identity/...
    unnamed = FaceImages(np.array([b"", b""], dtype=object), np.array([0, 1]), ["x", "y"], np.array(["all/0", "all/1"]), 3, "tfds:lfw")
    with pytest.raises(PairsFileError, match="not named NAME/NAME_0001.jpg"):
        pairs_from_file(parse_lfw_pairs("1\nx 1 1\nx 1 y 1\n"), unnamed, "p.txt")


# ----------------------------------------------------------------------------- baselines


def identity_images(rng, identities=6, per_identity=8, shape=(6, 5, 1)):
    """Images = an identity's pattern + noise, so identity is recoverable from pixels."""
    patterns = rng.random((identities, *shape))
    labels = np.repeat(np.arange(identities), per_identity)
    return np.clip(patterns[labels] + 0.15 * rng.standard_normal((len(labels), *shape)), 0, 1), labels


def test_baselines_are_the_documented_linear_maps(rng):
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    images, labels = identity_images(rng)
    pixels = images.reshape(len(images), -1)
    raw = fit_raw_pixels(images, labels)
    np.testing.assert_allclose(raw.embed(images, "train"), pixels - pixels.mean(axis=0))
    np.testing.assert_allclose(raw.embed(images[:5], "evaluated"), pixels[:5] - pixels[:5].mean(axis=0))
    eigen = fit_eigenfaces(images, labels, components=7)
    np.testing.assert_allclose(eigen.embed(images, "train"), PCA(7, svd_solver="full").fit_transform(pixels), atol=1e-9)
    fisher = fit_fisherfaces(images, labels, pca_components=12)
    pca = PCA(12, svd_solver="full").fit(pixels)
    expected = LinearDiscriminantAnalysis().fit(pca.transform(pixels), labels).transform(pca.transform(pixels))
    np.testing.assert_allclose(fisher.embed(images, "train"), expected, atol=1e-9)
    assert fisher.dimensions == 5 and all(baseline.metric == "cosine" for baseline in (raw, eigen, fisher))


def test_baselines_separate_identities_they_were_not_fitted_on(rng):
    images, labels = identity_images(rng, identities=12, per_identity=6)
    train, test = labels < 8, labels >= 8
    pairs = verification_pairs(labels[test])
    from facetrip.evaluation import distances_between

    for baseline in fit_baselines(images[train], labels[train]):
        vectors = baseline.embed(images[test])
        auc = verification_metrics(distances_between(vectors[pairs.first], vectors[pairs.second], "cosine"), pairs.same)["auc"]
        assert auc > 0.9, (baseline.name, auc)


# ----------------------------------------------------------------------------- the run's split


def copy_run(run_dir, target):
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("metrics.json", "roc.png", "logs", "embeddings*"))
    return target


def edit_split(run_dir, change, metadata_too=False):
    """Apply ``change`` to split.json (and to metadata.json's split)."""
    split = json.loads((run_dir / "split.json").read_text())
    change(split)
    (run_dir / "split.json").write_text(json.dumps(split))
    if metadata_too:
        metadata = json.loads((run_dir / "metadata.json").read_text())
        change(metadata["split"])
        (run_dir / "metadata.json").write_text(json.dumps(metadata))


@pytest.mark.slow
def test_run_split_refuses_test_identities_that_were_trained_on(finished_run, tmp_path):
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert run_split(run_dir, metadata)["test"] == metadata["split"]["test"]
    leaked = metadata["split"]["train"][0]
    edit_split(run_dir, lambda split: split["test"].append(leaked))
    with pytest.raises(EvaluationError, match=f"1 test identities of .*split.json are also training identities \\({leaked}\\)"):
        run_split(run_dir, metadata)


# ----------------------------------------------------------------------------- the command


def pairs_by_the_model(run_dir, data_dir):
    """Every unordered pair of the run's 100 test images (10 identities x 10), through the saved model.

    Returns ``(distances, same, first identity, second identity)``, each (4,950,): computed
    here, apart from ``facetrip evaluate``, to check the numbers it reports.
    """
    from facetrip.data import load_faces
    from facetrip.evaluation.report import preprocess_images
    from facetrip.runs.loaded_run import Run

    run = Run.load(run_dir)
    assert run.metadata["metric"] == "euclidean"
    faces = load_faces("orl_faces", data_dir=data_dir).restricted_to(json.loads((run_dir / "split.json").read_text())["test"])
    embeddings = run.embed_images(preprocess_images(faces, run.image_size, run.channels))
    first, second = np.triu_indices(len(faces), k=1)
    names = np.asarray(faces.identity_names, dtype=object)[faces.labels]
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    return distances, faces.labels[first] == faces.labels[second], names[first], names[second]


def auc_by_counting(distances, same):
    """The AUC by its definition: the share of (same, different) pairs with the same pair closer, ties half."""
    same_distances, different_distances = distances[same][:, None], distances[~same][None, :]
    closer = np.sum(same_distances < different_distances) + 0.5 * np.sum(same_distances == different_distances)
    return closer / (same_distances.size * different_distances.size)


def eer_by_sweeping(distances, same):
    """The EER by trying every threshold (accept d <= t), from accepting nothing up: (FAR + FRR) / 2 where
    |FAR - FRR| is smallest (the first such threshold)."""
    best = None
    for threshold in [-np.inf, *np.unique(distances)]:
        false_accept = np.mean(distances[~same] <= threshold)
        false_reject = np.mean(distances[same] > threshold)
        if best is None or abs(false_accept - false_reject) < best[0]:
            best = (abs(false_accept - false_reject), (false_accept + false_reject) / 2)
    return best[1]


def roc_by_counting(distances, same):
    """(FAR, TAR) at every threshold from accepting nothing up (accept d <= t), counted."""
    thresholds = [-np.inf, *np.unique(distances)]
    return (np.array([np.mean(distances[~same] <= threshold) for threshold in thresholds]),
            np.array([np.mean(distances[same] <= threshold) for threshold in thresholds]))


def recorded_curves(monkeypatch) -> list:
    """Every figure saved from now on, as the (x, y) data of its axes' lines, in order."""
    import matplotlib.figure

    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(self, *arguments, **keywords):
        figures.append([(np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                        for axis in self.axes for line in axis.lines])
        return savefig(self, *arguments, **keywords)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    return figures


def assert_roc_png(path, size):
    """A PNG of ``size`` pixels whose drawing is not blank: dark ink and the white page both present."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200 and np.mean(pixels < 200) > 0.01


@pytest.mark.slow
def test_train_ends_with_the_evaluation(finished_run, data_dir):
    """The train command's evaluation: baselines, the ROC plot, and the errors at the EER threshold.

    The tiny model (2 epochs at 16 x 14) makes mistakes on its 10 test identities (EER > 0),
    so false rejects and false accepts exist; those listed are, per identity (of its 45 same
    pairs) and per identity pair (of their 100 different pairs), the counts of the pairs the
    model puts beyond (same) or within (different) that threshold, worst first, 5 at most.
    """
    run_dir, output = finished_run
    assert "Fisherfaces" in output and "at most 1% of 1,000 dev different-identity pairs" in flat(output)
    assert "(target 1%)" in flat(output) and "(dev FAR" in flat(output)  # the evaluation's and training's summaries
    report = json.loads((run_dir / "metrics.json").read_text())
    assert set(report["baselines"]) == {"raw pixels", "Eigenfaces", "Fisherfaces"}
    assert_roc_png(run_dir / "roc.png", (660, 495))
    errors = report["errors"]
    assert errors["threshold"] == report["model"]["eer_threshold"]
    test_identities = set(json.loads((run_dir / "split.json").read_text())["test"])
    assert all(row["identity"] in test_identities and row["pairs"] == 45 for row in errors["false_rejects"])
    assert all(set(row["identities"]) <= test_identities and row["pairs"] == 100 for row in errors["false_accepts"])
    assert 0 < report["model"]["eer"] < 0.5  # mistakes, but better than chance
    assert "Errors at the model's EER threshold" in flat(output)
    distances, same, first, second = pairs_by_the_model(run_dir, data_dir)
    rejected = distances > errors["threshold"]
    expected_rejects = sorted(
        ({"identity": name, "rate": int(np.sum(rejected & same & (first == name))) / 45,
          "errors": int(np.sum(rejected & same & (first == name))), "pairs": 45} for name in sorted(test_identities)
         if np.any(rejected & same & (first == name))),
        key=lambda row: (-row["rate"], row["identity"]))[:5]
    assert expected_rejects and errors["false_rejects"] == expected_rejects
    accepted_different = ~rejected & ~same
    assert errors["false_accepts"] and sum(row["errors"] for row in errors["false_accepts"]) <= accepted_different.sum()
    for row in errors["false_accepts"]:
        a, b = row["identities"]
        between = ((first == a) & (second == b)) | ((first == b) & (second == a))
        assert row["errors"] == int(np.sum(accepted_different & between)) and row["rate"] == row["errors"] / 100


@pytest.mark.slow
def test_evaluate_writes_metrics_and_roc(finished_run, tmp_path, data_dir, monkeypatch):
    """`facetrip evaluate` on all 4,950 test pairs; its AUC and EER equal those counted here from the
    model's own distances (the AUC as the share of correctly ordered (same, different) pairs), and so
    does the ROC curve roc.png draws first (FAR = 0 at the left edge of the log axis)."""
    from facetrip.evaluation import metrics

    run_dir = copy_run(finished_run[0], tmp_path / "run")
    figures = recorded_curves(monkeypatch)
    roc_inputs = []  # (distances, same) of every ROC curve computed, the model's first
    roc = metrics.roc

    def recording_roc(distances, same):
        roc_inputs.append((np.asarray(distances, np.float64), np.asarray(same, bool)))
        return roc(distances, same)

    monkeypatch.setattr(metrics, "roc", recording_roc)
    result = run_cli("evaluate", run_dir, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    for row in ("model", "raw pixels", "Eigenfaces", "Fisherfaces", "FAR 0.1%", "10-fold"):
        assert row in text, result.output
    assert "Errors at the model's EER threshold" in text  # the tiny model's EER is above 0
    assert "450 same + 4,500 different" in text and "all 4,950 unordered pairs" in text
    report = json.loads((run_dir / "metrics.json").read_text())
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert (report["pairs"]["same"], report["pairs"]["different"], report["pairs"]["identities"]) == (450, 4500, 10)
    assert report["model"]["accuracy"]["num_folds"] == 10
    distances, same, _, _ = pairs_by_the_model(run_dir, data_dir)
    assert (same.sum(), (~same).sum()) == (450, 4500)
    assert report["model"]["auc"] == pytest.approx(auc_by_counting(distances, same), abs=1e-6)
    assert report["model"]["eer"] == pytest.approx(eer_by_sweeping(distances, same), abs=1e-6)
    assert 0.5 < report["model"]["auc"] < 1.0 and 0.0 < report["model"]["eer"] < 0.5  # trained, imperfect
    assert report["baselines"]["Fisherfaces"]["auc"] > 0.9  # ORL is easy for Fisherfaces even at 16 x 14
    threshold = report["threshold"]
    assert threshold["threshold"] == metadata["threshold"] and threshold["rule"] == metadata["calibration"]["rule"]
    assert threshold["rule"] == "largest distance accepting at most 1% of 1,000 dev different-identity pairs"
    assert threshold["target_far"] == 0.01 and threshold["calibration_far"] <= 0.01
    assert threshold["calibration_far_interval"] == metadata["calibration"]["far_interval"]
    # accuracy at a threshold = the share of correct decisions: (1 - FAR) N / (N + P) + (1 - FRR) P / (N + P)
    assert threshold["accuracy"] == pytest.approx((1 - threshold["far"]) * 4500 / 4950 + (1 - threshold["frr"]) * 450 / 4950)
    assert_roc_png(run_dir / "roc.png", (660, 495))  # 6 x 4.5 inches at 110 dpi
    model_x, model_y = figures[0][0]  # the model's curve: the first, of 4 (the 3 baselines after it)
    assert len([line for line in figures[0] if len(line[0]) > 2]) == 4
    model_distances, model_same = roc_inputs[0]  # the distances evaluate drew the model's curve from: the model's
    np.testing.assert_allclose(np.sort(model_distances), np.sort(distances), atol=1e-5)
    assert model_same.sum() == 450 and len(model_same) == 4950
    false_accept, true_accept = roc_by_counting(model_distances, model_same)
    np.testing.assert_allclose(model_y, true_accept, atol=1e-9)
    drawn = false_accept > 0
    np.testing.assert_allclose(model_x[drawn], false_accept[drawn], rtol=1e-9)
    assert np.all(model_x[~drawn] == model_x.min()) and 0 < model_x.min() < false_accept[drawn].min()

    as_json = run_cli("evaluate", run_dir, "--data-dir", data_dir, "--json", "--no-baselines", "--max-pairs", "200", "--seed", "3")
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.stdout)  # stderr says where the report page went
    assert printed == json.loads((run_dir / "metrics.json").read_text())
    assert printed["baselines"] == {} and printed["pairs"]["same"] == printed["pairs"]["different"] == 200
    assert "seed 3" in printed["pairs"]["how"]


@pytest.mark.slow
def test_evaluate_on_an_lfw_format_pairs_file(finished_run, tmp_path, data_dir):
    """ORL images are s<N>/<i>.pgm, so an LFW-format file can name the run's test identities."""
    run_dir = copy_run(finished_run[0], tmp_path / "run")
    test = json.loads((run_dir / "split.json").read_text())["test"]
    lines = ["2 3"]
    for fold in range(2):
        lines += [f"{test[fold * 3 + k]} {k + 1} {k + 4}" for k in range(3)]
        lines += [f"{test[fold * 3 + k]} {k + 1} {test[fold * 3 + k + 1]} {k + 2}" for k in range(3)]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    result = run_cli("evaluate", run_dir, "--data-dir", data_dir, "--pairs", pairs_file, "--json", "--no-baselines")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr says where the report page went
    assert (report["pairs"]["same"], report["pairs"]["different"]) == (6, 6) and report["pairs"]["file"] == str(pairs_file)
    assert report["model"]["accuracy"]["folds"] == "pairs file" and report["model"]["accuracy"]["num_folds"] == 2

    train = json.loads((run_dir / "split.json").read_text())["train"]
    pairs_file.write_text(f"1\n{train[0]} 1 2\n{train[0]} 1 {test[0]} 1\n")
    refused = run_cli("evaluate", run_dir, "--data-dir", data_dir, "--pairs", pairs_file)
    assert refused.exit_code == 2 and "are training identities of" in flat(refused.output)
    pairs_file.write_text(f"1\n{test[0]} 1 11\n{test[0]} 1 {test[1]} 1\n")
    missing = run_cli("evaluate", run_dir, "--data-dir", data_dir, "--pairs", pairs_file)
    assert missing.exit_code == 2 and f"line 2: {test[0]} has no image number 11" in flat(missing.output)
    pairs_file.write_text(f"1 1\n{test[0]} 1 2\n{test[0]} 1 {test[1]} 1\n")
    one_fold = run_cli("evaluate", run_dir, "--data-dir", data_dir, "--pairs", pairs_file)
    assert one_fold.exit_code == 2 and "holds one fold" in flat(one_fold.output), one_fold.output


@pytest.mark.slow
def test_evaluate_errors_are_one_line(finished_run, tmp_path, data_dir):
    source = finished_run[0]
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(source / "metadata.json", no_model / "metadata.json")
    overlapping = copy_run(source, tmp_path / "overlapping")
    edit_split(overlapping, lambda split: split["test"].append(split["train"][0]))
    no_test = copy_run(source, tmp_path / "no_test")
    edit_split(no_test, lambda split: (split["dev"].extend(split["test"]), split["test"].clear()), metadata_too=True)
    edited = copy_run(source, tmp_path / "edited")
    edit_split(edited, lambda split: split["test"].pop())
    (tmp_path / "bad_pairs.txt").write_text("pairs\n")
    cases = [
        ((tmp_path / "missing",), "does not exist"),
        ((no_model,), "has no model.keras"),
        ((overlapping,), "are also training identities"),
        ((no_test,), "has no test identities"),
        ((edited,), "the run directory was edited"),
        ((source, "--pairs", tmp_path / "bad_pairs.txt"), "expected a header 'N' or 'FOLDS N'"),
        ((source, "--pairs", tmp_path / "none.txt"), "Cannot read the pairs file"),
        ((source, "--max-pairs", "0"), "max_pairs must be at least 1"),
        ((source, "--data", "folder:" + str(tmp_path / "nowhere")), "does not exist"),
    ]
    for arguments, message in cases:
        result = run_cli("evaluate", *arguments, "--data-dir", data_dir)
        assert result.exit_code == 2, (arguments, result.output)
        assert message in flat(result.output) and "Traceback" not in result.output, (arguments, result.output)
        assert len([line for line in result.output.splitlines() if line.strip()]) <= 3, result.output
    assert run_split(source, json.loads((source / "metadata.json").read_text()))["test"]  # the session's run is untouched
