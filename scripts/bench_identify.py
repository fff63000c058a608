"""Identification, clustering and search at scale, measured: LFW through facetrip's own photo path, and random vectors.

Three parts (``--parts``):

- ``identification``: open-set identification on LFW. People with 2+ photos: one photo
  each in the gallery, the rest are known probes; people with one photo are the unknown
  probes. Rank-1 (and rank-5) accuracy of the known probes, and the detection-and-
  identification rate at a false-alarm rate of 1% on the unknown probes, and at the run's
  own threshold; over ``--seeds`` draws of the gallery photos. A second protocol, people
  with 4+ photos and 3 gallery photos each, compares the two person scores (nearest photo,
  mean embedding), which agree on one-photo galleries.
- ``clustering``: all LFW photos of people with 4+ photos (610 people), clustered with
  every algorithm of :mod:`facetrip.identification.clustering` at the run's threshold;
  pairwise and BCubed precision / recall / F, NMI, the number of clusters against 610, the time.
- ``scale``: exact search against faiss's approximate search on random unit vectors
  (10^4, 10^5, 10^6 by default): index build time, query latency, memory, recall@1.

Every LFW photo goes the way a user's gallery photo goes (:mod:`facetrip.identification.photos`):
decoded, its face detected and aligned (cached), embedded by the run's model. Photos
without a detected face are left out, as `facetrip index` and `facetrip cluster` leave
them out (counted in the report). The embeddings of each run are cached in ``--work-dir``.

Usage::

    python scripts/bench_identify.py --run pretrained=/tmp/identify/pretrained --run default=/tmp/identify/default \\
        --output docs/reports/bench_identify.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = Path(os.environ.get("FACETRIP_SHARED_DATA", REPO.parent / "shared" / "data")) / "lfw"
PARTS = ("identification", "clustering", "scale")


# ----------------------------------------------------------------------------- LFW embeddings


def lfw_embeddings(run_dir: Path, lfw: Path, work_dir: Path) -> dict:
    """Every LFW photo embedded by a run through facetrip's gallery path, cached by the model's fingerprint."""
    from facetrip.identification.index import model_fingerprint
    from facetrip.identification.photos import embed_photos, gallery_photos
    from facetrip.inference import Run
    from facetrip.runs import read_metadata

    fingerprint = model_fingerprint(run_dir, read_metadata(run_dir))
    cache = work_dir / f"lfw-{fingerprint[:16]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files} | {"seconds": 0.0, "cached": True}
    started = time.perf_counter()
    run = Run.load(run_dir)
    photos = gallery_photos(f"folder:{lfw / 'images'}")
    embedded = embed_photos(run, photos.faces, on_stage=lambda message: print(message, flush=True))
    faces = photos.faces
    result = {
        "embeddings": embedded.embeddings,
        "identities": np.asarray(faces.identity_names, dtype=str)[faces.labels],
        "files": np.asarray(faces.file_names, dtype=str),
        "faces_detected": embedded.faces_detected,
        "metric": np.asarray(run.metadata["metric"]),
        "threshold": np.asarray(float(run.metadata["threshold"])),
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result | {"seconds": time.perf_counter() - started, "cached": False}


def with_faces(data: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """``(embeddings, person labels, photos left out)`` of the photos whose face was found."""
    found = data["faces_detected"] != 0
    _, labels = np.unique(data["identities"][found], return_inverse=True)
    return data["embeddings"][found], labels.reshape(-1), int((~found).sum())


# ----------------------------------------------------------------------------- identification


def open_set_split(labels: np.ndarray, gallery_photos: int, min_photos: int, seed: int):
    """Gallery rows, known-probe rows and unknown-probe rows for one draw.

    People with at least ``min_photos`` photos put ``gallery_photos`` random photos in the
    gallery and the rest are known probes; people with exactly one photo are unknown probes.
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    gallery, known = [], []
    for person in np.flatnonzero(counts >= min_photos):
        rows = rng.permutation(np.flatnonzero(labels == person))
        gallery.extend(rows[:gallery_photos])
        known.extend(rows[gallery_photos:])
    unknown = np.flatnonzero(counts[labels] == 1)
    return np.asarray(gallery), np.asarray(known), unknown


