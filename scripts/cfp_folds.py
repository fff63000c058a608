"""CFP with fine-tuning on its own protocol: each fold's model trains on the other nine folds' people.

CFP (Sengupta et al., WACV 2016) has 500 people in 10 identity-disjoint folds of 50; each fold
has 350 same and 350 different frontal-profile (FP) and frontal-frontal (FF) pairs. For each
fold k asked for, and each recipe (``--variant``):

1. a folder of links to the 450 people of the other nine folds is the training source (the
   run's own dev and test people, ``split.*``, come out of these 450, so ``auto`` weight
   interpolation chooses on CFP people it did not train on);
2. the run is trained with the recipe's overrides (``NAME=section.key:value;...``), and with
   ``--interpolations`` also saved at those weight shares (``scripts/interpolate_run.py``);
3. its model embeds CFP's photos, and fold k's pairs are scored by CFP's rule: accuracy at the
   threshold that maximises accuracy on the other nine folds' pairs (the training folds set
   the threshold), and fold k's EER and AUC, which need no threshold, for FP and FF;
4. with ``--lfw``, LFW's ``pairs.txt`` (10 folds) measures what the run forgot. A fold's
   training people include some of the 203 CFP people who are also in LFW (``in_lfw.txt``), so
   every pair of LFW that shows one of the run's training people is left out, for the run and
   for the pretrained network alike; the points lost compare the two on the same pairs.

The pretrained network (``pretrained``) is scored the same way, fold by fold.
Runs, links and scores are kept in ``--work-dir``: an interrupted comparison continues.

Usage::

    python scripts/cfp_folds.py --folds 1 2 3 --lfw --interpolations 0.5 \\
        --variant "fine-tuned 300 steps=train.epochs:10;train.steps_per_epoch:30" --out docs/reports/cfp_folds.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarking, compare_strategies, bench_lfw, interpolate_run

from benchmarking import log, write_report  # noqa: E402
from compare_strategies import is_finished_run_of, parse_variant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACETRIP_SHARED_DATA", REPO.parent / "shared" / "data"))
PROTOCOLS = ("FP", "FF")


def read_folds(cfp: Path) -> dict[str, object]:
    """CFP's two splits, ``{"FP": PathPairs, "FF": PathPairs}`` (folds 0 .. 9)."""
    from facetrip.evaluation.pairs_file import read_cfp_split

    return {protocol: read_cfp_split(cfp / "Protocol" / "Split" / protocol) for protocol in PROTOCOLS}


def people_of_fold(pairs, fold: int) -> set[str]:
    """The people (CFP folder names) in fold ``fold``'s pairs (0-based)."""
    chosen = np.asarray(pairs.folds) == fold
    return set(np.asarray(pairs.first_names)[chosen]) | set(np.asarray(pairs.second_names)[chosen])


def training_people_folder(images: Path, held_out: set[str], folder: Path) -> Path:
    """``folder`` filled with links to every person of ``images`` not in ``held_out`` (made once)."""
    people = sorted(path.name for path in images.iterdir() if path.is_dir() and path.name not in held_out)
    folder.mkdir(parents=True, exist_ok=True)
    for name in people:
        link = folder / name
        if not link.exists():
            link.symlink_to((images / name).resolve(), target_is_directory=True)
    return folder


def train_fold_run(overrides: dict, source: str, run_dir: Path) -> float:
    """Train one recipe on one fold's training people (unless already finished); its training seconds."""
    import shutil

    from facetrip.config import Config
    from facetrip.training import prepare_run_dir, train

    timing = run_dir / "training_seconds.json"
    config = Config()
    for key, value in {"data.source": source, **overrides}.items():
        config.set(key, value)
    if not is_finished_run_of(run_dir, config):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        prepare_run_dir(config, run_dir)
        log(f"training {run_dir.name} on {source} ...")
        started = time.perf_counter()
        train(config, run_dir)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return json.loads(timing.read_text())["seconds"]


def interpolated_run(run_dir: Path, share: float) -> Path:
    """``run_dir`` saved again at weight share ``share`` (scripts/interpolate_run.py), made once."""
    from interpolate_run import main as interpolate

    target = run_dir.with_name(f"{run_dir.name}_a{share:g}")
    if not (target / "metadata.json").is_file():
        if interpolate([str(run_dir), str(share), "-o", str(target)]) != 0:
            raise SystemExit(f"interpolating {run_dir} at {share} failed")
    return target


