"""How an index does at every threshold: DIR against FPIR, measured on the gallery itself by leaving out, and its plot.

Open-set identification (Grother and Phillips; :mod:`facetrip.identification.metrics`) is
measured with known probes and strangers whose identities are known. A gallery of G people
holds both, one photo left out at a time. For a photo ``x`` of person ``p``:

- as a **known probe** (``p`` has 2+ photos), ``x`` is searched against the gallery without
  ``x``: ``p``'s score comes from p's other photos (``nearest``: the nearest of them;
  ``mean``: the distance to their mean, back on the unit sphere for unit embeddings), every
  other person's as in the gallery;
- as a **stranger**, ``x`` is searched against the gallery without ``p`` (G - 1 people):
  its best score is ``b(x) = min over q != p of s(x, q)``.

For a threshold ``t``, over the known probes K and the strangers U:

    DIR(t)  = #{x in K: s(x, p) < b(x) and s(x, p) <= t} / |K|   (named, and rightly)
    FPIR(t) = #{x in U: b(x) <= t} / |U|                          (a stranger named as someone)

Every photo is a stranger probe, and a known probe when its person has another photo. Above
``max_probes`` photos a random sample of that many is searched (with ``seed``): exact search
costs (probes x gallery vectors) distances, a matrix product per block of probes.

The gallery's photos stand in for the probes ``identify`` will see: enrolment photos are often
better than probes, and its people are no strangers to the population a run was calibrated on,
so the curve is a check of the decision rule (:mod:`facetrip.identification.decision`), not a
guarantee.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facetrip.distances import PreparedRows, distances_to, paired_distances, unit_rows
from facetrip.identification.decision import Decision, decision_record
from facetrip.identification.metrics import dir_at_false_alarm
from facetrip.identification.search import DEFAULT_SCORE, are_unit_vectors, score_gallery

__all__ = ["DEFAULT_MAX_PROBES", "dir_fpir_plot_png", "identification_curve", "leave_one_out_scores"]

# Photos searched at most: 2,000 strangers give FPIR in steps of 0.05% (1% +- 0.45 points, 95%).
DEFAULT_MAX_PROBES = 2000
# Distances are computed for blocks of probes of at most this many (probe, gallery vector) pairs.
_BLOCK_PAIRS = 1 << 23


def leave_one_out_scores(embeddings: np.ndarray, labels: np.ndarray, metric: str, score: str = DEFAULT_SCORE,
                         max_probes: int = DEFAULT_MAX_PROBES, seed: int = 0) -> dict[str, np.ndarray]:
    """Each probe photo's own score with itself left out, and its best score with its person left out.

    Args:
        embeddings: (N, D) gallery embeddings.
        labels: (N,) int person of each photo, every label in ``0 .. G-1`` present.
        metric: the run's metric.
        score: ``nearest`` or ``mean`` (:data:`facetrip.identification.search.SCORES`).
        max_probes: search at most this many photos (a random sample above it).
        seed: the sample's seed.

    Returns:
        ``{"probes": (Q,) rows searched, "own": (Q,) s(x, p) (inf when p has one photo),
        "best_other": (Q,) b(x) (inf when the gallery has one person)}``, float64.
    """
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels, np.int64)
    num_people = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_people)  # (G,)
    probes = np.arange(len(labels))
    if len(probes) > max_probes:
        probes = np.sort(np.random.default_rng(seed).choice(len(labels), max_probes, replace=False))
    vectors, vector_labels = score_gallery(embeddings, labels, num_people, score)  # (M, D), (M,)
    prepared = PreparedRows.of(vectors, metric)
    order = np.argsort(vector_labels, kind="stable")  # each person's vectors together: one reduceat
    starts = np.flatnonzero(np.r_[True, np.diff(vector_labels[order]) != 0])  # (G,), person g at segment g
    own = np.full(len(probes), np.inf)
    best_other = np.full(len(probes), np.inf)
    block = max(1, _BLOCK_PAIRS // max(len(vectors), 1))
    for first in range(0, len(probes), block):
        rows = probes[first:first + block]  # (B,)
        people = labels[rows]
        positions = np.arange(len(rows))
        distances = distances_to(embeddings[rows], prepared).astype(np.float64)  # (B, M)
        if score == "nearest":
            distances[positions, rows] = np.inf  # the photo itself is left out
        per_person = np.minimum.reduceat(distances[:, order], starts, axis=1)  # (B, G)
        if score == "nearest":
            own[first:first + len(rows)] = per_person[positions, people]  # inf for a person of one photo
        per_person[positions, people] = np.inf  # the person left out: what a stranger meets
        best_other[first:first + len(rows)] = per_person.min(axis=1)
    if score == "mean":
        own = _left_out_mean_distances(embeddings, labels, counts, probes, metric)
    return {"probes": probes, "own": own, "best_other": best_other}


def _left_out_mean_distances(embeddings, labels, counts, probes, metric) -> np.ndarray:
    """(Q,) distance of each probe photo to the mean of its person's other photos (inf for a person of one photo).

    ``m_-x = (sum_p - x) / (n_p - 1)``, back on the unit sphere when the embeddings are unit
    vectors, as :func:`facetrip.identification.search.person_means` puts a person's mean.
    """
    sums = np.zeros((len(counts), embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings.astype(np.float64))  # (G, D)
    people = labels[probes]
    others = np.maximum(counts[people] - 1, 1)[:, None]
    left_out = ((sums[people] - embeddings[probes]) / others).astype(np.float32)  # (Q, D)
    if are_unit_vectors(embeddings):
        left_out = unit_rows(left_out)
    distances = paired_distances(embeddings[probes], left_out, metric).astype(np.float64)  # (Q,)
    return np.where(counts[people] > 1, distances, np.inf)


def identification_curve(index, decision: Decision | dict | None = None, score: str = DEFAULT_SCORE,
                         max_probes: int = DEFAULT_MAX_PROBES, seed: int = 0) -> dict[str, Any]:
    """DIR against FPIR of an index at every threshold, leaving out one photo or person at a time (module docstring).

    Args:
        index: a :class:`facetrip.identification.index.GalleryIndex`.
        decision: the default decision of `identify` for this index
            (:func:`facetrip.identification.decision.identify_decision` with the run and the
            index's people), or its record; default: the record the index's manifest kept
            when it was written (``manifest["open_set"]``), if any.
        score: ``nearest`` or ``mean``, as `identify --score`.
        max_probes: search at most this many gallery photos (a random sample above it).
        seed: the sample's seed.

    Returns:
        ``{"thresholds", "dir", "fpir"}``: (T,) float64 arrays, thresholds ascending, DIR and
        FPIR at each (NumPy arrays: ``.tolist()`` for JSON); ``"operating_point"``: the
        decision's ``{"threshold", "dir", "fpir", "decision_rule", "false_alarm", "threshold_rule"}``
        measured here (None without a decision); ``"at_target"``: ``{"false_alarm", "threshold",
        "dir", "fpir"}`` at the threshold whose FPIR here is at most the decision's ``false_alarm``
        (:func:`dir_at_false_alarm`; None without a target or strangers, its DIR None without
        known probes); and ``"score"``, ``"metric"``, ``"people"``, ``"photos"``,
        ``"known_probes"``, ``"stranger_probes"``, ``"sampled"``, ``"seed"``.
    """
    labels, names = index.labels()
    metric = index.manifest["metric"]
    found = leave_one_out_scores(index.embeddings, labels, metric, score, max_probes, seed)
    own, best_other = found["own"], found["best_other"]
    known = np.isfinite(own)  # a person of 2+ photos
    correct = own[known] < best_other[known]
    known_scores = own[known]
    strangers = best_other[np.isfinite(best_other)]  # none when the gallery holds one person
    named = np.sort(known_scores[correct])
    thresholds = np.unique(np.concatenate([named, strangers]))  # every threshold at which a rate steps
    dir_curve = np.searchsorted(named, thresholds, side="right") / max(len(known_scores), 1)
    fpir_curve = np.searchsorted(np.sort(strangers), thresholds, side="right") / max(len(strangers), 1)
    if isinstance(decision, Decision):
        decision = decision_record(decision)
    elif decision is None:
        decision = index.manifest.get("open_set")
    operating, at_target = None, None
    if decision and decision.get("threshold") is not None:
        threshold = float(decision["threshold"])
        operating = {"threshold": threshold,
                     "dir": float(np.mean(correct & (known_scores <= threshold))) if len(known_scores) else None,
                     "fpir": float(np.mean(strangers <= threshold)) if len(strangers) else None,
                     "decision_rule": decision.get("decision_rule"), "false_alarm": decision.get("false_alarm"),
                     "threshold_rule": decision.get("threshold_rule")}
    if decision and decision.get("false_alarm") and len(strangers):
        measured = dir_at_false_alarm(known_scores if len(known_scores) else np.zeros(1), correct if len(known_scores)
                                      else np.zeros(1, bool), strangers, float(decision["false_alarm"]))
        at_target = {"false_alarm": float(decision["false_alarm"]), "threshold": measured["threshold"],
                     "dir": measured["dir"] if len(known_scores) else None, "fpir": measured["false_alarm"]}
    return {"thresholds": thresholds, "dir": dir_curve, "fpir": fpir_curve, "operating_point": operating,
            "at_target": at_target, "score": score, "metric": metric, "people": len(names), "photos": len(labels),
            "known_probes": int(known.sum()), "stranger_probes": int(len(strangers)),
            "sampled": len(found["probes"]) < len(labels), "seed": seed}


def dir_fpir_plot_png(curve: dict[str, Any], title: str | None = None) -> bytes:
    """The DIR-against-FPIR curve on a log FPIR axis, the default decision's operating point marked, as PNG bytes.

    Args:
        curve: what :func:`identification_curve` returned.
        title: the plot's title; default: the gallery and the score.

    Returns:
        PNG bytes (matplotlib, Agg backend). FPIR = 0 is drawn at the left edge, half of
        ``1 / stranger probes``; the target false-alarm rate is a dotted line.
    """
    from facetrip.evaluation.plots import _png, _pyplot

    plt = _pyplot()
    floor = 0.5 / max(curve["stranger_probes"], 1)
    figure, axis = plt.subplots(figsize=(6, 4.5))
    fpir, dir_curve = np.asarray(curve["fpir"], np.float64), np.asarray(curve["dir"], np.float64)
    axis.step(np.maximum(fpir, floor), dir_curve, where="post", linewidth=2.0,
              label=f"leave one out: {curve['known_probes']:,} known probes, {curve['stranger_probes']:,} strangers")
    point = curve.get("operating_point")
    if point and point.get("fpir") is not None and point.get("dir") is not None:
        rule = "false-alarm rule" if point.get("decision_rule") == "false_alarm" else "pair rule"
        axis.plot([max(point["fpir"], floor)], [point["dir"]], "o", color="tab:red", markersize=7,
                  label=f"identify's default ({rule}, threshold {point['threshold']:.3f}): "
                        f"DIR {point['dir']:.1%}, FPIR {point['fpir']:.2%}")
    target = (point or {}).get("false_alarm")
    if target and target > floor:
        axis.axvline(target, color="grey", linestyle=":", linewidth=0.9, label=f"target FPIR {target:.2%}")
    axis.set_xscale("log")
    axis.set_xlim(floor, 1.0)
    axis.set_ylim(0.0, 1.01)
    axis.set_xlabel("FPIR: strangers named as someone (log scale)")
    axis.set_ylabel("DIR: known probes named rightly")
    sampled = ", sampled" if curve.get("sampled") else ""
    axis.set_title(title or f"DIR against FPIR: {curve['people']:,} people, {curve['photos']:,} photos, {curve['score']} "
                            f"score{sampled}", fontsize=10)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(loc="lower right", fontsize=7)
    return _png(figure)
