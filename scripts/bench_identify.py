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
- ``scale``: exact search against faiss's approximate search (IVF-Flat) on random unit
  vectors (10^4, 10^5, 10^6 by default): index build time, query latency, memory, recall@1.
- ``libraries``: the approximate-search libraries that pip installs (faiss IVF-Flat and
  HNSW, hnswlib, USearch), one thread each, at ``--library-size`` vectors: build time,
  latency and recall@1; how the library was chosen.

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
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = Path(os.environ.get("FACETRIP_SHARED_DATA", REPO.parent / "shared" / "data")) / "lfw"
PARTS = ("identification", "clustering", "scale", "libraries")


# ----------------------------------------------------------------------------- LFW embeddings


def lfw_embeddings(run_dir: Path, lfw: Path, work_dir: Path) -> dict:
    """Every LFW photo embedded by a run through facetrip's gallery path, cached by the model's fingerprint."""
    from facetrip.identification.index import model_fingerprint
    from facetrip.identification.photos import embed_photos, gallery_photos
    from facetrip.runs.loaded_run import Run
    from facetrip.runs import read_metadata

    fingerprint = model_fingerprint(run_dir, read_metadata(run_dir))
    cache = work_dir / f"lfw-{fingerprint[:16]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files} | {"seconds": float(saved["seconds"]), "cached": True}
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
        "seconds": np.asarray(time.perf_counter() - started),
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result | {"seconds": float(result["seconds"]), "cached": False}


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


def identification_draw(embeddings, labels, metric, metadata, gallery_photos, min_photos, seed, score):
    from facetrip.evaluation.calibration import verification_threshold
    from facetrip.identification.metrics import dir_at_false_alarm, open_set_rates
    from facetrip.identification.search import pair_far_for_false_alarm, score_gallery, top_people

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
    at_run = open_set_rates(known_matches.distances[:, 0], correct, unknown_matches.distances[:, 0], metadata["threshold"])
    # `identify --false-alarm 0.01`: the threshold for 1% of strangers, from the run's own calibration pairs
    gallery_threshold = verification_threshold(metadata, None, pair_far_for_false_alarm(0.01, len(people)))[0]
    at_gallery = open_set_rates(known_matches.distances[:, 0], correct, unknown_matches.distances[:, 0], gallery_threshold)
    return {"gallery_people": len(people), "gallery_photos": len(gallery), "known": len(known), "unknown": len(unknown),
            "rank1": float(correct.mean()), "rank5": float(rank5.mean()), "dir_at_far_1pct": at_far["dir"],
            "threshold_at_far_1pct": at_far["threshold"], "dir_at_run": at_run["dir"], "false_alarm_at_run": at_run["false_alarm"],
            "gallery_threshold": gallery_threshold, "dir_at_gallery": at_gallery["dir"],
            "false_alarm_at_gallery": at_gallery["false_alarm"], "search_seconds": seconds}


def identification(data: dict, metadata: dict, seeds: int) -> dict:
    embeddings, labels, left_out = with_faces(data)
    metric, threshold = str(data["metric"]), float(data["threshold"])
    protocols = {"one photo a person (2+ photos)": (1, 2, ("nearest",)),
                 "three photos a person (4+ photos)": (3, 4, ("nearest", "mean"))}
    results = {}
    for name, (gallery_photos, min_photos, scores) in protocols.items():
        for score in scores:
            draws = [identification_draw(embeddings, labels, metric, metadata, gallery_photos, min_photos, seed, score)
                     for seed in range(seeds)]
            results[f"{name}, {score}"] = {key: [draw[key] for draw in draws] for key in draws[0]}
    return {"left_out": left_out, "threshold": threshold, "metric": metric, "protocols": results}


# ----------------------------------------------------------------------------- clustering