def pair_distances(run_dir: Path, images: Path, *pair_sets) -> list[np.ndarray]:
    """The distances of each pair set (CFP split or LFW pairs file) under the run's model: a (M_i,) array each.

    The photos the sets use are embedded once (FF and FP share their frontal photos), each
    as the run's model reads it (its aligned face chip, from the chip cache when it was
    aligned before).
    """
    from facetrip.data.records import load_model_faces
    from facetrip.embedding import embed_faces
    from facetrip.evaluation.pairs import distances_of_pairs
    from facetrip.evaluation.report import pairs_from_file
    from facetrip.runs import read_metadata
    from facetrip.runs.loaded_run import Run

    run = Run.load(run_dir)
    faces, _ = load_model_faces(f"folder:{images}", face_chips=run.face_chips)
    indexed = [pairs_from_file(named, faces, images) for named in pair_sets]
    used, inverse = np.unique(np.concatenate([np.concatenate([pairs.first, pairs.second]) for pairs in indexed]),
                              return_inverse=True)
    chips, _ = run.prepare_faces(faces.take(used))
    embeddings = embed_faces(run.model, chips, run.image_size, run.channels)  # (U, D)
    metric, distances, start = read_metadata(run_dir)["metric"], [], 0
    for pairs in indexed:
        first, second = inverse[start: start + len(pairs)], inverse[start + len(pairs): start + 2 * len(pairs)]
        distances.append(distances_of_pairs(embeddings.__getitem__, first, second, metric))  # (M_i,)
        start += 2 * len(pairs)
    return distances


def cached_distances(caches: list[Path], compute) -> list[np.ndarray]:
    """``compute()``'s distances, one array per cache file (``.npy``), kept so that a rerun does not embed again."""
    if all(cache.is_file() for cache in caches):
        return [np.load(cache) for cache in caches]
    computed = compute()
    for cache, distances in zip(caches, computed):
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, distances)
    return computed


def fold_scores(distances: np.ndarray, pairs, fold: int) -> dict:
    """Fold ``fold``'s accuracy (threshold from the other folds' pairs), EER and AUC on its pairs alone."""
    from facetrip.evaluation.metrics import k_fold_accuracy, verification_metrics

    folds, same = np.asarray(pairs.folds), np.asarray(pairs.same)
    accuracy = k_fold_accuracy(distances, same, folds)
    position = list(np.unique(folds)).index(fold)
    held_out = folds == fold
    alone = verification_metrics(distances[held_out], same[held_out])
    return {"accuracy": accuracy["fold_accuracies"][position], "eer": alone["eer"], "auc": alone["auc"]}


def lfw_names_of(cfp_people: set[str], in_lfw: Path) -> set[str]:
    """The LFW names (``First_Last``) of the CFP people in ``cfp_people`` who are also in LFW."""
    names = set()
    for line in in_lfw.read_text().splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        folder, name = line.split("\t", 1)
        if folder.strip() in cfp_people:
            names.add(name.strip().replace(" ", "_"))
    return names


def lfw_accuracy(distances: np.ndarray, lfw_pairs, left_out_names: set[str]) -> tuple[float, int]:
    """LFW 10-fold accuracy over the pairs that show none of ``left_out_names``; and how many pairs were left out."""
    from facetrip.evaluation.metrics import k_fold_accuracy

    first, second = np.asarray(lfw_pairs.first_names), np.asarray(lfw_pairs.second_names)
    kept = ~(np.isin(first, list(left_out_names)) | np.isin(second, list(left_out_names)))
    accuracy = k_fold_accuracy(distances[kept], np.asarray(lfw_pairs.same)[kept], np.asarray(lfw_pairs.folds)[kept])
    return accuracy["mean"], int((~kept).sum())


