"""Compare training recipes on the same identity splits: a markdown table of test verification.

Each variant is the base config (``--config``, else facetrip's defaults: the pretrained
face_resnet fine-tuned on ORL; ``--data`` another source) plus overrides; each is trained on every identity
split (``split.seed``) and evaluated with ``facetrip evaluate``'s workflow on the split's
10 test identities (never trained on). The baselines (raw pixels, Eigenfaces,
Fisherfaces) are scored on exactly the same pairs. Reported per variant: mean +- std over
splits of EER, AUC and TAR at FAR = 1%, the fraction of positive triplets in the last
epoch, and the training time (wall clock, this machine).

Finished runs are reused when their saved config is the one asked for, so an interrupted
comparison continues where it stopped, and a run of an older default is trained again.

Usage::

    # the strategies the issue asks for (5 splits, default recipe otherwise)
    python scripts/compare_strategies.py --strategies --splits 0 1 2 3 4 --out docs/reports/strategies_default.md
    # the same on the from-scratch recipe
    python scripts/compare_strategies.py --config configs/scratch.toml --strategies --splits 0 1 2 3 4
    # any recipe: NAME=section.key:value;section.key:value
    python scripts/compare_strategies.py --variant "no rotation=augment.rotation:0" --variant "56x46=data.image_size:[56,46]"
    # Extended Yale B: the pretrained network untrained vs fine-tuned, on 5 splits of 10 test people
    python scripts/compare_strategies.py --data folder:../shared/data/yaleb/images --splits 0 1 2 3 4 \
        --variant "pretrained=train.epochs:0" --variant "fine-tuned=train.epochs:10"
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGY_VARIANTS = {
    "batch_all": {"loss.strategy": "batch_all"},
    "batch_hard": {"loss.strategy": "batch_hard"},
    "semi_hard": {"loss.strategy": "semi_hard"},
    "offline": {"loss.strategy": "offline"},
    "batch_hard, soft margin": {"loss.strategy": "batch_hard", "loss.margin": "soft"},
}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=section.key:value;...`` -> (NAME, {section.key: value}); values are Python literals or strings."""
    name, _, assignments = text.partition("=")
    overrides = {}
    for assignment in filter(None, assignments.split(";")):
        key, _, value = assignment.partition(":")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def final_fraction_positive(run_dir: Path) -> float:
    """The fraction of positive triplets in the last epoch (NaN for a run without training)."""
    if not (run_dir / "metrics.csv").is_file():
        return float("nan")
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return float(rows[-1]["fraction_positive_triplets"]) if rows else float("nan")


def is_finished_run_of(run_dir: Path, config) -> bool:
    """Whether ``run_dir`` holds a finished run trained with exactly ``config`` (reusable).

    The saved ``config.toml`` is compared as written: a run saved before a config key
    existed does not match (its value for the new key is unknown), so it is trained again.
    """
    import tomllib

    from facetrip.runs import CONFIG_FILE

    if not (run_dir / "training_seconds.json").is_file() or not (run_dir / CONFIG_FILE).is_file():
        return False
    try:
        return tomllib.loads((run_dir / CONFIG_FILE).read_text()) == tomllib.loads(config.to_toml())
    except (OSError, ValueError):
        return False


def train_and_evaluate(base_config: Path | None, overrides: dict, split_seed: int, run_dir: Path, baselines: bool,
                       data_source: str | None = None) -> dict:
    """Train (unless already finished) and evaluate one variant on one split."""
    from facetrip.config import Config
    from facetrip.evaluation.report import evaluate_run
    from facetrip.training import prepare_run_dir, train

    timing = run_dir / "training_seconds.json"
    config = Config.from_toml(base_config) if base_config else Config()
    for key, value in {**({"data.source": data_source} if data_source else {}), **overrides, "split.seed": split_seed}.items():
        config.set(key, value)
    if not is_finished_run_of(run_dir, config):
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # unfinished, or trained with another config (e.g. an older default)
        prepare_run_dir(config, run_dir)
        started = time.perf_counter()
        train(config, run_dir)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    report = evaluate_run(run_dir, baselines=baselines)
    return {
        "model": report["model"],
        "baselines": report.get("baselines", {}),
        "fraction_positive_triplets": final_fraction_positive(run_dir),
        "seconds": json.loads(timing.read_text())["seconds"],
    }


