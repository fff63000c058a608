"""scripts/compare_strategies.py: variant parsing, the markdown table and the reuse of finished runs (no training)."""

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
    assert "| batch_hard | 10.0% ± 5.0 | 5.0 / 15.0 | 0.960 ± 0.020 | 0.80 ± 0.10 | 0.200 | 3.0 min |" in table
    assert "| *Fisherfaces* (baseline) | 10.0% ± 0.0 | 10.0 / 10.0 |" in table and "split seeds 0, 1" in table


def test_finished_runs_are_reused_only_with_the_same_config(tmp_path):
    from facetrip.config import Config

    run_dir = tmp_path / "batch_hard_split0"
    run_dir.mkdir()
    config = Config()
    config.set("split.seed", 0)
    (run_dir / "config.toml").write_text(config.to_toml())
    assert not compare_strategies.is_finished_run_of(run_dir, config)  # no timing: unfinished
    (run_dir / "training_seconds.json").write_text('{"seconds": 1.0}')
    assert compare_strategies.is_finished_run_of(run_dir, config)
    changed = Config()
    changed.set("split.seed", 0)
    changed.set("model.width", config.model.width + 1)  # e.g. the default changed since
    assert not compare_strategies.is_finished_run_of(run_dir, changed)
    saved_before_a_key_existed = config.to_toml().replace("tta_shift = 0\n", "")
    assert saved_before_a_key_existed != config.to_toml()
    (run_dir / "config.toml").write_text(saved_before_a_key_existed)
    assert not compare_strategies.is_finished_run_of(run_dir, config)
    (run_dir / "config.toml").write_text("not [ toml")
    assert not compare_strategies.is_finished_run_of(run_dir, config)
