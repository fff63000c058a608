"""scripts/compare_strategies.py: variant parsing and the markdown table (no training); scripts/screen_levers.py runs."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.slow
def test_screen_levers_trains_every_lever_and_reports_per_split(data_dir):
    """Two epochs of a tiny model with every extra lever on: one line per evaluation, then the mean.

    Each line's EER e and AUC describe one ROC curve: it rises monotonically through the EER
    point (FAR f, TAR 1 - r) with e = (f + r) / 2, so the area under it lies between
    (1 - f)(1 - r) >= 1 - 2e and 1 - f r ~ 1 - e^2 (f and r differ by about one pair's
    share; the values are printed to 4 decimals, hence the 0.002 of slack). And the
    trained model is better than chance (EER < 0.5, which collapsed embeddings give).
    """
    command = [sys.executable, str(REPO / "scripts" / "screen_levers.py"), "--split", "0", "--size", "16", "14",
               "--width", "4", "--dim", "8", "--epochs", "2", "--eval-every", "1", "--joint", "1", "--smooth", "0.1",
               "--erase", "0.5", "--rot", "10", "--zoom", "0.1", "--ramp", "0.5", "--gamma", "0.3", "--norm",
               "--simclr", "0.5", "--head", "flatten", "--train-dev", "--blend", "2", "--ema", "0.9", "--tag", "smoke",
               "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line[2:]) for line in result.stdout.splitlines() if line.startswith("0 {")]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for eer, auc in ((row["eer"], row["auc"]), (row["eer_tta"], row["auc_tta"])):
            assert 1 - 2 * eer - 0.002 <= auc <= 1 - eer**2 + 0.002, row
        assert row["dev_eer"] < 0.5 and row["eer"] < 0.5, row
    assert np.isfinite(rows[-1]["ce"]) and np.isfinite(rows[-1]["trip"])
    final = [line for line in result.stdout.splitlines() if line.startswith("FINAL smoke")]
    assert len(final) == 1 and json.loads(final[0].rsplit("} ", 1)[1])["eer"] == rows[-1]["eer"]


def test_fusion_averages_standardised_distances():
    spec = importlib.util.spec_from_file_location("fuse_runs", REPO / "scripts" / "fuse_runs.py")
    fuse_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuse_runs)
    distances = np.array([0.1, 0.4, 0.7, 1.0])
    # standardising removes scale and offset: a model whose distances are 10 d + 3 ranks pairs as d does
    assert np.allclose(fuse_runs.fused([distances, 10 * distances + 3]), fuse_runs.standardised(distances))
    assert np.allclose(fuse_runs.standardised(distances), (distances - 0.55) / np.std(distances))
    assert np.allclose(fuse_runs.fused([distances, -distances]), 0.0)  # opposite opinions cancel
    assert np.allclose(fuse_runs.standardised(np.full(3, 0.5)), 0.0)  # a constant set stays finite


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
