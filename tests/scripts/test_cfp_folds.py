"""scripts/cfp_folds.py: fold people, the training folder, fold scores and LFW's left-out pairs (no training)."""

import importlib.util
from types import SimpleNamespace

import numpy as np

from conftest import REPO

spec = importlib.util.spec_from_file_location("cfp_folds", REPO / "scripts" / "cfp_folds.py")
cfp_folds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cfp_folds)


def folded_pairs(seed=0, folds=4, per_fold=20):
    """Random pairs in ``folds`` folds: same pairs nearer on average; people named by fold."""
    rng = np.random.default_rng(seed)
    same = np.tile(np.arange(per_fold) % 2 == 0, folds)
    fold_of = np.repeat(np.arange(folds), per_fold)
    distances = rng.normal(np.where(same, 0.4, 0.7), 0.15)
    first = [f"{fold}{index:02d}" for fold, index in zip(fold_of, np.arange(len(same)) % 7)]
    second = [name if is_same else name[0] + "99" for name, is_same in zip(first, same)]
    return distances, SimpleNamespace(folds=fold_of, same=same, first_names=first, second_names=second)


def test_people_of_a_fold_are_those_in_its_pairs():
    _, pairs = folded_pairs()
    people = cfp_folds.people_of_fold(pairs, 2)
    assert people == {f"2{index:02d}" for index in range(7)} | {"299"}
    assert not people & cfp_folds.people_of_fold(pairs, 1)


def test_training_folder_links_every_person_but_the_held_out(tmp_path):
    images = tmp_path / "Images"
    for name in ("001", "002", "003"):
        (images / name / "frontal").mkdir(parents=True)
    folder = cfp_folds.training_people_folder(images, {"002"}, tmp_path / "fold")
    assert sorted(path.name for path in folder.iterdir()) == ["001", "003"]
    assert (folder / "001").is_symlink() and (folder / "001" / "frontal").is_dir()
    assert cfp_folds.training_people_folder(images, {"002"}, tmp_path / "fold") == folder  # made once, again fine


def test_fold_accuracy_takes_the_threshold_of_the_other_folds_and_eer_the_fold_alone():
    from facetrip.evaluation.metrics import best_threshold, verification_metrics

    distances, pairs = folded_pairs(seed=3)
    scores = cfp_folds.fold_scores(distances, pairs, 1)
    others = pairs.folds != 1
    threshold, _ = best_threshold(distances[others], pairs.same[others], True)
    held = ~others
    accepted = distances[held] <= threshold
    expected = 0.5 * (accepted[pairs.same[held]].mean() + (~accepted[~pairs.same[held]]).mean())
    assert abs(scores["accuracy"] - expected) < 1e-12
    alone = verification_metrics(distances[held], pairs.same[held])
    assert scores["eer"] == alone["eer"] and scores["auc"] == alone["auc"]
    shifted = distances.copy()
    shifted[others] += 0.3  # other folds' distances move the threshold, not the fold's own EER
    moved = cfp_folds.fold_scores(shifted, pairs, 1)
    assert moved["eer"] == scores["eer"] and moved["accuracy"] != scores["accuracy"]


def test_lfw_names_of_trained_cfp_people(tmp_path):
    in_lfw = tmp_path / "in_lfw.txt"
    in_lfw.write_text("# folder<TAB>name\n006\tAdam Sandler\n009\tAishwarya Rai\n")
    assert cfp_folds.lfw_names_of({"006", "007"}, in_lfw) == {"Adam_Sandler"}
    assert cfp_folds.lfw_names_of(set(), in_lfw) == set()


def test_lfw_accuracy_leaves_out_every_pair_of_a_trained_person():
    from facetrip.evaluation.metrics import k_fold_accuracy

    distances, pairs = folded_pairs(seed=5)
    accuracy, left_out = cfp_folds.lfw_accuracy(distances, pairs, set())
    assert left_out == 0 and accuracy == k_fold_accuracy(distances, pairs.same, pairs.folds)["mean"]
    names = np.array(pairs.first_names)
    shown = (names == "003") | (np.array(pairs.second_names) == "003")
    wrong = distances.copy()
    wrong[shown] = np.where(pairs.same[shown], 5.0, 0.0)  # every pair of 003 wrong: only they change
    accuracy_without, left_out = cfp_folds.lfw_accuracy(wrong, pairs, {"003"})
    kept = ~shown
    assert left_out == shown.sum() > 0
    assert accuracy_without == k_fold_accuracy(distances[kept], pairs.same[kept], pairs.folds[kept])["mean"]


def test_table_means_over_folds_and_points_lost():
    def fold(fp, ff, lfw, lost):
        return {"FP": {"accuracy": fp, "eer": 1 - fp, "auc": fp}, "FF": {"accuracy": ff, "eer": 1 - ff, "auc": ff},
                "lfw": lfw, "lfw_lost": lost, "seconds": 120.0}

    table = cfp_folds.markdown([{"name": "tuned", "folds": [fold(0.9, 0.99, 0.98, 0.002), fold(0.8, 0.97, 0.97, 0.004)]}],
                               [0, 2], "cmd", lfw=True)
    assert "folds 1, 3" in table
    assert "| tuned | 85.00% ± 5.00 | 90.0 / 80.0 | 15.00% | 0.8500 | 98.00% ± 1.00 | 2.00% | 97.50% | 0.30 (0.20 / 0.40) | 2.0 min |" in table
