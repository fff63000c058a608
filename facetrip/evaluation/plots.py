"""The ROC plot of an evaluation: curves on a log-scaled false-accept axis, as PNG bytes.

matplotlib (Agg backend) is imported when a plot is drawn, not with this module.
"""

from __future__ import annotations

import io

import numpy as np

from facetrip.evaluation.metrics import FAR_TARGETS


def roc_plot_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC") -> bytes:
    """ROC curves on a log-scaled false-accept axis, as PNG bytes.

    Args:
        curves: ``{label: (false_accept_rate, true_accept_rate)}``, the first drawn boldest.
        title: the plot's title.

    Returns:
        PNG bytes (matplotlib, Agg backend). FAR = 0 is drawn at the left edge, half the
        smallest non-zero FAR of any curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = [far[far > 0].min() for far, _ in curves.values() if np.any(far > 0)]
    floor = min(positive) / 2 if positive else 1e-4
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for index, (label, (false_accept, true_accept)) in enumerate(curves.items()):
        axis.step(np.maximum(false_accept, floor), true_accept, where="post", label=label,
                  linewidth=2.2 if index == 0 else 1.3, alpha=1.0 if index == 0 else 0.85)
    for target in FAR_TARGETS:
        if target > floor:
            axis.axvline(target, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlim(floor, 1.0)
    axis.set_ylim(0.0, 1.01)
    axis.set_xlabel("false accept rate (log scale)")
    axis.set_ylabel("true accept rate")
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def roc_and_det_png(false_accept: np.ndarray, true_accept: np.ndarray, operating_points: dict[str, tuple[float, float]],
                    title: str = "") -> bytes:
    """The ROC curve and the DET curve of one model side by side, with operating points marked.

    The DET curve plots the false reject rate ``FRR = 1 - TAR`` against the false accept
    rate, both on log axes: the better model lies lower. Rates of 0 are drawn at half the
    smallest non-zero rate.

    Args:
        false_accept, true_accept: (K,) the ROC curve (:func:`facetrip.evaluation.roc`).
        operating_points: ``{label: (far, tar)}`` marked on both plots (the run's threshold,
            the TAR at each target FAR).
        title: above the pair of plots.

    Returns:
        PNG bytes.
    """
    plt = _pyplot()
    false_accept, true_accept = np.asarray(false_accept, np.float64), np.asarray(true_accept, np.float64)
    false_reject = 1.0 - true_accept
    far_floor = (false_accept[false_accept > 0].min() / 2) if np.any(false_accept > 0) else 1e-4
    frr_floor = (false_reject[false_reject > 0].min() / 2) if np.any(false_reject > 0) else 1e-4
    figure, (roc_axis, det_axis) = plt.subplots(1, 2, figsize=(10, 4))
    roc_axis.step(np.maximum(false_accept, far_floor), true_accept, where="post", linewidth=2)
    det_axis.step(np.maximum(false_accept, far_floor), np.maximum(false_reject, frr_floor), where="post", linewidth=2)
    markers = ["o", "s", "^", "v", "D", "P"]
    for (label, (far, tar)), marker in zip(operating_points.items(), markers * 4):
        roc_axis.plot(max(far, far_floor), tar, marker, markersize=7, label=label)
        det_axis.plot(max(far, far_floor), max(1.0 - tar, frr_floor), marker, markersize=7, label=label)
    roc_axis.set(xscale="log", xlim=(far_floor, 1.0), ylim=(0.0, 1.01), xlabel="false accept rate (log scale)",
                 ylabel="true accept rate", title="ROC")
    det_axis.set(xscale="log", yscale="log", xlim=(far_floor, 1.0), ylim=(frr_floor, 1.0),
                 xlabel="false accept rate (log scale)", ylabel="false reject rate (log scale)", title="DET")
    for axis in (roc_axis, det_axis):
        axis.grid(True, which="major", alpha=0.3)
    if operating_points:
        det_axis.legend(loc="upper right", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _png(figure)


def distance_histograms_png(distances: np.ndarray, same: np.ndarray, threshold: float | None, bins: int = 60) -> bytes:
    """Histograms of the same-person and different-person distances, with the threshold as a line.

    Each histogram is normalised to its own pairs (a density), so that a few thousand same
    pairs show beside a million different ones.

    Args:
        distances: (M,) pair distances.
        same: (M,) bool.
        threshold: drawn as a vertical line; None for none.
        bins: bins over the range of all distances.

    Returns:
        PNG bytes.
    """
    plt = _pyplot()
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    edges = np.histogram_bin_edges(distances, bins=bins)
    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.hist(distances[same], bins=edges, density=True, alpha=0.6, label=f"same person ({int(same.sum()):,})")
    axis.hist(distances[~same], bins=edges, density=True, alpha=0.6, label=f"different people ({int((~same).sum()):,})")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4f}")
    axis.set(xlabel="distance", ylabel="density", title="Pair distances")
    axis.legend(fontsize=8)
    return _png(figure)
