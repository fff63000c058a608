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
