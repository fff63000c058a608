"""Classic face-verification baselines on image arrays: raw pixels, Eigenfaces, Fisherfaces.

Pure NumPy and scikit-learn. Each baseline is a linear map fitted on the images of the
run's *training* identities, never on the identities it is evaluated on. It turns images
(N, H, W, C), in [0, 1] exactly as the model sees them, into vectors

    v = (x - centre) W                    (x: an image's pixels as a row vector)

compared by cosine distance ``1 - v1.v2 / (|v1| |v2|)``:

- **raw pixels**: W = I (the centred pixels themselves).
- **Eigenfaces** (Turk & Pentland 1991): W = the leading principal axes of the training
  faces (scikit-learn ``PCA``, 100 components).
- **Fisherfaces** (Belhumeur et al. 1997): W = the PCA axes (40 components) times Fisher's
  linear discriminants of the training identities (scikit-learn
  ``LinearDiscriminantAnalysis``): at most (identities - 1) dimensions.

The centre is the mean face of the *evaluated* images (``CENTRE_ON_EVALUATED``): cosine
distance between faces depends strongly on it, and centring on the images being compared
(no labels used) is what reproduces the reference numbers on ORL. It can only help the
baselines, so it makes the bar the model has to clear higher, never lower. The training
mean is the alternative (``centre="train"``); ``scripts/bench_baselines.py`` reports both
(docs/reports/evaluation.md). Cosine beats euclidean distance for every baseline there.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Principal components kept by Eigenfaces (fewer when there are fewer training images).
EIGENFACES_COMPONENTS = 100
# PCA components before the discriminant of Fisherfaces.
FISHERFACES_PCA_COMPONENTS = 40
# At most this many training images fit a baseline (a seeded sample of larger sets).
MAX_FIT_IMAGES = 20_000
# Centre on the mean of the evaluated images ("evaluated") or of the training images ("train").
CENTRE_ON_EVALUATED = "evaluated"
BASELINE_METRIC = "cosine"


class BaselineError(ValueError):
    """A baseline cannot be fitted on the given training images."""


def flatten_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) images -> (N, H*W*C) float64 pixel vectors."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float64)


@dataclasses.dataclass
class LinearBaseline:
    """A fitted baseline: ``v = (x - centre) W``, compared with ``metric``.

    Attributes:
        name: shown in reports (raw pixels, Eigenfaces, Fisherfaces).
        description: how it was fitted, one short line.
        train_mean: (P,) mean training face.
        projection: (P, d) W, or None for the identity (raw pixels).
        metric: distance between two vectors.
    """

    name: str
    description: str
    train_mean: np.ndarray
    projection: np.ndarray | None = None
    metric: str = BASELINE_METRIC

    @property
    def dimensions(self) -> int:
        return len(self.train_mean) if self.projection is None else self.projection.shape[1]

    def embed(self, images: np.ndarray, centre: str | np.ndarray = CENTRE_ON_EVALUATED) -> np.ndarray:
        """(N, d) vectors of images.

        Args:
            images: (N, H, W, C) images in [0, 1].
            centre: ``"evaluated"`` (the mean of ``images``), ``"train"`` (the mean
                training face) or a (P,) mean face.
        """
        pixels = flatten_images(images)  # (N, P)
        if isinstance(centre, str):
            if centre not in ("evaluated", "train"):
                raise ValueError(f"centre must be 'evaluated', 'train' or a mean face, not {centre!r}.")
            centre = pixels.mean(axis=0) if centre == "evaluated" else self.train_mean
        centred = pixels - np.asarray(centre, np.float64)  # (N, P)
        return centred if self.projection is None else centred @ self.projection


def _check_fit_set(pixels: np.ndarray, labels: np.ndarray, what: str) -> None:
    if len(pixels) != len(labels):
        raise BaselineError(f"{what}: {len(pixels)} images but {len(labels)} labels.")
    if len(pixels) < 2:
        raise BaselineError(f"{what} need at least two training images, not {len(pixels)}.")


def fit_raw_pixels(images: np.ndarray, labels: np.ndarray) -> LinearBaseline:
    """Raw pixels: nothing is learned but the mean training face (the ``"train"`` centre)."""
    pixels = flatten_images(images)
    _check_fit_set(pixels, np.asarray(labels).reshape(-1), "Raw pixels")
    return LinearBaseline("raw pixels", f"{pixels.shape[1]} pixels, centred, cosine", pixels.mean(axis=0))


def fit_eigenfaces(images: np.ndarray, labels: np.ndarray, components: int = EIGENFACES_COMPONENTS) -> LinearBaseline:
    """Eigenfaces: W = the first ``min(components, N - 1, P)`` principal axes of the training faces.

    Args:
        images: (N, H, W, C) training images.
        labels: (N,) identities (not used by PCA; checked for length).
        components: principal components to keep.
    """
    from sklearn.decomposition import PCA

    pixels = flatten_images(images)
    _check_fit_set(pixels, np.asarray(labels).reshape(-1), "Eigenfaces")
    pca = PCA(n_components=min(components, len(pixels) - 1, pixels.shape[1]), svd_solver="full").fit(pixels)
    return LinearBaseline("Eigenfaces", f"PCA, {pca.n_components_} components, cosine", pca.mean_, pca.components_.T)


def fit_fisherfaces(images: np.ndarray, labels: np.ndarray, pca_components: int = FISHERFACES_PCA_COMPONENTS) -> LinearBaseline:
    """Fisherfaces: PCA to ``min(pca_components, N - c, P)`` axes, then LDA of the c identities.

    At most N - c principal components (N images, c identities) keep the within-class
    scatter invertible, the reason for the PCA step. ``W = W_pca W_lda``, of (P, k) with
    ``k = min(c - 1, PCA components)``; scikit-learn's LDA transform is ``(y - ybar) W_lda``
    with ``ybar`` the (zero) mean of the PCA coordinates, so the map stays linear.

    Raises:
        BaselineError: fewer than two identities, or no more images than identities.
    """
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    pixels, labels = flatten_images(images), np.asarray(labels).reshape(-1)
    _check_fit_set(pixels, labels, "Fisherfaces")
    num_identities = len(np.unique(labels))
    components = min(pca_components, len(pixels) - num_identities, pixels.shape[1])
    if num_identities < 2 or components < 1:
        raise BaselineError(
            f"Fisherfaces need at least two training identities and more images than identities "
            f"({len(pixels)} images of {num_identities} identities)."
        )
    pca = PCA(n_components=components, svd_solver="full").fit(pixels)
    dimensions = min(num_identities - 1, components)
    lda = LinearDiscriminantAnalysis(n_components=dimensions).fit(pca.transform(pixels), labels)
    projection = pca.components_.T @ lda.scalings_[:, :dimensions]  # (P, k)
    return LinearBaseline(
        "Fisherfaces", f"PCA {components} + LDA {projection.shape[1]} dimensions, cosine", pca.mean_, projection
    )


BASELINES = (fit_raw_pixels, fit_eigenfaces, fit_fisherfaces)


def fit_baselines(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[LinearBaseline]:
    """Raw pixels, Eigenfaces and Fisherfaces fitted on training images.

    Args:
        images: (N, H, W, C) training images in [0, 1].
        labels: (N,) their identities.
        seed: seed of the sample of ``MAX_FIT_IMAGES`` images when there are more.

    Returns:
        The three fitted baselines, in that order.
    """
    labels = np.asarray(labels).reshape(-1)
    chosen = fit_sample(len(labels), seed)
    return [fit(images[chosen], labels[chosen]) for fit in BASELINES]


def fit_sample(num_images: int, seed: int = 0) -> np.ndarray:
    """Indices of the training images a baseline is fitted on: all, or a seeded sorted sample of ``MAX_FIT_IMAGES``."""
    if num_images <= MAX_FIT_IMAGES:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, MAX_FIT_IMAGES, replace=False))
