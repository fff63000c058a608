"""Offline mining against a plain NumPy reference with explicit loops over (a, p, n).

The reference (:func:`categorised_triplets`) computes every distance in float64 straight
from the coordinates (``tests/reference.py``) and files each valid triplet under the
definitions: hard ``d_an < d_ap``, semi-hard ``d_ap <= d_an < d_ap + m``, easy
``d_an >= d_ap + m``. Random sets use float64 embeddings, so no triplet lies within
rounding of a boundary; the boundary tests use points whose distances are exact in
float32 and float64 alike, so the ties themselves are checked.
"""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import reference
from conftest import METRICS, pk_labels
from facetrip import mining
from facetrip.mining import planning, problem, sampling, scan
from facetrip.mining import (
    TRIPLET_CATEGORIES,
    MiningResult,
    count_triplets,
    load_triplets,
    mine_triplets,
    save_triplets,
)

MARGINS = (0.0, 0.2, 0.5)
CATEGORY_CHOICES = (("hard",), ("semi_hard",), ("easy",), ("hard", "semi_hard"), ("hard", "easy"),
                    TRIPLET_CATEGORIES)


# ------------------------------------------------------------------------ the reference


def categorised_triplets(embeddings, labels, margin, metric) -> dict:
    """{category: set of (a, p, n)} over every valid triplet, by explicit loops."""
    labels = list(np.asarray(labels).reshape(-1))
    size = len(labels)
    distances = [[reference.distance(embeddings[i], embeddings[j], metric) for j in range(size)] for i in range(size)]
    found = {name: set() for name in TRIPLET_CATEGORIES}
    for a in range(size):
        for p in range(size):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(size):
                if labels[n] == labels[a]:
                    continue
                d_ap, d_an = distances[a][p], distances[a][n]
                if d_an < d_ap:
                    found["hard"].add((a, p, n))
                elif d_an < d_ap + margin:
                    found["semi_hard"].add((a, p, n))
                else:
                    found["easy"].add((a, p, n))
    return found


def counts_of(found: dict) -> dict:
    counts = {name: len(found[name]) for name in TRIPLET_CATEGORIES}
    counts["total"] = sum(counts.values())
    return counts


def as_set(triplets: np.ndarray) -> set:
    return set(map(tuple, triplets.tolist()))