def identification_draw(embeddings, labels, metric, threshold, gallery_photos, min_photos, seed, score):
    from facetrip.identification.metrics import dir_at_false_alarm, open_set_rates
    from facetrip.identification.search import score_gallery, top_people

    gallery, known, unknown = open_set_split(labels, gallery_photos, min_photos, seed)
    people, gallery_labels = np.unique(labels[gallery], return_inverse=True)
    vectors, vector_labels = score_gallery(embeddings[gallery], gallery_labels.reshape(-1), len(people), score)
    started = time.perf_counter()
    known_matches = top_people(embeddings[known], vectors, vector_labels, metric, k=5)
    unknown_matches = top_people(embeddings[unknown], vectors, vector_labels, metric, k=1)
    seconds = time.perf_counter() - started
    truth = np.searchsorted(people, labels[known])
    correct = people[known_matches.people[:, 0]] == labels[known]
    rank5 = np.any(known_matches.people == truth[:, None], axis=1)
    at_far = dir_at_false_alarm(known_matches.distances[:, 0], correct, unknown_matches.distances[:, 0], 0.01)
    at_run = open_set_rates(known_matches.distances[:, 0], correct, unknown_matches.distances[:, 0], threshold)
    return {"gallery_people": len(people), "gallery_photos": len(gallery), "known": len(known), "unknown": len(unknown),
            "rank1": float(correct.mean()), "rank5": float(rank5.mean()), "dir_at_far_1pct": at_far["dir"],
            "threshold_at_far_1pct": at_far["threshold"], "dir_at_run": at_run["dir"], "false_alarm_at_run": at_run["false_alarm"],
            "search_seconds": seconds}


def identification(data: dict, seeds: int) -> dict:
    embeddings, labels, left_out = with_faces(data)
    metric, threshold = str(data["metric"]), float(data["threshold"])
    protocols = {"one photo a person (2+ photos)": (1, 2, ("nearest",)),
                 "three photos a person (4+ photos)": (3, 4, ("nearest", "mean"))}
    results = {}
    for name, (gallery_photos, min_photos, scores) in protocols.items():
        for score in scores:
            draws = [identification_draw(embeddings, labels, metric, threshold, gallery_photos, min_photos, seed, score)
                     for seed in range(seeds)]
            results[f"{name}, {score}"] = {key: [draw[key] for draw in draws] for key in draws[0]}
    return {"left_out": left_out, "threshold": threshold, "metric": metric, "protocols": results}


# ----------------------------------------------------------------------------- clustering


def clustering(data: dict) -> dict:
    from facetrip.identification.clustering import ALGORITHMS, cluster_embeddings
    from facetrip.identification.metrics import clustering_scores

    counts = np.bincount(np.unique(data["identities"], return_inverse=True)[1].reshape(-1))
    _, all_labels = np.unique(data["identities"], return_inverse=True)
    chosen = counts[all_labels.reshape(-1)] >= 4  # people with 4+ photos, faces found or not
    labels = all_labels.reshape(-1)[chosen]
    found = data["faces_detected"][chosen] != 0
    embeddings = data["embeddings"][chosen][found]
    metric, threshold = str(data["metric"]), float(data["threshold"])
    rows = {}
    for algorithm in ALGORITHMS:
        started = time.perf_counter()
        clusters = cluster_embeddings(embeddings, metric, threshold, algorithm)
        seconds = time.perf_counter() - started
        predicted = np.arange(len(labels)) + clusters.max() + 1  # photos without a face: each alone, as `cluster` lists them
        predicted[found] = clusters
        scores = clustering_scores(labels, predicted)
        sizes = np.bincount(np.unique(predicted, return_inverse=True)[1].reshape(-1))
        rows[algorithm] = {**scores, "clusters_of_two_or_more": int((sizes >= 2).sum()), "alone": int((sizes == 1).sum()),
                           "seconds": seconds}
        print(f"  {algorithm}: {json.dumps(rows[algorithm])}", flush=True)
    return {"photos": int(len(labels)), "people": int(len(np.unique(labels))), "without_face": int((~found).sum()),
            "threshold": threshold, "metric": metric, "algorithms": rows}


# ----------------------------------------------------------------------------- scale


