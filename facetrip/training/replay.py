"""Replay: rehearse other people's photos while fine-tuning, so that the network forgets less of them.

Fine-tuning on one kind of photo (Yale B's laboratory lighting) moves the network away
from the in-the-wild faces it was pretrained on: LFW accuracy falls with the share of the
fine-tuning kept (docs/quality.md). With ``train.replay = SOURCE`` every P x K batch draws
``P_replay = round(train.replay_share * P)`` of its P identities from SOURCE's people
(:class:`~facetrip.data.sampler.MixedPKSampler`), mined and classified with the training
source's, so each step also keeps those people apart:

    batch = (P - P_replay) training identities x K photos  +  P_replay replay identities x K photos

Replay people are training identities of the run. They are never in its dev or test
split (those come from the training source only) and never in the stranger check (a check
on the replay source is skipped). A replay identity named like any identity of the
training source is left out, since the same name may be the same person. The run
directory records the replay people in ``replay.json``, which ``evaluate`` reads so that
they are never scored as strangers either.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.training.errors import TrainingError

logger = logging.getLogger(__name__)

# How a source's photos are read by the model, by geometry: dlib chips cut by facetrip (chips) and dlib
# chips given (dlib) are the same; ArcFace crops and whole photos are each their own.
_GEOMETRY = {"chips": "dlib chips", "dlib": "dlib chips", "arcface": "ArcFace crops", "photos": "whole photos"}


@dataclasses.dataclass(frozen=True)
class Replay:
    """The replay people of a run.

    Attributes:
        source: the replay source's name.
        share: the share of each batch's identities drawn from it.
        faces: the replay people's photos, as the model reads them.
        left_out: replay identities left out because one of the training source's is named the same.
    """

    source: str
    share: float
    faces: Any
    left_out: tuple[str, ...]

    @property
    def identities(self) -> list[str]:
        """The names of the replay people trained on."""
        present = np.unique(self.faces.labels)
        return [str(self.faces.identity_names[label]) for label in present]

    def record(self) -> dict[str, Any]:
        """The ``replay`` entry of metadata.json: source, share, identities, photos, and how many were left out."""
        return {"source": self.source, "share": self.share, "identities": len(np.unique(self.faces.labels)),
                "photos": len(self.faces), "left_out_by_name": len(self.left_out)}


def check_replay_config(replay: str, share: float, offline: bool, training_source: str) -> None:
    """Refuse a replay setting that cannot train, before any data is loaded.

    Raises:
        TrainingError: replay with offline mining, or replay of the training source itself.
        DataError: a ``folder:`` or ``rec:`` replay source whose folder is missing, or a ``bin:`` one.
    """
    from facetrip.data.sources import check_source_folder, is_same_source

    if not replay:
        return
    if not 0.0 <= share < 1.0:
        raise TrainingError(f"train.replay_share must lie in [0, 1), not {share}.")
    if offline:
        raise TrainingError("train.replay mixes the P x K batches of the online strategies (batch_all, batch_hard, "
                            "semi_hard), not offline mining.")
    if is_same_source(replay, training_source):
        raise TrainingError(f"train.replay must name another source than the training data ({training_source}): "
                            "its people would be trained on twice and could reach the dev and test splits.")
    check_source_folder(replay)


def load_replay(config, training_faces) -> Replay | None:
    """The replay people of ``config.train.replay``, read as the training source's photos are; None when off.

    Args:
        config: the run's config (replay source and share, data dir, face chips, P).
        training_faces: every photo of the training source (all its splits): replay people
            named like one of its identities are left out.

    Returns:
        The :class:`Replay`, or None without ``train.replay``.

    Raises:
        TrainingError: the replay photos are read in another geometry than the training
            source's, or fewer than P replay people have two or more photos.
        DataError: the replay source cannot be loaded.
    """
    from facetrip.data.records import load_model_faces, logged_progress
    from facetrip.data.sampler import second_group_identities

    source = config.train.replay
    if not source:
        return None
    faces, _ = load_model_faces(source, data_dir=config.data.data_dir or None, face_chips=config.data.face_chips,
                                chip_format=config.data.chip_format,
                                progress=logged_progress(f"Preparing the replay source {source}"))
    replay_geometry = _GEOMETRY.get(faces.model_input, faces.model_input)
    training_geometry = _GEOMETRY.get(training_faces.model_input, training_faces.model_input)
    if replay_geometry != training_geometry:
        raise TrainingError(f"The replay source {source} is read as {replay_geometry} and the training source as "
                            f"{training_geometry}: replay needs photos the model reads the same way.")
    training_names = set(map(str, training_faces.identity_names))
    names = [str(name) for name in faces.identity_names]
    left_out = tuple(sorted(name for name in names if name in training_names))
    if left_out:
        logger.warning("%d replay identities of %s are named like identities of %s and are left out (the same name "
                       "may be the same person), e.g. %s.", len(left_out), source, config.data.source,
                       ", ".join(left_out[:3]))
        faces = faces.restricted_to([name for name in names if name not in training_names])
    identities_per_batch = config.sampler.identities_per_batch
    usable = int(np.sum(np.bincount(faces.labels, minlength=len(faces.identity_names)) >= 2))
    if usable < identities_per_batch:
        note = f", after {len(left_out)} named like training identities were left out" if left_out else ""
        raise TrainingError(f"The replay source {source} has {usable} people with two or more photos{note}: "
                            f"replay needs at least P = {identities_per_batch} of them.")
    if config.train.replay_share == 0:
        logger.warning("train.replay_share = 0: no batch draws on the replay source %s.", source)
    replay = Replay(source, float(config.train.replay_share), faces, left_out)
    logger.info("Replay: %d people (%d photos) of %s, %d of the %d identities of every batch.",
                replay.record()["identities"], len(faces), source,
                second_group_identities(replay.share, identities_per_batch), identities_per_batch)
    return replay


def replay_training_photos(train_faces, replay: Replay, config):
    """The training photos with the replay people's after them, and the sampler that mixes them.

    Args:
        train_faces: the training identities' photos.
        replay: the run's replay people.
        config: the run's config (P, K, seed, steps per epoch).

    Returns:
        ``(faces, sampler)``: :func:`~facetrip.data.combined.chained_faces` of the two, and a
        :class:`~facetrip.data.sampler.MixedPKSampler` drawing ``replay.share`` of each
        batch's identities from the replay people.
    """
    from facetrip.data.combined import chained_faces
    from facetrip.data.sampler import MixedPKSampler

    faces = chained_faces(train_faces, replay.faces)
    second = np.arange(len(faces)) >= len(train_faces)  # (N,) the replay photos
    sampler = MixedPKSampler(faces.labels, second, config.sampler.identities_per_batch,
                             config.sampler.images_per_identity, share=replay.share, seed=config.train.seed,
                             steps_per_epoch=config.train.steps_per_epoch)
    return faces, sampler


def write_replay_record(run_dir: Path, replay: Replay) -> None:
    """Write ``replay.json``: the source, the share and the names of the replay people."""
    from facetrip.runs import REPLAY_FILE, atomic_write_json

    atomic_write_json(run_dir / REPLAY_FILE, {"source": replay.source, "share": replay.share,
                                              "identities": replay.identities, "left_out": list(replay.left_out)})