def clustering(data: dict, metadata: dict) -> dict:
    """Every algorithm at the run's threshold, and the threshold-driven ones at the stricter thresholds of FAR 0.1% and 0.01%."""
    from facetrip.evaluation.calibration import verification_threshold
    from facetrip.identification.clustering import ALGORITHMS, cluster_embeddings
    from facetrip.identification.metrics import clustering_scores

    _, all_labels = np.unique(data["identities"], return_inverse=True)
    all_labels = all_labels.reshape(-1)
    chosen = np.bincount(all_labels)[all_labels] >= 4  # people with 4+ photos, faces found or not
    labels = all_labels[chosen]
    found = data["faces_detected"][chosen] != 0
    embeddings = data["embeddings"][chosen][found]
    metric, threshold = str(data["metric"]), float(data["threshold"])
    settings = [(algorithm, "run", threshold) for algorithm in ALGORITHMS]
    for far in (0.001, 0.0001):
        stricter = verification_threshold(metadata, None, far)[0]
        settings += [(algorithm, f"FAR {far * 100:g}%", stricter) for algorithm in ALGORITHMS if algorithm != "hdbscan"]
    rows = []
    for algorithm, rule, value in settings:
        started = time.perf_counter()
        clusters = cluster_embeddings(embeddings, metric, value, algorithm)
        seconds = time.perf_counter() - started
        predicted = np.arange(len(labels)) + clusters.max() + 1  # photos without a face: each alone, as `cluster` lists them
        predicted[found] = clusters
        scores = clustering_scores(labels, predicted)
        sizes = np.bincount(np.unique(predicted, return_inverse=True)[1].reshape(-1))
        rows.append({"algorithm": algorithm, "threshold_rule": rule, "threshold": value, **scores,
                     "clusters_of_two_or_more": int((sizes >= 2).sum()), "alone": int((sizes == 1).sum()), "seconds": seconds})
        print(f"  {json.dumps(rows[-1])}", flush=True)
    return {"photos": int(len(labels)), "people": int(len(np.unique(labels))), "without_face": int((~found).sum()),
            "threshold": threshold, "metric": metric, "algorithms": rows}


# ----------------------------------------------------------------------------- scale