def label_pattern(name: str, rng, size: int):
    """Labels of several shapes: P x K, singletons mixed in, strings, (N, 1)."""
    if name == "pk":
        return pk_labels(size // 4, 4)
    if name == "singletons":  # identities of 1 to 6 images, several with one image (anchors without positive)
        sizes = [1, 1, 6, 2, 1, 5, 3, 1, 4, 2, 1, 3]
        return np.repeat(np.arange(len(sizes)), sizes)[:size]
    if name == "strings":
        return np.array([f"person_{value}" for value in rng.integers(0, 5, size)])
    if name == "column":
        return rng.integers(0, 6, size).reshape(size, 1)
    raise ValueError(name)


@pytest.fixture
def small_tiles(monkeypatch):
    """Column tiles of about 8 points (plus room to pack identities): larger identities span tiles."""
    monkeypatch.setattr(problem, "_TILE_WIDTH", 8)


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize("pattern", ["pk", "singletons", "strings", "column"])
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
def test_counts_match_reference(rng, metric, margin, pattern):
    labels = label_pattern(pattern, rng, 28)
    embeddings = rng.normal(size=(len(labels), 4))
    expected = counts_of(categorised_triplets(embeddings, labels, margin, metric))
    assert count_triplets(embeddings, labels, margin, metric=metric) == expected
    assert expected["total"] > 0


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("metric", METRICS)
def test_chunks_and_tiles_give_the_same_counts(rng, small_tiles, metric, chunk_size):
    """Chunks of anchors x small column tiles; the identity of 20 images spans two tiles of 12."""
    labels = np.repeat(np.arange(7), [20, 9, 3, 1, 5, 2, 4])
    rng.shuffle(labels)
    embeddings = rng.normal(size=(len(labels), 3))
    layout = problem.Problem.create(embeddings, labels, 0.3, metric, chunk_size)
    assert layout.num_tiles > 2 and np.count_nonzero(layout.tile_owner >= 0) == 2
    expected = counts_of(categorised_triplets(embeddings, labels, 0.3, metric))
    assert count_triplets(embeddings, labels, 0.3, metric=metric, chunk_size=chunk_size) == expected
    assert count_triplets(embeddings, labels, 0.3, metric=metric) == expected


@pytest.mark.parametrize("path", ["tails", "bulk", "sorted rows"])
def test_every_counting_path_is_exact(rng, small_tiles, monkeypatch, path):
    """The pass planner only changes speed: all-tail, all-bulk and sort-and-search plans count alike."""
    monkeypatch.setattr(scan, "_MIN_KEYS_PER_ROW_TO_PLAN", 0)
    if path == "tails":  # tail passes made free: every threshold goes to a tail
        monkeypatch.setattr(planning, "_TAIL_PASS_COST", 0.0)
        monkeypatch.setattr(planning, "_EXTRACTED_KEY_COST", 0.0)
    else:
        monkeypatch.setattr(planning, "_TAIL_PASS_COST", 1e9)
    if path == "sorted rows":
        monkeypatch.setattr(planning, "_MAX_BULK_PASSES", 0)
    for metric in METRICS:
        labels = rng.integers(0, 4, 26)
        embeddings = rng.normal(size=(26, 3)).astype(np.float32)
        for margin in (0.0, 0.4):
            expected = counts_of(categorised_triplets(embeddings, labels, margin, metric))
            assert count_triplets(embeddings, labels, margin, metric=metric, chunk_size=5) == expected


@pytest.mark.parametrize("labels", [np.zeros(6, int), np.arange(6)], ids=["one identity", "all singletons"])
def test_no_valid_triplet(labels):
    embeddings = np.eye(6)
    assert count_triplets(embeddings, labels, 0.2) == {"easy": 0, "semi_hard": 0, "hard": 0, "total": 0}
    result = mine_triplets(embeddings, labels, 0.2)
    assert result.triplets.shape == (0, 3) and result.triplets.dtype == np.int64


def test_cosine_with_zero_vectors(rng):
    """A zero vector has cosine 0 with everything (distance 1), as in facetrip.losses."""
    labels = pk_labels(5, 4)
    embeddings = rng.normal(size=(20, 3))
    embeddings[[0, 6, 13]] = 0.0
    expected = counts_of(categorised_triplets(embeddings, labels, 0.3, "cosine"))
    assert count_triplets(embeddings, labels, 0.3, metric="cosine") == expected


def test_empty_input():
    result = mine_triplets(np.zeros((0, 4)), [], 0.2)
    assert result.counts == {"easy": 0, "semi_hard": 0, "hard": 0, "total": 0} and result.triplets.shape == (0, 3)


def test_float16_is_computed_like_float32(rng):
    """float16 embeddings are widened: counts and mined triplets equal the float64 reference's on their values."""
    labels = pk_labels(6, 4)
    embeddings = rng.normal(size=(24, 5)).astype(np.float16)
    expected = categorised_triplets(embeddings.astype(np.float64), labels, 0.3, "euclidean")
    assert count_triplets(embeddings, labels, 0.3) == counts_of(expected)
    assert as_set(mine_triplets(embeddings, labels, 0.3, categories=("hard", "semi_hard")).triplets) == \
        expected["hard"] | expected["semi_hard"]


# ------------------------------------------------------------------------- boundaries


LINE = np.array([[0.0], [1.0], [0.5], [1.0], [1.5], [-1.0], [2.0]])  # a, p, then one negative per identity
LINE_LABELS = ["A", "A", "B", "C", "D", "E", "F"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric, margin", [("euclidean", 0.5), ("squared", 1.25)])
def test_ties_on_a_line(dtype, metric, margin):
    """Points on a line with exact distances; margins put the ties on both boundaries.

    Anchor 0 (positive 1, d_ap = 1): 0.5 is hard; 1.0 and -1.0 tie with d_ap, so they
    are semi-hard, not hard; 1.5 sits exactly at d_ap + m (euclidean 1 + 0.5, squared
    1 + 1.25 = 1.5^2) so it is easy; 2.0 is easy. Anchor 1 (positive 0): 0.5, 1.0, 1.5
    are hard, 2.0 ties with d_ap (semi-hard), -1.0 is easy. Total: 4 hard, 3 semi-hard,
    3 easy.
    """
    embeddings = LINE.astype(dtype)
    expected = {"easy": 3, "semi_hard": 3, "hard": 4, "total": 10}
    assert counts_of(categorised_triplets(embeddings, LINE_LABELS, margin, metric)) == expected
    assert count_triplets(embeddings, LINE_LABELS, margin, metric=metric) == expected
    for name, members in {"semi_hard": {(0, 1, 3), (0, 1, 5), (1, 0, 6)}, "easy": {(0, 1, 4), (0, 1, 6), (1, 0, 5)}}.items():
        assert as_set(mine_triplets(embeddings, LINE_LABELS, margin, metric=metric, categories=name).triplets) == members


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_margin_ties_are_easy(dtype):
    """With m = 0 nothing is semi-hard: a negative as far as the positive is easy."""
    expected = {"easy": 6, "semi_hard": 0, "hard": 4, "total": 10}
    assert count_triplets(LINE.astype(dtype), LINE_LABELS, 0.0) == expected
    assert count_triplets(LINE.astype(dtype), LINE_LABELS, 0.0, metric="squared") == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_ties(dtype):
    """Axis-aligned vectors have exact cosines (1, 0, -1), so distances 0, 1, 2; margin 1.

    Anchor (1, 0) with positive (2, 0) (d_ap = 0): (3, 0) is at 0 (semi-hard, not hard),
    (0, 1) is at exactly d_ap + m = 1 (easy). With positive (0, 3) (d_ap = 1): (3, 0) is
    hard, (0, 1) ties (semi-hard), (-1, 0) is at exactly 1 + 1 = 2 (easy).
    """
    embeddings = np.array([[1, 0], [2, 0], [0, 3], [3, 0], [0, 1], [0, -2], [-1, 0]], dtype)
    labels = [0, 0, 0, 1, 2, 3, 4]
    found = categorised_triplets(embeddings, labels, 1.0, "cosine")
    assert (0, 1, 3) in found["semi_hard"] and (0, 1, 4) in found["easy"]
    assert (0, 2, 3) in found["hard"] and (0, 2, 4) in found["semi_hard"] and (0, 2, 6) in found["easy"]
    assert count_triplets(embeddings, labels, 1.0, metric="cosine") == counts_of(found)
    for name in TRIPLET_CATEGORIES:
        mined = mine_triplets(embeddings, labels, 1.0, metric="cosine", categories=name, max_triplets=1000)
        assert as_set(mined.triplets) == found[name]


@pytest.mark.parametrize("metric", METRICS)
def test_duplicated_embeddings_tie_exactly(rng, small_tiles, metric):
    """Negatives that are exact copies of a positive (other identity, other tile) are never hard."""
    labels = np.repeat(np.arange(5), 4)
    embeddings = rng.normal(size=(20, 6)).astype(np.float32)
    embeddings[16:] = embeddings[[1, 5, 9, 13]]  # identity 4 copies one image of each other identity
    found = categorised_triplets(embeddings, labels, 0.3, metric)
    copies = {(a, p, n) for a, p, n in found["semi_hard"] if np.array_equal(embeddings[p], embeddings[n])}
    assert len(copies) == 4 * 3 + 4 * 3  # every (anchor, copied positive, its copy): d_an == d_ap
    assert count_triplets(embeddings, labels, 0.3, metric=metric, chunk_size=3) == counts_of(found)
    mined = mine_triplets(embeddings, labels, 0.3, metric=metric, categories="semi_hard", max_triplets=10**6,
                          chunk_size=3)
    assert copies <= as_set(mined.triplets)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("categories", CATEGORY_CHOICES, ids="+".join)
@pytest.mark.parametrize("metric", METRICS)
def test_mined_triplets_are_the_qualifying_ones(rng, small_tiles, metric, categories):
    labels = label_pattern("singletons", rng, 30)
    embeddings = rng.normal(size=(len(labels), 3))
    found = categorised_triplets(embeddings, labels, 0.4, metric)
    qualifying = set().union(*(found[name] for name in categories))
    everything = mine_triplets(embeddings, labels, 0.4, metric, categories, max_triplets=10**6, chunk_size=4)
    assert everything.counts == counts_of(found)
    assert everything.triplets.dtype == np.int64 and everything.triplets.shape == (len(qualifying), 3)
    assert as_set(everything.triplets) == qualifying
    capped = mine_triplets(embeddings, labels, 0.4, metric, categories, max_triplets=len(qualifying) // 3,
                           chunk_size=4, seed=5)
    assert len(capped.triplets) == len(qualifying) // 3
    assert len(as_set(capped.triplets)) == len(capped.triplets) and as_set(capped.triplets) <= qualifying


def test_same_seed_same_triplets_other_seed_others(rng):
    labels = pk_labels(8, 4)
    embeddings = rng.normal(size=(32, 4)).astype(np.float32)
    first = mine_triplets(embeddings, labels, 0.5, max_triplets=50, seed=7)
    again = mine_triplets(embeddings, labels, 0.5, max_triplets=50, seed=7)
    other = mine_triplets(embeddings, labels, 0.5, max_triplets=50, seed=8)
    np.testing.assert_array_equal(first.triplets, again.triplets)
    assert as_set(first.triplets) != as_set(other.triplets)
    assert first.counts == other.counts
    assert not np.array_equal(first.triplets, np.array(sorted(first.triplets.tolist())))  # random order


def test_results_do_not_depend_on_the_number_of_workers(rng, monkeypatch):
    """Random draws are seeded per (seed, chunk, tile) and merged in a fixed order."""
    labels = pk_labels(100, 4)
    embeddings = rng.normal(size=(400, 8)).astype(np.float32)
    monkeypatch.setattr(scan, "_MIN_KEYS_PER_EXTRA_WORKER", 0)
    results = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(scan, "_worker_count", lambda workers=workers: workers)
        results.append(mine_triplets(embeddings, labels, 0.3, max_triplets=500, seed=4, chunk_size=16))
    for other in results[1:]:
        assert other.counts == results[0].counts
        np.testing.assert_array_equal(other.triplets, results[0].triplets)


@pytest.mark.parametrize("path", ["default", "rejection", "listing"])
def test_selection_is_uniform(rng, small_tiles, monkeypatch, path):
    """Each of the Q qualifying triplets is kept with probability k / Q, whichever way a tile draws.

    200 seeds, k = 6 of Q ~ 40 hard + semi-hard triplets spread over several chunks and
    tiles: every inclusion count is Binomial(200, k / Q); all must lie within 5 sigma
    and the chi-square statistic (about Q - 1 on average) below 3 Q.
    """
    if path != "default":
        monkeypatch.setattr(sampling, "_prefer_listing", lambda listing, rejection: path == "listing")
    labels = np.repeat(np.arange(5), [3, 2, 2, 2, 3])
    embeddings = rng.normal(size=(12, 2))
    qualifying = sorted(mine_triplets(embeddings, labels, 0.3, max_triplets=10**6, chunk_size=3).triplets.tolist())
    size, kept, seeds = len(qualifying), 6, 200
    index = {tuple(triplet): position for position, triplet in enumerate(qualifying)}
    inclusions = np.zeros(size)
    for seed in range(seeds):
        triplets = mine_triplets(embeddings, labels, 0.3, max_triplets=kept, seed=seed, chunk_size=3).triplets
        assert len(triplets) == kept and len(as_set(triplets)) == kept
        inclusions[[index[tuple(triplet)] for triplet in triplets.tolist()]] += 1
    mean = seeds * kept / size
    sigma = np.sqrt(mean * (1 - kept / size))
    assert size > 25
    assert np.all(np.abs(inclusions - mean) < 5 * sigma), inclusions
    assert np.sum((inclusions - mean) ** 2 / mean) < 3 * size


def test_max_triplets_zero_still_counts(rng):
    labels = pk_labels(5, 3)
    embeddings = rng.normal(size=(15, 3))
    result = mine_triplets(embeddings, labels, 0.2, max_triplets=0)
    assert result.triplets.shape == (0, 3)
    assert result.counts == count_triplets(embeddings, labels, 0.2)


# ------------------------------------------------------------------------------ memory


def test_memory_stays_below_an_n_by_n_matrix(rng):
    """N = 3000: an N x N float32 matrix is 36 MB; the scan keeps a few (chunk, tile) buffers."""
    size = 3000
    labels = np.repeat(np.arange(size // 10), 10)
    embeddings = rng.normal(size=(size, 8)).astype(np.float32)
    tracemalloc.start()
    try:
        result = mine_triplets(embeddings, labels, 0.2, max_triplets=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.counts["total"] == size * 9 * (size - 10)
    assert peak < size * size * 4 / 3, peak


@pytest.mark.parametrize("metric", METRICS)
def test_a_memory_mapped_file_is_read_in_chunks_and_mined_as_the_array_is(rng, tmp_path, monkeypatch, metric):
    """`facetrip mine` mines a memory-mapped .npy: packed a few rows at a time, the same counts and triplets."""
    labels = pk_labels(30, 4)
    embeddings = rng.normal(size=(120, 6)).astype(np.float32)
    embeddings[5] = 0.0  # a zero vector (cosine 0)
    np.save(tmp_path / "embeddings.npy", embeddings)
    in_memory = mine_triplets(embeddings, labels, 0.3, metric=metric, max_triplets=200, seed=2)
    monkeypatch.setattr(problem, "_CHUNK_VALUES", 6 * 7)  # 7 rows a chunk
    mapped = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    from_file = mine_triplets(mapped, labels, 0.3, metric=metric, max_triplets=200, seed=2)
    assert from_file.counts == in_memory.counts
    np.testing.assert_array_equal(from_file.triplets, in_memory.triplets)
    corrupted = np.array(embeddings)
    corrupted[117, 2] = np.nan  # in the last chunk
    with pytest.raises(ValueError, match="NaN"):
        count_triplets(corrupted, labels, 0.3)


# ------------------------------------------------------------------------------- files


def test_save_load_round_trip(rng, tmp_path):
    labels = pk_labels(5, 3)
    embeddings = rng.normal(size=(15, 3))
    result = mine_triplets(embeddings, labels, 0.25, metric="cosine", categories=("hard",), max_triplets=7)
    names = [f"img_{index}.png" for index in range(15)]
    path = save_triplets(tmp_path / "triplets.npz", result, file_names=names, source="tiny")
    loaded = load_triplets(path)
    assert (loaded.counts, loaded.margin, loaded.metric, loaded.categories) == (
        result.counts, 0.25, "cosine", ("hard",))
    np.testing.assert_array_equal(loaded.triplets, result.triplets)
    assert loaded.triplets.dtype == np.int64
    assert list(loaded.file_names) == names and loaded.source == "tiny"
    assert isinstance(loaded, MiningResult)


def corrupt_files(tmp_path: Path, good: Path) -> dict:
    """A few ways a triplets file can be wrong."""
    files = {}
    files["not a zip"] = tmp_path / "garbage.npz"
    files["not a zip"].write_bytes(b"this is not an npz file\n\x00\x01")
    files["truncated"] = tmp_path / "truncated.npz"
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["other npz"] = tmp_path / "other.npz"
    np.savez(files["other npz"], weights=np.zeros(3))
    arrays = dict(np.load(good))
    for name, change in {
        "bad counts": {"count_values": np.array([1, 2, 3, 4])},
        "bad triplets": {"triplets": np.zeros((4, 2), np.int64)},
        "bad metric": {"metric": np.array("manhattan")},
        "negative margin": {"margin": np.array(-1.0)},
        "duplicates": {"triplets": np.zeros((2, 3), np.int64)},
        "newer version": {"version": np.array(99)},
    }.items():
        files[name] = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(files[name], **{**arrays, **change})
    return files


def test_corrupt_files_raise_one_line_value_errors(rng, tmp_path):
    result = mine_triplets(rng.normal(size=(12, 3)), pk_labels(4, 3), 0.2, max_triplets=5)
    good = save_triplets(tmp_path / "good.npz", result)
    for name, path in corrupt_files(tmp_path, good).items():
        with pytest.raises(ValueError) as error:
            load_triplets(path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, (name, message)
    with pytest.raises(FileNotFoundError):
        load_triplets(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("arguments, match", [
    ({"metric": "manhattan"}, "Unknown metric"),
    ({"margin": -0.1}, "margin"),
    ({"margin": float("nan")}, "margin"),
    ({"margin": "soft"}, "margin"),
    ({"labels": np.zeros(5)}, "5 labels for 6 embeddings"),
    ({"labels": np.zeros((6, 2))}, r"\(N,\) or \(N, 1\)"),
    ({"embeddings": np.zeros(6)}, "2-D"),
    ({"embeddings": np.full((6, 2), np.nan)}, "NaN"),
    ({"categories": ("hard", "medium")}, "categories"),
    ({"categories": ()}, "categories"),
    ({"max_triplets": -1}, "max_triplets"),
    ({"seed": -3}, "seed"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_inputs_are_rejected(arguments, match):
    call = {"embeddings": np.eye(6), "labels": [0, 0, 1, 1, 2, 2], "margin": 0.2, **arguments}
    with pytest.raises(ValueError, match=match):
        mine_triplets(**call)


def test_the_interface_names():
    assert TRIPLET_CATEGORIES == ("easy", "semi_hard", "hard")
    from facetrip import distances  # NumPy only, as mining

    assert mining.METRICS == distances.METRICS
