"""scripts/compare_strategies.py: variant parsing and the markdown table (no training)."""

import importlib.util

from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_strategies", REPO / "scripts" / "compare_strategies.py")
compare_strategies = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_strategies)


def test_variant_overrides_parse_literals_lists_and_strings():
    name, overrides = compare_strategies.parse_variant(
        "small input=data.image_size:[32,26];model.head:pool;train.epochs:40;model.flip_tta:False;loss.margin:soft"
    )
    assert name == "small input"
    assert overrides == {"data.image_size": [32, 26], "model.head": "pool", "train.epochs": 40,
                         "model.flip_tta": False, "loss.margin": "soft"}
    assert compare_strategies.parse_variant("batch_hard=") == ("batch_hard", {})


def test_table_reports_mean_and_spread_over_splits():
    def run(eer, auc, tar, fraction, seconds):
        return {"model": {"eer": eer, "auc": auc, "tar_at_far_1pct": tar}, "fraction_positive_triplets": fraction,
                "seconds": seconds}

    results = {"batch_hard": [run(0.05, 0.98, 0.9, 0.1, 120), run(0.15, 0.94, 0.7, 0.3, 240)]}
    baselines = {"Fisherfaces": [{"eer": 0.1, "auc": 0.96, "tar_at_far_1pct": 0.7}] * 2}
    table = compare_strategies.markdown_table(results, baselines, [0, 1])
    # EER mean 10%, population std 5 points; AUC 0.960 +- 0.020; 3 min of training on average
    assert "| batch_hard | 10.0% ± 5.0 | 0.960 ± 0.020 | 0.80 ± 0.10 | 0.200 | 3.0 min |" in table
    assert "| *Fisherfaces* (baseline) | 10.0% ± 0.0 |" in table and "split seeds 0, 1" in table
