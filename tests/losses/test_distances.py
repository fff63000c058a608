import numpy as np
import pytest
import tensorflow as tf

import reference
from conftest import METRICS
from facetrip.distances import distance_matrix
from facetrip.distances import paired_distances as numpy_paired_distances
from facetrip.losses import paired_distances, pairwise_distances, resolve_metric


def gradient_of(function, embeddings):
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        value = function(embeddings)
    return value, tape.gradient(value, embeddings)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances(rng, metric):
    embeddings = rng.normal(size=(12, 6)).astype(np.float32)
    expected = reference.pairwise(embeddings, metric)
    np.testing.assert_allclose(pairwise_distances(embeddings, metric=metric).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("squared", [True, False])
def test_pairwise_distances_classic_squared_flag(rng, squared):
    embeddings = rng.normal(size=(8, 5)).astype(np.float32)
    expected = reference.pairwise(embeddings, "squared" if squared else "euclidean")
    np.testing.assert_allclose(pairwise_distances(embeddings, squared=squared).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances_are_positive(rng, metric):
    """Large, nearly identical embeddings make |a|^2 - 2ab + |b|^2 round below zero."""
    base = rng.normal(size=(1, 16)).astype(np.float32) * 100.0
    embeddings = base + rng.normal(size=(10, 16)).astype(np.float32) * 1e-6
    distances = pairwise_distances(embeddings, metric=metric).numpy()
    assert np.all(distances >= 0.0)
    assert np.all(np.diag(distances) == 0.0)
    assert np.all(np.isfinite(distances))


@pytest.mark.parametrize("metric", METRICS)
def test_gradients_pairwise_distances(rng, metric):
    """Identical embeddings (sqrt at 0, the classic NaN) and near-identical ones."""
    identical = np.tile(rng.normal(size=(1, 4)), (6, 1)).astype(np.float32)
    near_identical = identical + rng.normal(size=identical.shape).astype(np.float32) * 1e-7
    for embeddings in (identical, near_identical, np.zeros((3, 4), np.float32)):
        _, gradient = gradient_of(lambda e: tf.reduce_sum(pairwise_distances(e, metric=metric)), embeddings)
        assert np.all(np.isfinite(gradient.numpy())), metric


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_gradients_match_finite_differences(rng, metric):
    embeddings = rng.normal(size=(5, 3))
    weights = rng.uniform(size=(5, 5))  # a weighted sum exercises every entry differently
    _, gradient = gradient_of(lambda e: tf.reduce_sum(pairwise_distances(e, metric=metric) * weights), embeddings)
    expected = reference.numerical_gradient(lambda e: float(np.sum(reference.pairwise(e, metric) * weights)), embeddings)
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_is_computed_in_float32(rng, dtype):
    embeddings = tf.cast(rng.normal(size=(6, 8)), dtype)
    distances = pairwise_distances(embeddings)
    assert distances.dtype == tf.float32
    rounded = tf.cast(embeddings, tf.float32).numpy()
    np.testing.assert_allclose(distances.numpy(), reference.pairwise(rounded, "euclidean"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_paired_distances(rng, metric):
    x, y = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    expected = [reference.distance(a, b, metric) for a, b in zip(x, y)]
    np.testing.assert_allclose(paired_distances(x, y, metric=metric).numpy(), expected, rtol=1e-5, atol=1e-6)
    _, gradient = gradient_of(lambda e: tf.reduce_sum(paired_distances(e, e, metric=metric)), x)
    assert np.all(np.isfinite(gradient.numpy()))


def test_resolve_metric():
    assert resolve_metric() == "euclidean"
    assert resolve_metric(squared=True) == "squared"
    assert resolve_metric("Cosine") == "cosine"
    with pytest.raises(ValueError, match="Unknown metric"):
        resolve_metric("manhattan")
    with pytest.raises(ValueError, match="contradicts"):
        resolve_metric("cosine", squared=True)


# ------------------------------------------------- the NumPy forms (facetrip.distances) and their callers


def convention_distance(x, y, metric: str) -> float:
    """d(x, y) by the written convention of facetrip.distances, in float64 with plain Python sums.

    Cosine: ``u(x) = x / max(||x||, 1e-6)``, ``d = clip(1 - <u(x), u(y)>, 0, 2)``; a zero vector has
    ``u = 0`` and so distance 1 from everything.
    """
    x, y = [float(value) for value in x], [float(value) for value in y]
    if metric == "cosine":
        norm_x = max(sum(value * value for value in x) ** 0.5, 1e-6)
        norm_y = max(sum(value * value for value in y) ** 0.5, 1e-6)
        similarity = sum(a / norm_x * (b / norm_y) for a, b in zip(x, y))
        return min(max(1.0 - similarity, 0.0), 2.0)
    squared = sum((a - b) ** 2 for a, b in zip(x, y))
    return squared if metric == "squared" else squared**0.5


def convention_matrix(first, second, metric: str) -> np.ndarray:
    return np.array([[convention_distance(x, y, metric) for y in second] for x in first]).reshape(len(first), len(second))


def awkward_rows(rng, dimension=6):
    """Rows every distance code must agree on: random, a zero vector, a short one (norm 1e-8, below the
    1e-6 floor of the cosine convention), one of norm 1e-5 (above it), a copy and a scaled copy of a row."""
    rows = rng.normal(size=(8, dimension))
    rows[2] = 0.0
    rows[3] = rows[0] / np.linalg.norm(rows[0]) * 1e-8
    rows[4] = rows[1] / np.linalg.norm(rows[1]) * 1e-5
    rows[5] = rows[6]
    rows[7] = 3.0 * rows[1]
    return rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric", METRICS)
def test_numpy_distances_match_a_loop_reference_on_random_inputs(rng, metric, dtype):
    first, second = rng.normal(size=(7, 5)).astype(dtype), rng.normal(size=(9, 5)).astype(dtype)
    matrix = distance_matrix(first, second, metric)
    assert matrix.shape == (7, 9) and matrix.dtype == dtype
    np.testing.assert_allclose(matrix, reference.pairwise(np.vstack([first, second]), metric)[:7, 7:], rtol=1e-5, atol=1e-5)
    paired = numpy_paired_distances(first, second[:7], metric)
    assert paired.shape == (7,) and paired.dtype == dtype
    expected = [reference.distance(x, y, metric) for x, y in zip(first, second[:7])]
    np.testing.assert_allclose(paired, expected, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_numpy_distances_on_edge_cases(rng, metric):
    rows = awkward_rows(rng)
    expected = convention_matrix(rows, rows, metric)
    np.testing.assert_allclose(numpy_paired_distances(rows, rows[::-1], metric), np.diag(expected[:, ::-1]), atol=1e-12)
    np.testing.assert_allclose(distance_matrix(rows, rows, metric), expected, atol=1e-12 if metric == "cosine" else 1e-7)
    identical = numpy_paired_distances(rows, rows, metric)
    zero_row = rows[2]
    if metric == "cosine":
        # u(0) = 0: a zero vector is at distance 1 from everything, itself included
        assert identical[2] == 1.0 and np.all(numpy_paired_distances(np.tile(zero_row, (8, 1)), rows, metric) == 1.0)
        np.testing.assert_allclose(numpy_paired_distances(rows[[1]], rows[[7]], metric), [0.0], atol=1e-15)  # scale-free
        assert np.all(identical[[0, 1, 4, 5, 6, 7]] <= 1e-15)
    else:
        assert np.all(identical == 0.0)  # exact: computed from the differences
    for function in (lambda x: numpy_paired_distances(x, x[::-1], metric), lambda x: distance_matrix(x, x, metric)):
        for values in (rows, rows * 1e3):  # near-identical large rows must not round below 0 (or above 2)
            distances = function(values.astype(np.float32))
            assert np.all(distances >= 0.0) and np.all(np.isfinite(distances))
            assert metric != "cosine" or np.all(distances <= 2.0)


@pytest.mark.parametrize("metric", METRICS)
def test_numpy_distances_of_a_single_row(rng, metric):
    row, other = rng.normal(size=(1, 4)), rng.normal(size=(1, 4))
    assert distance_matrix(row, other, metric).shape == (1, 1)
    assert numpy_paired_distances(row, other, metric).shape == (1,)
    np.testing.assert_allclose(distance_matrix(row, other, metric)[0, 0], convention_distance(row[0], other[0], metric))
    assert distance_matrix(row, np.zeros((0, 4)), metric).shape == (1, 0)


@pytest.mark.parametrize("metric", METRICS)
def test_float32_and_float64_agree_and_keep_their_dtype(rng, metric):
    rows = awkward_rows(rng)
    rows32 = rows.astype(np.float32)
    wide, narrow = distance_matrix(rows, rows, metric), distance_matrix(rows32, rows32, metric)
    assert wide.dtype == np.float64 and narrow.dtype == np.float32
    if metric == "euclidean":  # |a|^2 - 2ab + |b|^2 rounds by ~1e-7 |a|^2 in float32: its square root near 0 by ~1e-3
        narrow, wide = narrow.astype(np.float64) ** 2, wide**2
    np.testing.assert_allclose(narrow, wide, rtol=1e-5, atol=1e-5)
    mixed = numpy_paired_distances(rows, rows[::-1].astype(np.float32), metric)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, numpy_paired_distances(rows, rows[::-1], metric), rtol=1e-5, atol=1e-6)
    half = numpy_paired_distances(rows.astype(np.float16), rows[::-1].astype(np.float16), metric)
    assert half.dtype == np.float32


@pytest.mark.parametrize("metric", METRICS)
def test_tensorflow_and_numpy_forms_are_one_definition(rng, metric):
    """The losses see the distances evaluation and identification see, zero and short vectors included."""
    rows = awkward_rows(rng).astype(np.float32)
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    np.testing.assert_allclose(pairwise_distances(rows, metric=metric).numpy()[off_diagonal],
                               distance_matrix(rows, rows, metric)[off_diagonal], rtol=1e-5, atol=1e-5)
    for dtype in (np.float32, np.float64):
        x, y = rows.astype(dtype), rows[::-1].astype(dtype)
        np.testing.assert_allclose(paired_distances(x, y, metric=metric).numpy(), numpy_paired_distances(x, y, metric),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("metric", METRICS)
def test_every_caller_gives_the_distances_of_facetrip_distances(rng, metric):
    """Evaluation, identification, verification and mining compute no distances of their own."""
    from facetrip.evaluation.pairs import distances_between, pair_distances
    from facetrip.identification.search import candidate_distances, top_people
    from facetrip.identification.search import distance_matrix as search_distance_matrix
    from facetrip.mining.problem import Problem
    from facetrip.verification import distance

    rows = awkward_rows(rng)
    rows32 = rows.astype(np.float32)
    expected = distance_matrix(rows, rows, metric)  # (8, 8) float64
    first, second = np.triu_indices(len(rows), k=1)

    np.testing.assert_array_equal(distances_between(rows, rows[::-1], metric),
                                  numpy_paired_distances(rows, rows[::-1], metric))
    distances, _ = pair_distances(rows, np.arange(len(rows)), metric)
    np.testing.assert_array_equal(distances, numpy_paired_distances(rows[first], rows[second], metric))
    assert [distance(rows[i], rows[j], metric) for i, j in zip(first, second)] == list(distances)

    np.testing.assert_array_equal(search_distance_matrix(rows32, rows32, metric), distance_matrix(rows32, rows32, metric))
    candidates = np.array([[3, -1, 0, 2], [7, 6, 5, -1]])
    queries = rows[[1, 5]]
    found = candidate_distances(queries, rows32, candidates, metric)
    np.testing.assert_allclose(found[candidates >= 0],
                               numpy_paired_distances(np.repeat(queries, 4, 0), rows[candidates.reshape(-1)], metric)[
                                   candidates.reshape(-1) >= 0], rtol=1e-6, atol=1e-7)
    assert np.all(np.isinf(found[candidates < 0]))
    matches = top_people(rows32, rows32, np.arange(len(rows)), metric, k=len(rows))
    np.testing.assert_array_equal(matches.distances,
                                  np.take_along_axis(distance_matrix(rows32, rows32, metric), matches.rows, 1))

    for dtype in (np.float32, np.float64):
        problem = Problem.create(rows.astype(dtype), np.arange(len(rows)) % 3, 0.2, metric, None)
        keys = problem.anchor_side @ problem.point_side[0]  # (L, E) one chunk, one tile
        real = np.flatnonzero(problem.original_index >= 0)
        keys = keys[np.ix_(real, real)]  # (8, 8) in position order
        if metric == "cosine":
            mined = np.clip(1.0 - keys, 0.0, 2.0)
        else:
            mined = 2.0 * np.maximum(problem.half_square_norms[real][:, None] - keys, 0.0)  # d^2 from the keys
            mined = mined if metric == "squared" else np.sqrt(mined)
        order = problem.original_index[real]
        # |a|^2 - 2ab + |b|^2 in float32 loses ~1e-7 |a|^2: compare squared forms a little loosely
        np.testing.assert_allclose(mined, expected[np.ix_(order, order)], rtol=1e-5,
                                   atol=1e-6 if metric == "cosine" else 1e-3)