def summarise(rows: list[dict]) -> dict:
    def stats(values):
        return float(np.mean(values)), float(np.std(values))

    return {
        "eer": stats([row["eer"] for row in rows]),
        "auc": stats([row["auc"] for row in rows]),
        "tar_at_far_1pct": stats([row["tar_at_far_1pct"] for row in rows]),
    }


def per_split_eer(metrics: list[dict]) -> str:
    """EER of each split in percent, in split order: ``11.2 / 14.2 / ...``."""
    return " / ".join(f"{100 * row['eer']:.1f}" for row in metrics)


def markdown_table(results: dict[str, list[dict]], baselines: dict[str, list[dict]], splits) -> str:
    header = (
        f"| recipe | EER | EER per split | AUC | TAR @ FAR=1% | positive triplets (last epoch) | training time |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, runs in results.items():
        summary = summarise([run["model"] for run in runs])
        lines.append(
            f"| {name} | {100 * summary['eer'][0]:.1f}% ± {100 * summary['eer'][1]:.1f} "
            f"| {per_split_eer([run['model'] for run in runs])} "
            f"| {summary['auc'][0]:.3f} ± {summary['auc'][1]:.3f} "
            f"| {summary['tar_at_far_1pct'][0]:.2f} ± {summary['tar_at_far_1pct'][1]:.2f} "
            f"| {np.mean([run['fraction_positive_triplets'] for run in runs]):.3f} "
            f"| {np.mean([run['seconds'] for run in runs]) / 60:.1f} min |"
        )
    for name, runs in baselines.items():
        summary = summarise(runs)
        lines.append(
            f"| *{name}* (baseline) | {100 * summary['eer'][0]:.1f}% ± {100 * summary['eer'][1]:.1f} "
            f"| {per_split_eer(runs)} "
            f"| {summary['auc'][0]:.3f} ± {summary['auc'][1]:.3f} "
            f"| {summary['tar_at_far_1pct'][0]:.2f} ± {summary['tar_at_far_1pct'][1]:.2f} | | |"
        )
    note = (
        f"\nMean ± standard deviation over {len(splits)} identity splits (split seeds {', '.join(map(str, splits))}); "
        f"each split tests on all pairs of 10 identities never trained on.\n"
    )
    return header + "\n".join(lines) + "\n" + note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="base config (default: facetrip's defaults)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=section.key:value;... (repeatable)")
    parser.add_argument("--strategies", action="store_true", help="compare the five strategies (default without --variant)")
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="data source of every variant (default: the config's)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/compare"))
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args(argv)

    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    variants = dict(parse_variant(text) for text in args.variant)
    if args.strategies or not variants:
        variants = {**STRATEGY_VARIANTS, **variants}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    baselines: dict[str, list[dict]] = {}
    for split_seed in args.splits:
        for index, (name, overrides) in enumerate(variants.items()):
            slug = "".join(char if char.isalnum() else "_" for char in name)
            run_dir = args.work_dir / f"{slug}_split{split_seed}"
            result = train_and_evaluate(args.config, overrides, split_seed, run_dir, baselines=index == 0,
                                        data_source=args.data)
            results[name].append(result)
            for baseline, metrics in result["baselines"].items():
                baselines.setdefault(baseline, []).append(metrics)
            model = result["model"]
            print(f"split {split_seed} {name:28s} EER {100 * model['eer']:5.1f}%  AUC {model['auc']:.3f}  "
                  f"TAR@1% {model['tar_at_far_1pct']:.2f}  {result['seconds'] / 60:.1f} min", flush=True)
    table = markdown_table(results, baselines, args.splits)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
