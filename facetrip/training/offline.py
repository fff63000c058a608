"""Offline mining: each epoch embeds the training split, mines (a, p, n) triplets, and trains on them."""

from __future__ import annotations

from facetrip.config import Config
from facetrip.embedding import embed_faces
from facetrip.training.errors import TrainingError


def offline_triplets_per_batch(sampler) -> int:
    """Triplets per offline batch: about as many images (3 per triplet) as an online P x K batch.

    An even number of triplets (an even batch of images): introduced when TF 2.21's oneDNN
    CPU kernels crashed the process training the width-8 default model on batches of 63
    images (64 // 3 = 21 triplets). The crash was in the strided 1x1 shortcut convolution,
    which the model now computes as subsampling plus a 1x1 convolution, so odd batches
    train too; the count stays even so that offline results remain comparable.
    """
    return max(1, sampler.batch_size // 6 * 2)


def fit_offline(trainer, faces, sampler, config: Config, metric: str, start_epoch: int, image_size, augmentation, callbacks):
    """Offline mining: at the start of each epoch embed the training split, mine, train on the triplets.

    Each epoch has as many steps as an online epoch; each step a batch of B triplets stacked
    as [anchors; positives; negatives] (3B images) for the naive triplet loss.
    """
    from facetrip.data.pipeline import indexed_batches

    import numpy as np

    per_batch = offline_triplets_per_batch(sampler)
    steps = sampler.batches_per_epoch
    given = triplets_from_file(config.loss.offline_triplets, faces) if config.loss.offline_triplets else None
    for epoch in range(start_epoch, config.train.epochs):
        seed = config.train.seed * 100_003 + epoch
        if epoch == 0 and given is not None and len(given):
            triplets = given[np.random.default_rng(seed).integers(0, len(given), steps * per_batch)]
        else:
            embeddings = embed_faces(trainer.embedder, faces, image_size, config.data.channels)
            triplets = select_offline_triplets(embeddings, faces.labels, config.loss.margin, metric, steps * per_batch, seed)
        stacked = triplets.reshape(steps, per_batch, 3).transpose(0, 2, 1).reshape(steps, 3 * per_batch)  # [a; p; n]
        dataset = indexed_batches(faces, lambda stacked=stacked, epoch=epoch: [(epoch, stacked)], steps, 3 * per_batch,
                                  image_size, config.data.channels, augmentation, seed=config.train.seed)
        trainer.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, callbacks=callbacks,
                    verbose=0, shuffle=False)


def triplets_from_file(path: str, faces):
    """Triplets saved by ``facetrip mine`` as indices into ``faces``, matched by image file name."""
    import numpy as np

    from facetrip.mining import load_triplets

    try:
        saved = load_triplets(path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainingError(str(error)) from None
    if saved.file_names is None:
        raise TrainingError(f"{path} holds no image names, so its triplets cannot be matched to the training images.")
    position = {name: index for index, name in enumerate(faces.file_names)}
    names = saved.file_names[saved.triplets]  # (M, 3)
    missing = {name for name in names.ravel() if name not in position}
    if missing:
        raise TrainingError(
            f"{len(missing)} images of {path} are not training images of this run (e.g. {sorted(missing)[0]}): "
            f"mine the train split of a run with the same data and split."
        )
    return np.vectorize(position.__getitem__, otypes=[np.int64])(names).reshape(-1, 3)


def select_offline_triplets(embeddings, labels, margin, metric: str, count: int, seed: int):
    """``count`` (anchor, positive, negative) index triplets for one offline epoch.

    Hard and semi-hard triplets mined from the current embeddings (with the soft margin,
    hard ones only), drawn with replacement when fewer than ``count`` exist; random
    valid triplets when none does.

    Returns:
        (count, 3) int64 array.
    """
    import numpy as np

    from facetrip.mining import mine_triplets

    soft = isinstance(margin, str)
    mined = mine_triplets(embeddings, labels, 0.0 if soft else margin, metric=metric,
                          categories=("hard",) if soft else ("hard", "semi_hard"), max_triplets=count, seed=seed).triplets
    rng = np.random.default_rng(seed)
    if len(mined) >= count:
        return mined[:count]
    if len(mined):
        return np.concatenate([mined, mined[rng.integers(0, len(mined), count - len(mined))]])
    return random_valid_triplets(labels, count, rng)


def random_valid_triplets(labels, count: int, rng):
    """``count`` uniformly drawn valid triplets (anchors among images that have a positive)."""
    import numpy as np

    labels = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    anchors = rng.choice(np.flatnonzero(counts[inverse] >= 2), count)  # (count,)
    triplets = []
    for anchor in anchors:
        same = np.flatnonzero(labels == labels[anchor])
        positive = rng.choice(same[same != anchor])
        negative = rng.choice(np.flatnonzero(labels != labels[anchor]))
        triplets.append((anchor, positive, negative))
    return np.asarray(triplets, np.int64).reshape(count, 3)