def random_unit(rng, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def probes_for(rng, gallery: np.ndarray, count: int) -> np.ndarray:
    """Half known probes (gallery vectors plus N(0, 0.05^2) noise per value), half strangers (fresh random vectors)."""
    sources = rng.choice(len(gallery), count // 2, replace=False)
    near = gallery[sources] + 0.05 * rng.standard_normal((count // 2, gallery.shape[1]), dtype=np.float32)
    return np.vstack([near / np.linalg.norm(near, axis=1, keepdims=True), random_unit(rng, count - count // 2, gallery.shape[1])])


def timed(function, probes: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    """``(answers of all probes in one call, seconds per probe batched, seconds per probe one at a time)``."""
    started = time.perf_counter()
    answers = function(probes)
    batched = (time.perf_counter() - started) / len(probes)
    started = time.perf_counter()
    for probe in probes[:single]:
        function(probe[None])
    return answers, batched, (time.perf_counter() - started) / single


def scale_row(size, method, build, batched, single, memory, hits, queries) -> dict:
    return {"size": size, "method": method, "build_s": build, "batched_ms": batched * 1e3, "single_ms": single * 1e3,
            "memory_mib": memory / 2**20, "recall_known": float(hits[:queries // 2].mean()),
            "recall_strangers": float(hits[queries // 2:].mean())}


def scale(sizes: list[int], dim: int, queries: int, seed: int = 0) -> list[dict]:
    """facetrip's exact search against its faiss IVF-Flat search, on random unit vectors."""
    from facetrip.identification import ann
    from facetrip.identification.search import ExactSearch

    rows = []
    for size in sizes:
        rng = np.random.default_rng(seed)
        gallery = random_unit(rng, size, dim)
        probes = probes_for(rng, gallery, queries)
        started = time.perf_counter()
        exact = ExactSearch(gallery, np.arange(size), "euclidean")  # the norms, once
        build = time.perf_counter() - started
        truth, batched, single = timed(lambda batch: exact.top_people(batch, 1).people[:, 0], probes, 20)
        rows.append(scale_row(size, "exact (matrix product)", build, batched, single, gallery.nbytes, truth == truth, queries))
        print(f"  {rows[-1]}", flush=True)
        if not ann.available():
            continue
        started = time.perf_counter()
        serialised = ann.build(gallery, "euclidean")
        index = ann.load(serialised)
        build = time.perf_counter() - started
        for lists in (16, 64, 128):
            found, batched, single = timed(lambda batch: ann.nearest_rows(index, batch, 1, "euclidean", lists)[:, 0], probes, 100)
            rows.append(scale_row(size, f"faiss IVF-Flat, {ann.list_count(size)} lists, {lists} searched", build, batched,
                                  single, len(serialised), found == truth, queries))
            print(f"  {rows[-1]}", flush=True)
    return rows


def saved_size(save) -> int:
    """Bytes of an index as its library saves it (what it holds in memory, give or take)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index"
        save(str(path))
        return path.stat().st_size


def libraries(size: int, dim: int, queries: int, seed: int = 0) -> list[dict]:
    """Approximate-search libraries side by side on one thread each: faiss (IVF-Flat, HNSW), hnswlib, USearch."""
    rng = np.random.default_rng(seed)
    gallery = random_unit(rng, size, dim)
    probes = probes_for(rng, gallery, queries)
    truth = np.argmax(probes @ gallery.T, axis=1)
    candidates = []
    try:
        import faiss

        faiss.omp_set_num_threads(1)

        def faiss_ivf():
            from facetrip.identification import ann

            serialised = ann.build(gallery, "euclidean")
            index = ann.load(serialised)
            search = lambda value, batch: ann.nearest_rows(index, batch, 1, "euclidean", value)[:, 0]  # noqa: E731
            return index, "nprobe", (16, 64, 128), search, len(serialised)

        def faiss_hnsw():
            index = faiss.IndexHNSWFlat(dim, 32)
            index.hnsw.efConstruction = 80
            index.add(gallery)

            def search(value, batch):
                index.hnsw.efSearch = value
                return index.search(batch, 1)[1][:, 0]
            return index, "efSearch", (32, 64, 128), search, len(faiss.serialize_index(index))

        candidates += [("faiss IVF-Flat", faiss_ivf), ("faiss HNSW, M 32, efConstruction 80", faiss_hnsw)]
    except ImportError:
        pass
    try:
        import hnswlib

        def hnsw():
            index = hnswlib.Index(space="l2", dim=dim)
            index.init_index(max_elements=size, ef_construction=80, M=32)
            index.add_items(gallery, num_threads=1)

            def search(value, batch):
                index.set_ef(value)
                return index.knn_query(batch, k=1, num_threads=1)[0][:, 0]
            return index, "ef", (32, 64, 128), search, saved_size(index.save_index)

        candidates.append(("hnswlib, M 32, ef_construction 80", hnsw))
    except ImportError:
        pass
    try:
        from usearch.index import Index

        def usearch():
            index = Index(ndim=dim, metric="l2sq", connectivity=32, expansion_add=80)
            index.add(np.arange(size), gallery, threads=1)

            def search(value, batch):
                index.expansion_search = value
                return np.asarray(index.search(batch, 1, threads=1).keys).reshape(len(batch), -1)[:, 0]
            return index, "expansion_search", (32, 64, 128), search, saved_size(index.save)

        candidates.append(("USearch, connectivity 32, expansion_add 80", usearch))
    except ImportError:
        pass
    rows = []
    for name, make in candidates:
        started = time.perf_counter()
        index, knob, values, search, memory = make()
        build = time.perf_counter() - started
        for value in values:
            found, batched, single = timed(lambda batch: search(value, batch), probes, 100)
            rows.append(scale_row(size, f"{name}, {knob} {value}", build, batched, single, memory, found == truth, queries))
            print(f"  {rows[-1]}", flush=True)
        del index
    return rows


# ----------------------------------------------------------------------------- report


def mean_sd(values) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean() * 100:.2f}% ± {values.std() * 100:.2f}"


def markdown(results: dict, command: str) -> str:
    import datetime

    lines = ["# Identification, clustering and search at scale", "",
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
                      "(threshold) | run threshold: DIR / false alarms | `--false-alarm 0.01` (threshold): DIR / false alarms |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, row in found["protocols"].items():
                lines.append(f"| {name} | {row['gallery_people'][0]:,} | {row['known'][0]:,} / {row['unknown'][0]:,} | "
                             f"{mean_sd(row['rank1'])} | {mean_sd(row['rank5'])} | {mean_sd(row['dir_at_far_1pct'])} "
                             f"({np.mean(row['threshold_at_far_1pct']):.3f}) | {mean_sd(row['dir_at_run'])} / "
                             f"{mean_sd(row['false_alarm_at_run'])} | ({np.mean(row['gallery_threshold']):.3f}) "
                             f"{mean_sd(row['dir_at_gallery'])} / {mean_sd(row['false_alarm_at_gallery'])} |")
            lines.append("")
        if "clustering" in run:
            found = run["clustering"]
            lines += [f"### Clustering LFW people with 4+ photos ({found['photos']:,} photos, {found['people']} people, "
                      f"threshold {found['threshold']:.4f})", "",
                      f"{found['without_face']} photos without a detected face are not clustered (each counts as "
                      "alone). Clusters: of two or more photos / photos alone.", "",
                      "| algorithm | threshold | pairwise P | pairwise R | pairwise F | BCubed P | BCubed R | BCubed F | "
                      "NMI | clusters (vs 610) | alone | time |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for row in found["algorithms"]:
                rule = "- (not used)" if row["algorithm"] == "hdbscan" else f"{row['threshold_rule']}: {row['threshold']:.4f}"
                lines.append(f"| {row['algorithm']} | {rule} | {row['pairwise_precision']:.3f} | {row['pairwise_recall']:.3f} | "
                             f"{row['pairwise_f']:.3f} | {row['bcubed_precision']:.3f} | {row['bcubed_recall']:.3f} | "
                             f"{row['bcubed_f']:.3f} | {row['nmi']:.3f} | {row['clusters_of_two_or_more']} | {row['alone']} | "
                             f"{row['seconds']:.1f} s |")
            lines.append("")
        if "embedding_seconds" in run:
            lines += [f"Reading, aligning and embedding the {run['photos']:,} LFW photos took {run['embedding_seconds']:.0f} s"
                      + (" when they were embedded (cached since)" if run.get("cached") else "") + ".", ""]
    for part, title in (("scale", "Search at scale: exact against faiss IVF-Flat"),
                        ("libraries", "Approximate-search libraries, one thread each")):
        if not results.get(part):
            continue
        lines += [f"## {title} (random unit vectors, 128-d, euclidean)", "",
                  "Known probes: a gallery vector plus N(0, 0.05^2) noise per value; strangers: fresh random unit "
                  "vectors (their nearest neighbour is barely nearer than the rest: the hardest case). Latency: one "
                  "probe per call (as `identify` on a few photos) and per probe in one call with all probes. Memory: "
                  "what the search holds: the vectors for exact search, else the index as its library saves it.", "",
                  "| gallery | method | build | latency, one probe | latency, batched | memory | recall@1 known | "
                  "recall@1 strangers |", "|---|---|---|---|---|---|---|---|"]
        for row in results[part]:
            memory = f"{row['memory_mib']:.0f} MiB" if row["memory_mib"] else "-"
            lines.append(f"| {row['size']:,} | {row['method']} | {row['build_s']:.1f} s | {row['single_ms']:.2f} ms | "
                         f"{row['batched_ms']:.3f} ms | {memory} | {row['recall_known']:.3f} | {row['recall_strangers']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR", help="A run to measure (repeatable).")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder (images/<name>/<photo>).")
    parser.add_argument("--parts", default=",".join(PARTS), help="Comma-separated: " + ", ".join(PARTS) + ".")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Gallery sizes of the scale part.")
    parser.add_argument("--queries", type=int, default=1000, help="Probes of the scale and libraries parts.")
    parser.add_argument("--library-size", type=int, default=100_000, help="Gallery size of the libraries part.")
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
    from facetrip.runs import read_metadata

    for spec in arguments.run if lfw_parts else []:
        name, _, path = spec.partition("=")
        print(f"{name}: embedding LFW ...", flush=True)
        data = lfw_embeddings(Path(path), arguments.lfw, arguments.work_dir)
        metadata = read_metadata(path)
        run = {"path": path, "photos": int(len(data["files"])), "embedding_seconds": data["seconds"], "cached": data["cached"]}
        if "identification" in lfw_parts:
            print(f"{name}: identification ...", flush=True)
            run["identification"] = identification(data, metadata, arguments.seeds)
        if "clustering" in lfw_parts:
            print(f"{name}: clustering ...", flush=True)
            run["clustering"] = clustering(data, metadata)
        results["runs"][name] = run
    if "scale" in parts:
        print("scale ...", flush=True)
        results["scale"] = scale([int(size) for size in arguments.sizes.split(",")], 128, arguments.queries)
    if "libraries" in parts:
        print("libraries ...", flush=True)
        results["libraries"] = libraries(arguments.library_size, 128, arguments.queries)
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