def random_unit(rng, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale(sizes: list[int], dim: int, queries: int, seed: int = 0) -> list[dict]:
    """Exact and approximate search on random unit vectors; known probes are gallery vectors plus noise."""
    import psutil

    from facetrip.identification import ann
    from facetrip.identification.search import top_people

    process = psutil.Process()
    rows = []
    for size in sizes:
        rng = np.random.default_rng(seed)
        gallery = random_unit(rng, size, dim)
        sources = rng.choice(size, queries // 2, replace=False)
        near = gallery[sources] + 0.05 * rng.standard_normal((queries // 2, dim), dtype=np.float32)
        probes = np.vstack([near / np.linalg.norm(near, axis=1, keepdims=True), random_unit(rng, queries - queries // 2, dim)])
        labels = np.arange(size)
        started = time.perf_counter()
        truth = top_people(probes, gallery, labels, "euclidean", k=1).people[:, 0]
        batched = (time.perf_counter() - started) / len(probes)
        started = time.perf_counter()
        for probe in probes[:20]:
            top_people(probe[None], gallery, labels, "euclidean", k=1)
        single = (time.perf_counter() - started) / 20
        rows.append({"size": size, "method": "exact (matrix product)", "build_s": 0.0, "single_ms": single * 1e3,
                     "batched_ms": batched * 1e3, "memory_mib": gallery.nbytes / 2**20, "recall_known": 1.0,
                     "recall_strangers": 1.0})
        print(f"  {rows[-1]}", flush=True)
        if not ann.available():
            continue
        before = process.memory_info().rss
        started = time.perf_counter()
        graph = ann.build(gallery, "euclidean")
        build = time.perf_counter() - started
        memory = (process.memory_info().rss - before) / 2**20
        for candidates in (32, 64, 128):
            started = time.perf_counter()
            found = ann.nearest_rows(graph, probes, 1, "euclidean", search_candidates=candidates)[:, 0]
            batched = (time.perf_counter() - started) / len(probes)
            started = time.perf_counter()
            for probe in probes[:100]:
                ann.nearest_rows(graph, probe[None], 1, "euclidean", search_candidates=candidates)
            single = (time.perf_counter() - started) / 100
            hits = found == truth
            rows.append({"size": size, "method": f"faiss HNSW{ann.GRAPH_NEIGHBOURS}, efSearch {candidates}", "build_s": build,
                         "single_ms": single * 1e3, "batched_ms": batched * 1e3,
                         "memory_mib": max(memory, len(graph) / 2**20), "graph_mib": len(graph) / 2**20,
                         "recall_known": float(hits[:queries // 2].mean()), "recall_strangers": float(hits[queries // 2:].mean())})
            print(f"  {rows[-1]}", flush=True)
        del graph
    return rows


# ----------------------------------------------------------------------------- report


def mean_sd(values) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean() * 100:.2f}% ± {values.std() * 100:.2f}"


def markdown(results: dict, command: str) -> str:
    import datetime

    lines = [f"# Identification, clustering and search at scale", "",
             f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores (shared with other jobs: times are "
             f"upper bounds). Command: `{command}`.", ""]
    for run_name, run in results.get("runs", {}).items():
        lines += [f"## {run_name} ({run['path']})", ""]
        if "identification" in run:
            found = run["identification"]
            lines += [f"### Open-set identification on LFW ({found['metric']}, run threshold {found['threshold']:.4f})", "",
                      f"{found['left_out']} photos without a detected face left out. Mean ± sd over "
                      f"{len(next(iter(found['protocols'].values()))['rank1'])} draws of the gallery photos.", "",
                      "| protocol, score | gallery people | known / unknown probes | rank-1 | rank-5 | DIR @ FAR 1% "
                      "(threshold) | run threshold: DIR | run threshold: false alarms |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, row in found["protocols"].items():
                lines.append(f"| {name} | {row['gallery_people'][0]:,} | {row['known'][0]:,} / {row['unknown'][0]:,} | "
                             f"{mean_sd(row['rank1'])} | {mean_sd(row['rank5'])} | {mean_sd(row['dir_at_far_1pct'])} "
                             f"({np.mean(row['threshold_at_far_1pct']):.3f}) | {mean_sd(row['dir_at_run'])} | "
                             f"{mean_sd(row['false_alarm_at_run'])} |")
            lines.append("")
        if "clustering" in run:
            found = run["clustering"]
            lines += [f"### Clustering LFW people with 4+ photos ({found['photos']:,} photos, {found['people']} people, "
                      f"threshold {found['threshold']:.4f})", "",
                      f"{found['without_face']} photos without a detected face are not clustered (each counts as "
                      "alone). Clusters: of two or more photos / photos alone.", "",
                      "| algorithm | pairwise P | pairwise R | pairwise F | BCubed P | BCubed R | BCubed F | NMI | "
                      "clusters (vs 610) | alone | time |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for algorithm, row in found["algorithms"].items():
                lines.append(f"| {algorithm} | {row['pairwise_precision']:.3f} | {row['pairwise_recall']:.3f} | "
                             f"{row['pairwise_f']:.3f} | {row['bcubed_precision']:.3f} | {row['bcubed_recall']:.3f} | "
                             f"{row['bcubed_f']:.3f} | {row['nmi']:.3f} | {row['clusters_of_two_or_more']} | {row['alone']} | "
                             f"{row['seconds']:.1f} s |")
            lines.append("")
        if "embedding_seconds" in run:
            lines += [f"Embedding the {run['photos']:,} LFW photos took {run['embedding_seconds']:.0f} s"
                      + (" (cached)" if run.get("cached") else "") + ".", ""]
    if results.get("scale"):
        lines += ["## Search at scale (random unit vectors, 128-d, euclidean)", "",
                  "Known probes: a gallery vector plus N(0, 0.05^2) noise per value; strangers: fresh random unit "
                  "vectors (their nearest neighbour is barely nearer than the rest: the hardest case). Latency: one "
                  "probe per call (as `identify` on a few photos) and per probe in a batch of all probes.", "",
                  "| gallery | method | build | latency, one probe | latency, batched | memory | recall@1 known | "
                  "recall@1 strangers |", "|---|---|---|---|---|---|---|---|"]
        for row in results["scale"]:
            lines.append(f"| {row['size']:,} | {row['method']} | {row['build_s']:.1f} s | {row['single_ms']:.2f} ms | "
                         f"{row['batched_ms']:.3f} ms | {row['memory_mib']:.0f} MiB | {row['recall_known']:.3f} | "
                         f"{row['recall_strangers']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR", help="A run to measure (repeatable).")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder (images/<name>/<photo>).")
    parser.add_argument("--parts", default=",".join(PARTS), help="Comma-separated: " + ", ".join(PARTS) + ".")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Gallery sizes of the scale part.")
    parser.add_argument("--queries", type=int, default=1000, help="Probes of the scale part.")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/facetrip-bench-identify"), help="Embedding cache.")
    parser.add_argument("--output", type=Path, help="Markdown report to write.")
    parser.add_argument("--json", type=Path, help="Raw results to write.")
    arguments = parser.parse_args(argv)
    parts = set(arguments.parts.split(","))
    results: dict = {"runs": {}}
    lfw_parts = parts & {"identification", "clustering"}
    if lfw_parts and not (arguments.lfw / "images").is_dir():
        print(f"LFW not found at {arguments.lfw}: skipping {', '.join(sorted(lfw_parts))}.")
        lfw_parts = set()
    for spec in arguments.run if lfw_parts else []:
        name, _, path = spec.partition("=")
        print(f"{name}: embedding LFW ...", flush=True)
        data = lfw_embeddings(Path(path), arguments.lfw, arguments.work_dir)
        run = {"path": path, "photos": int(len(data["files"])), "embedding_seconds": data["seconds"], "cached": data["cached"]}
        if "identification" in lfw_parts:
            print(f"{name}: identification ...", flush=True)
            run["identification"] = identification(data, arguments.seeds)
        if "clustering" in lfw_parts:
            print(f"{name}: clustering ...", flush=True)
            run["clustering"] = clustering(data)
        results["runs"][name] = run
    if "scale" in parts:
        print("scale ...", flush=True)
        results["scale"] = scale([int(size) for size in arguments.sizes.split(",")], 128, arguments.queries)
    command = "python scripts/bench_identify.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(results, command)
    print(report)
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(report + "\n")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