def markdown(rows: list[dict], folds: list[int], command: str, lfw: bool) -> str:
    """The table: one row per recipe, means over the folds, per-fold FP accuracies."""
    import datetime

    lines = [
        f"# CFP, fine-tuned per fold (folds {', '.join(str(fold + 1) for fold in folds)})",
        "",
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores. Command: `{command}`. Each fold's run "
        "trains on the other nine folds' 450 people; accuracy takes the threshold that maximises accuracy on the "
        "other nine folds' pairs; EER and AUC are on the held-out fold's pairs alone."
        + (" LFW: pairs.txt, 10 folds, without the pairs that show one of the fold's training people; points lost "
           "against the pretrained network on the same pairs." if lfw else ""),
        "",
        "| recipe | CFP-FP accuracy | FP per fold | FP EER | FP AUC | CFP-FF accuracy | FF EER |"
        + (" LFW accuracy | LFW points lost |" if lfw else "") + " training time |",
        "|---|---|---|---|---|---|---|" + ("---|---|" if lfw else "") + "---|",
    ]
    for row in rows:
        scores = row["folds"]

        def mean(protocol, key):
            return 100 * np.mean([score[protocol][key] for score in scores])

        def spread(protocol, key):
            return 100 * np.std([score[protocol][key] for score in scores])

        line = (
            f"| {row['name']} | {mean('FP', 'accuracy'):.2f}% ± {spread('FP', 'accuracy'):.2f} "
            f"| {' / '.join('%.1f' % (100 * score['FP']['accuracy']) for score in scores)} "
            f"| {mean('FP', 'eer'):.2f}% | {np.mean([score['FP']['auc'] for score in scores]):.4f} "
            f"| {mean('FF', 'accuracy'):.2f}% ± {spread('FF', 'accuracy'):.2f} | {mean('FF', 'eer'):.2f}% |"
        )
        if lfw:
            lost = [score["lfw_lost"] for score in scores]
            line += (f" {100 * np.mean([score['lfw'] for score in scores]):.2f}% "
                     f"| {100 * np.mean(lost):.2f} ({' / '.join('%.2f' % (100 * value) for value in lost)}) |")
        seconds = [score["seconds"] for score in scores if score["seconds"] is not None]
        line += f" {np.mean(seconds) / 60:.1f} min |" if seconds else " – |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(1, 11)), help="CFP folds, 1 .. 10")
    parser.add_argument("--variant", action="append", default=[], help="NAME=section.key:value;... (repeatable)")
    parser.add_argument("--interpolations", type=float, nargs="*", default=[],
                        help="also score each run saved at these weight shares")
    parser.add_argument("--lfw", action="store_true", help="also LFW pairs.txt, and the points lost")
    parser.add_argument("--cfp", type=Path, default=SHARED / "cfp", help="CFP folder with Data/ and Protocol/")
    parser.add_argument("--lfw-dir", type=Path, default=SHARED / "lfw", help="LFW folder with images/ and pairs.txt")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "cfp_folds")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not (args.cfp / "Protocol" / "Split" / "FP").is_dir():
        print(f"CFP not found: {args.cfp} (set --cfp or FACETRIP_SHARED_DATA).", file=sys.stderr)
        return 2
    if args.lfw and not (args.lfw_dir / "pairs.txt").is_file():
        print(f"LFW not found: {args.lfw_dir / 'pairs.txt'} (set --lfw-dir).", file=sys.stderr)
        return 2
    if any(not 1 <= fold <= 10 for fold in args.folds):
        print("--folds are 1 .. 10.", file=sys.stderr)
        return 2

    from facetrip.evaluation.pairs_file import read_pairs
    from facetrip.tf_runtime import import_tensorflow

    from bench_lfw import pretrained_run

    import_tensorflow()
    images = args.cfp / "Data" / "Images"
    splits = read_folds(args.cfp)
    lfw_pairs = read_pairs(args.lfw_dir / "pairs.txt") if args.lfw else None
    folds = [fold - 1 for fold in args.folds]
    pretrained = pretrained_run(args.work_dir, flip_tta=True)
    scores_dir = args.work_dir / "scores"

    def score(run_dir: Path, fold: int, trained_people: set[str], seconds: float | None) -> dict:
        result = {"seconds": seconds}
        protocol_distances = cached_distances([scores_dir / f"{run_dir.name}-{protocol}.npy" for protocol in splits],
                                              lambda: pair_distances(run_dir, images, *splits.values()))
        for (protocol, pairs), distances in zip(splits.items(), protocol_distances):
            result[protocol] = fold_scores(distances, pairs, fold)
        if lfw_pairs is not None:
            left_out = lfw_names_of(trained_people, args.cfp / "in_lfw.txt")
            [run_lfw] = cached_distances([scores_dir / f"{run_dir.name}-lfw.npy"],
                                         lambda: pair_distances(run_dir, args.lfw_dir / "images", lfw_pairs))
            [base_lfw] = cached_distances([scores_dir / f"{pretrained.name}-lfw.npy"],
                                          lambda: pair_distances(pretrained, args.lfw_dir / "images", lfw_pairs))
            result["lfw"], result["lfw_pairs_left_out"] = lfw_accuracy(run_lfw, lfw_pairs, left_out)
            result["lfw_lost"] = lfw_accuracy(base_lfw, lfw_pairs, left_out)[0] - result["lfw"]
        log(f"{run_dir.name} fold {fold + 1}: FP {100 * result['FP']['accuracy']:.2f}%, FF {100 * result['FF']['accuracy']:.2f}%"
            + (f", LFW {100 * result['lfw']:.2f}% ({100 * result['lfw_lost']:+.2f} lost)" if lfw_pairs is not None else ""))
        return result

    rows = {"pretrained face_resnet + flip": []}
    for fold in folds:
        held_out = people_of_fold(splits["FP"], fold)
        trained_people = set(path.name for path in images.iterdir() if path.is_dir()) - held_out
        rows["pretrained face_resnet + flip"].append(score(pretrained, fold, set(), None))
        source = f"folder:{training_people_folder(images, held_out, args.work_dir / f'people_fold{fold + 1}')}"
        for text in args.variant:
            name, overrides = parse_variant(text)
            slug = "".join(character if character.isalnum() else "_" for character in name)
            run_dir = args.work_dir / f"{slug}_fold{fold + 1}"
            seconds = train_fold_run(overrides, source, run_dir)
            rows.setdefault(name, []).append(score(run_dir, fold, trained_people, seconds))
            for share in args.interpolations:
                rows.setdefault(f"{name}, weight share {share:g}", []).append(
                    score(interpolated_run(run_dir, share), fold, trained_people, seconds))
    command = ".venv/bin/python scripts/cfp_folds.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown([{"name": name, "folds": scores} for name, scores in rows.items()], folds, command, args.lfw)
    print(table)
    write_report(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
