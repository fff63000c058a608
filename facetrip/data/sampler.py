"""The P x K batch sampler: every batch holds P distinct identities with K images each.

Index batches are generated on the host with NumPy (vectorised, seeded per epoch) and
only decoded in tf.data, so the sampler scales to 100k identities: nothing is built per
identity in TensorFlow (the ``choose_from_datasets`` approach breaks down near 7k).

An epoch has ``round(num_images / (P K))`` batches. Identities are visited equally often
(fresh permutations of them), and each identity's images in a fresh random order, K at a
time. With balanced identities that is about one pass over the images (ORL: 10 each);
with unbalanced ones, small identities repeat images and large ones are not all seen in
one epoch (measured: 90% of 1M images distinct in an epoch at 10 per identity, 78% at
1 to 20 per identity).
Identities with fewer than K images repeat some (sampling with replacement); identities
with a single image cannot give a positive pair and are left out.
"""

from __future__ import annotations

import logging

import numpy as np

from facetrip.data.errors import DataError

logger = logging.getLogger(__name__)


class PKSampler:
    """Seeded P x K index batches over integer identity labels.

    Args:
        labels: (N,) identity label of every image (any integers).
        identities_per_batch: P, distinct identities per batch.
        images_per_identity: K, images of each identity per batch.
        seed: the same seed gives the same batches, epoch by epoch.
        steps_per_epoch: batches per epoch; 0 for about one pass over the images
            (:attr:`batches_per_epoch`), a number for sets whose pass is too long.

    Raises:
        DataError: fewer than P identities have two or more images.
    """

    def __init__(self, labels, identities_per_batch: int, images_per_identity: int = 4, seed: int = 0,
                 steps_per_epoch: int = 0, *, _part_of_batch: bool = False):
        # _part_of_batch: the identities of one source within a mixed batch (MixedPKSampler), which may be one.
        if identities_per_batch < (1 if _part_of_batch else 2):
            raise DataError(f"P (identities per batch) must be at least 2 for triplets, not {identities_per_batch}.")
        if images_per_identity < 2:
            raise DataError(f"K (images per identity) must be at least 2 for positive pairs, not {images_per_identity}.")
        labels = np.asarray(labels).reshape(-1)
        self.identities_per_batch = int(identities_per_batch)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.steps_per_epoch = int(steps_per_epoch)

        identities, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        usable = counts >= 2
        self.num_left_out = int((~usable).sum())
        self.num_with_replacement = int((usable & (counts < self.images_per_identity)).sum())
        if usable.sum() < self.identities_per_batch:
            raise DataError(
                f"P = {self.identities_per_batch} identities per batch, but only {int(usable.sum())} of "
                f"{len(identities)} identities have two or more images: lower -P or add images."
            )
        if self.num_left_out:
            logger.warning("%d identities with a single image cannot give a positive pair: left out of training.", self.num_left_out)
        if self.num_with_replacement:
            logger.warning(
                "%d identities have fewer than K = %d images: their images are repeated within a batch.",
                self.num_with_replacement,
                self.images_per_identity,
            )

        # Images of usable identities, grouped by identity: group g owns members[offsets[g]:offsets[g+1]].
        group_of_identity = np.cumsum(usable) - 1  # (num identities,)
        keep = usable[inverse]
        self._group_of_image = group_of_identity[inverse[keep]]  # (M,)
        self._image_index = np.flatnonzero(keep)  # (M,) index into the original arrays
        self.group_sizes = counts[usable]  # (U,)
        self._offsets = np.concatenate([[0], np.cumsum(self.group_sizes)])  # (U + 1,)
        self.identities = identities[usable]  # (U,) label of each group

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity

    @property
    def num_identities(self) -> int:
        return len(self.group_sizes)

    @property
    def batches_per_epoch(self) -> int:
        """``steps_per_epoch`` when set, else about one pass over the images: round(images / (P K)), at least 1."""
        if self.steps_per_epoch > 0:
            return self.steps_per_epoch
        return max(1, int(round(len(self._image_index) / self.batch_size)))

    def epoch(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch, P * K) int64 indices into the labels given at construction.

        Batch b holds identity slots b*P .. b*P + P - 1, each followed by its K images.
        """
        rng = np.random.default_rng([self.seed, int(epoch)])
        num_groups, per_batch, per_identity = self.num_identities, self.identities_per_batch, self.images_per_identity
        num_batches = self.batches_per_epoch

        # Identity slots: rows of fresh permutations, cut into P-sized batches (no repeats in a batch).
        batches_per_permutation = num_groups // per_batch
        num_permutations = -(-num_batches // batches_per_permutation)
        permutations = rng.permuted(np.tile(np.arange(num_groups), (num_permutations, 1)), axis=1)
        slots = permutations[:, : batches_per_permutation * per_batch].reshape(-1)[: num_batches * per_batch]  # (S,)

        # The o-th visit of a group in this epoch takes its images o*K .. o*K + K - 1 (cyclically)
        # from the group's shuffled order.
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        visit = np.empty_like(slots)
        visit[order] = np.arange(len(slots)) - np.searchsorted(sorted_slots, sorted_slots, side="left")  # (S,)
        shuffled = np.lexsort((rng.random(len(self._group_of_image)), self._group_of_image))  # (M,) grouped, shuffled
        sizes = self.group_sizes[slots][:, np.newaxis]  # (S, 1)
        positions = (visit[:, np.newaxis] * per_identity + np.arange(per_identity)) % sizes  # (S, K)
        members = shuffled[self._offsets[slots][:, np.newaxis] + positions]  # (S, K)
        return self._image_index[members].reshape(num_batches, per_batch * per_identity).astype(np.int64)


class MixedPKSampler:
    """P x K batches whose identities come from two groups of photos: the training source's and a replay source's.

    Each batch holds ``P_replay = min(P - 1, max(1, round(share * P)))`` identities of the
    second group (none when ``share`` is 0) and ``P - P_replay`` of the first, each with K
    images, drawn by a :class:`PKSampler` over each group: a batch is the first group's
    ``(P - P_replay) K`` indices followed by the second's ``P_replay K``. An epoch is about one
    pass over the first group's photos, ``round(N_first / ((P - P_replay) K))`` batches (or
    ``steps_per_epoch``), so the training source is seen as often as without replay.

    Args:
        labels: (N,) identity label of every photo; the groups share no label.
        second: (N,) True for the photos of the second group (replay).
        identities_per_batch: P.
        images_per_identity: K.
        share: the share of each batch's identities drawn from the second group, in [0, 1).
        seed: the same seed gives the same batches.
        steps_per_epoch: batches per epoch; 0 for about one pass over the first group.

    Raises:
        DataError: a share outside [0, 1), or a group with too few identities of two or more photos.
    """

    def __init__(self, labels, second, identities_per_batch: int, images_per_identity: int = 4, share: float = 0.25,
                 seed: int = 0, steps_per_epoch: int = 0):
        if not 0.0 <= share < 1.0:
            raise DataError(f"The replay share must lie in [0, 1), not {share}.")
        if identities_per_batch < 2:
            raise DataError(f"P (identities per batch) must be at least 2 for triplets, not {identities_per_batch}.")
        labels = np.asarray(labels).reshape(-1)
        second = np.asarray(second, bool).reshape(-1)
        self.identities_per_batch = int(identities_per_batch)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.share = float(share)
        self.second_identities_per_batch = second_group_identities(share, self.identities_per_batch)
        first_per_batch = self.identities_per_batch - self.second_identities_per_batch
        self._first_index = np.flatnonzero(~second)  # (N1,)
        self._second_index = np.flatnonzero(second)  # (N2,)
        self.first = PKSampler(labels[self._first_index], first_per_batch, images_per_identity, seed=seed,
                               steps_per_epoch=steps_per_epoch, _part_of_batch=True)
        self.batches_per_epoch = self.first.batches_per_epoch
        self.second = (PKSampler(labels[self._second_index], self.second_identities_per_batch, images_per_identity,
                                 seed=self.seed + SECOND_GROUP_SEED_OFFSET, steps_per_epoch=self.batches_per_epoch,
                                 _part_of_batch=True)
                       if self.second_identities_per_batch else None)

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity

    @property
    def num_identities(self) -> int:
        return self.first.num_identities + (self.second.num_identities if self.second is not None else 0)

    def epoch(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch, P * K) int64 indices into the labels given at construction: each row the first
        group's identities, each followed by its K images, then the second group's."""
        first = self._first_index[self.first.epoch(epoch)]  # (batches, (P - P_replay) K)
        if self.second is None:
            return first
        second = self._second_index[self.second.epoch(epoch)]  # (batches, P_replay K)
        return np.concatenate([first, second], axis=1).astype(np.int64)


# The second group's sampler is seeded apart from the first's (their seeds never meet for seeds below 2**32).
SECOND_GROUP_SEED_OFFSET = 1 << 32


def second_group_identities(share: float, identities_per_batch: int) -> int:
    """Identities of a :class:`MixedPKSampler` batch drawn from the second group.

    Returns:
        ``min(P - 1, max(1, round(share * P)))`` for ``share > 0`` (at least one, and one
        identity left for the first group), else 0.
    """
    if share <= 0:
        return 0
    return min(identities_per_batch - 1, max(1, int(round(share * identities_per_batch))))
