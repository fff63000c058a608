"""The triplet-loss core: distances, masks, miners, online-mining losses and their Keras wrappers.

Users of the classic blog implementation switch by changing one import::

    from facetrip.losses import batch_all_triplet_loss, batch_hard_triplet_loss
"""

from facetrip.losses.distances import METRICS, paired_distances, pairwise_distances, resolve_metric
from facetrip.losses.keras import TripletLoss, TripletStatistic, triplet_metrics
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask, triplet_mask
from facetrip.losses.memory import cross_distances, memory_contents, memory_enqueue
from facetrip.losses.miners import MinedTriplets, batch_all_miner, batch_hard_miner, semi_hard_miner
from facetrip.losses.statistics import STATISTICS, triplet_batch_statistics
from facetrip.losses.triplet import (
    STRATEGIES,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    online_triplet_loss,
    resolve_strategy,
    semi_hard_triplet_loss,
    triplet_loss,
)

# The classic blog post's mask names, so that its code runs with only the import changed.
_get_anchor_positive_triplet_mask = anchor_positive_mask
_get_anchor_negative_triplet_mask = anchor_negative_mask
_get_triplet_mask = triplet_mask
_pairwise_distances = pairwise_distances

__all__ = [
    "METRICS",
    "MinedTriplets",
    "STATISTICS",
    "STRATEGIES",
    "TripletLoss",
    "TripletStatistic",
    "anchor_negative_mask",
    "anchor_positive_mask",
    "batch_all_miner",
    "batch_all_triplet_loss",
    "batch_hard_miner",
    "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss",
    "cross_distances",
    "memory_contents",
    "memory_enqueue",
    "online_triplet_loss",
    "paired_distances",
    "pairwise_distances",
    "resolve_metric",
    "resolve_strategy",
    "semi_hard_miner",
    "semi_hard_triplet_loss",
    "triplet_batch_statistics",
    "triplet_loss",
    "triplet_mask",
    "triplet_metrics",
]
