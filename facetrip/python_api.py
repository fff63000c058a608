"""facetrip from Python: load a run, then embed, verify and identify photos; or train one.

::

    run = facetrip.load_run("runs/tour")
    run.embed(photos)                  -> (N, D) float32 embeddings            facetrip embed
    run.verify(photo1, photo2)         -> Verification (distance, verdict)      facetrip verify
    run.identify(photos, "people.idx") -> [Identification] (person or unknown)  facetrip identify
    run.threshold                      -> the run's calibrated distance threshold
    facetrip.train(config, run_dir)    -> the trained run, loaded               facetrip train

A photo is a file path (``str`` or ``Path``), the bytes of an encoded image, a PIL image, or
a NumPy array of uint8 pixels, (height, width, 3) RGB or (height, width) grey. Every photo
reaches the model by the path the commands take (:mod:`facetrip.data.model_input`): its
aligned face chip for runs on face chips, the whole image otherwise, so a file gives the
numbers ``facetrip verify`` and ``facetrip identify`` print for it. A PIL image is first
turned upright by its EXIF orientation, as a file is.

Nothing here imports TensorFlow until a run is loaded or trained. Bad input raises a
``ValueError`` subclass with a one-line message: :class:`~facetrip.data.ImageReadError`
for a photo, :class:`~facetrip.runs.RunError` for a run, :class:`~facetrip.config.ConfigError`
and :class:`~facetrip.training.TrainingError` for a training config,
:class:`~facetrip.evaluation.calibration.CalibrationError` for a threshold,
:class:`~facetrip.identification.GalleryIndexError` for an index.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from facetrip.config import Config
    from facetrip.identification import GalleryIndex
    from facetrip.identification.photos import Embedded
    from facetrip.runs.loaded_run import Run

# Photos read, aligned and embedded at a time by TrainedRun.embed: memory bounded by this many encoded photos.
PHOTOS_PER_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Verification:
    """Are two photos the same person? What ``facetrip verify`` prints.

    Attributes:
        distance: the distance of the two embeddings under the run's metric.
        threshold: the distance threshold decided with (None when the run has none and none was given).
        same_person: ``distance <= threshold`` (None without a threshold).
        faces_detected: faces the detector found on each photo (0: none, the whole photo was
            used; 2 or more: the one at the centre, else the largest, was used); None for runs
            that read whole images.
        metric: ``euclidean``, ``squared`` or ``cosine``.
        threshold_rule: how the threshold was chosen.
        threshold_warning: the run's saved threshold took too many strangers after training
            (:func:`facetrip.evaluation.stranger_check.loose_threshold_note`); None otherwise.
    """

    distance: float
    threshold: float | None
    same_person: bool | None
    faces_detected: tuple[int, int] | None
    metric: str
    threshold_rule: str
    threshold_warning: str | None = None

    @property
    def faces_found(self) -> tuple[bool, bool] | None:
        """Whether a face was found on each photo (None for runs that read whole images)."""
        if self.faces_detected is None:
            return None
        return self.faces_detected[0] > 0, self.faces_detected[1] > 0


@dataclasses.dataclass(frozen=True)
class Match:
    """One of a photo's nearest people in an index.

    Attributes:
        person: the person's name in the index.
        distance: the person's score: the distance to their mean embedding, or to their nearest photo.
        file: the person's nearest photo (``score="nearest"``); None for the mean score.
    """

    person: str
    distance: float
    file: str | None


@dataclasses.dataclass(frozen=True)
class Identification:
    """Who is on one photo? One row of ``facetrip identify``.

    Attributes:
        decision: ``"known"`` (the nearest person is within the threshold), ``"unknown"``, or
            ``"no face"`` (runs on face chips: no face was found, the photo was not searched).
        person: the person identified, or None.
        distance: the nearest person's score, or None for a photo without a face.
        matches: the nearest people, nearest first (at most ``top_k``).
        faces_detected: faces the detector found on the photo; None for runs that read whole images.
        threshold: the distance threshold decided with.
        threshold_rule: how the threshold was chosen, as ``facetrip identify --json`` says it.
        decision_rule: ``"false_alarm"`` (the default: at most the run's ``identify.false_alarm`` of
            strangers named as someone among the index's people) or ``"pair"`` (``threshold`` or ``far``).
    """

    decision: str
    person: str | None
    distance: float | None
    matches: tuple[Match, ...]
    faces_detected: int | None
    threshold: float
    threshold_rule: str = ""
    decision_rule: str = "false_alarm"


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run loaded for use: embed, verify and identify photos with its model.

    Attributes:
        loaded_run: the :class:`facetrip.runs.loaded_run.Run` underneath (its Keras model and metadata).
    """

    loaded_run: Run

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.loaded_run.path

    @property
    def metadata(self) -> dict[str, Any]:
        """The run's ``metadata.json``."""
        return self.loaded_run.metadata

    @property
    def threshold(self) -> float | None:
        """The distance at or below which two photos are the same person, calibrated at training time (None if none)."""
        threshold = self.metadata.get("threshold")
        return None if threshold is None else float(threshold)

    @property
    def metric(self) -> str:
        """The run's distance: ``euclidean``, ``squared`` or ``cosine``."""
        return str(self.metadata["metric"])

    def embed(self, photos) -> np.ndarray:
        """The embeddings of photos, as ``facetrip embed`` computes them.

        A photo on which no face is found is embedded whole, as by the commands; use
        :meth:`verify` or :meth:`identify` to learn where a face was found. Above 64 photos
        not aligned before, runs on face chips align them in worker processes, which
        import the calling script as Python's spawn does: guard a script's work with
        ``if __name__ == "__main__":``.

        Args:
            photos: a photo, or a sequence of photos (paths, bytes, PIL images or uint8 arrays).

        Returns:
            (N, D) float32, row i the embedding of photo i.

        Raises:
            ImageReadError: naming the first photo that cannot be read.
        """
        return self._embedded(photos)[0]

    def verify(self, first_photo, second_photo, threshold: float | None = None,
               far: float | None = None) -> Verification:
        """Are two photos the same person? The distance of their embeddings against the run's threshold.

        Args:
            first_photo, second_photo: photos (a path, bytes, a PIL image or a uint8 array each).
            threshold: decide with this distance instead of the run's threshold.
            far: decide with the threshold for this false accept rate (0.001 = 0.1%) on the
                run's saved calibration distances.

        Returns:
            :class:`Verification`, the numbers ``facetrip verify`` prints for the same photos.

        Raises:
            ImageReadError: a photo cannot be read.
            CalibrationError: both ``threshold`` and ``far``, or ``far`` outside (0, 1) or
                for a run that saved no calibration distances.
        """
        from facetrip.evaluation.calibration import verification_threshold
        from facetrip.verification import distance

        chosen, rule = verification_threshold(self.metadata, threshold, far)  # before any photo is embedded
        embeddings, faces_detected = self._embedded([first_photo, second_photo])  # (2, D)
        value = distance(embeddings[0], embeddings[1], self.metric)
        warning = None
        if threshold is None and far is None:
            from facetrip.evaluation.stranger_check import loose_threshold_note

            warning = loose_threshold_note(self.metadata)
        return Verification(
            distance=value,
            threshold=chosen,
            same_person=None if chosen is None else bool(value <= chosen),
            faces_detected=None if faces_detected is None else (faces_detected[0], faces_detected[1]),
            metric=self.metric,
            threshold_rule=rule,
            threshold_warning=warning,
        )

    def load_index(self, index_dir: str | Path) -> GalleryIndex:
        """An index written by ``facetrip index`` with this run's model, read once for many :meth:`identify` calls.

        Raises:
            GalleryIndexError: no index in ``index_dir``, a damaged one, or one of another model.
        """
        from facetrip.identification.workflows import load_index

        return load_index(self.loaded_run, index_dir)

    def identify(self, photos, index, top_k: int = 5, score: str = "mean", threshold: float | None = None,
                 far: float | None = None, false_alarm: float | None = None,
                 search: str = "auto") -> list[Identification]:
        """Who is on each photo? The nearest people of an index, and a person or unknown, as ``facetrip identify``.

        Args:
            photos: a photo, or a sequence of photos (paths, bytes, PIL images or uint8 arrays).
            index: the folder of an index written by ``facetrip index`` with this run, or
                what :meth:`load_index` read from one.
            top_k: people listed per photo.
            score: a person's distance: to their ``"mean"`` embedding, or to their ``"nearest"`` photo.
            threshold: a known person is at most this far (the pair rule).
            far: use the threshold for this false accept rate per pair on the run's calibration pairs (the pair rule).
            false_alarm: name at most this share of strangers (0.01 = 1%) as one of the index's
                people; default (none of the three given): the run's ``identify.false_alarm``
                (:mod:`facetrip.identification.decision`).
            search: ``"exact"``, ``"ann"`` (approximate, facetrip[ann]) or ``"auto"``.

        Returns:
            One :class:`Identification` per photo, in order.

        Raises:
            ValueError: ``top_k`` below 1, or an unknown ``score`` or ``search``.
            ImageReadError: a photo cannot be read.
            GalleryIndexError: no index, a damaged one, or one of another model.
            CalibrationError: more than one of ``threshold``, ``far`` and ``false_alarm``, or
                no threshold at all.
            ConfigError: the run's ``identify.false_alarm`` is out of range.
        """
        from facetrip.identification import GalleryIndex
        from facetrip.identification.index import WHOLE_IMAGE
        from facetrip.identification.search import SCORES
        from facetrip.identification.workflows import identify_decision, identify_with_index

        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, not {score!r}.")
        if search not in ("auto", "exact", "ann"):
            raise ValueError(f"search must be auto, exact or ann, not {search!r}.")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}.")
        if not isinstance(index, GalleryIndex):
            index = self.load_index(index)
        else:
            from facetrip.identification.index import check_same_model, model_fingerprint

            check_same_model(index.manifest, model_fingerprint(self.path, self.metadata), self.path, "the index given")
        decision = identify_decision(self.loaded_run, len(index.people), threshold, far, false_alarm)
        chosen = decision.threshold
        results, faces_detected = [], []
        for embedded in self._embedded_chunks(photos):
            results += identify_with_index(index, embedded, chosen, int(top_k), score, search)["results"]
            faces_detected += embedded.faces_detected.tolist()
        return [
            Identification(
                decision=result["decision"], person=result["person"], distance=result["distance"],
                matches=tuple(Match(match["person"], match["distance"], match["file"]) for match in result["matches"]),
                faces_detected=None if count == WHOLE_IMAGE else int(count), threshold=chosen,
                threshold_rule=decision.rule, decision_rule=decision.decision_rule,
            )
            for result, count in zip(results, faces_detected)
        ]

    def _embedded(self, photos) -> tuple[np.ndarray, list[int] | None]:
        """``((N, D) float32 embeddings, faces detected per photo)``; None instead of the counts for runs on whole images."""
        embeddings, faces_detected = [], []
        for embedded in self._embedded_chunks(photos):
            embeddings.append(embedded.embeddings)  # (n, D)
            faces_detected += embedded.faces_detected.tolist()
        return np.concatenate(embeddings), faces_detected if self.loaded_run.face_chips else None

    def _embedded_chunks(self, photos) -> Iterator[Embedded]:
        """The photos embedded :data:`PHOTOS_PER_CHUNK` at a time, in order (one empty chunk for no photos)."""
        photos = _photo_list(photos)
        for start in range(0, max(len(photos), 1), PHOTOS_PER_CHUNK):
            yield self._embedded_photos(photos[start:start + PHOTOS_PER_CHUNK], first_number=start + 1)

    def _embedded_photos(self, photos: list, first_number: int = 1) -> Embedded:
        """Photos embedded through the run's own photo path (:func:`facetrip.identification.photos.embed_photos`).

        Args:
            photos: the photos.
            first_number: the first photo's place among all those given, from 1, to name it in errors.
        """
        from facetrip.data import FaceImages
        from facetrip.data.images import decodable_bytes
        from facetrip.identification.photos import embed_photos

        encoded, names = [], []
        for number, photo in enumerate(photos, first_number):
            data, name = _photo_bytes(photo, number)
            # Runs on whole images decode the photo's checked first frame (re-encoded as PNG where TensorFlow
            # would decode it otherwise); runs on face chips cut the chip from the photo's own bytes.
            encoded.append(data if self.loaded_run.face_chips else decodable_bytes(data, name))
            names.append(name)
        images = np.empty(len(encoded), dtype=object)  # (N,) bytes
        images[:] = encoded
        faces = FaceImages(encoded=images, labels=np.zeros(len(encoded), np.int64), identity_names=["?"],
                           file_names=np.asarray(names, dtype=str), channels=3, source="photos")
        return embed_photos(self.loaded_run, faces)


def load_run(run_dir: str | Path | None = None) -> TrainedRun:
    """Load a run directory written by ``facetrip train``, ready to embed, verify and identify photos.

    Args:
        run_dir: the run directory; None for the latest finished run under ``runs/``, as the commands do.

    Returns:
        :class:`TrainedRun`.

    Raises:
        RunError: no run there, or a run this version cannot read (what to do, in one line).
    """
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()  # quietly, before Keras does
    from facetrip.runs import latest_run
    from facetrip.runs.loaded_run import Run

    return TrainedRun(Run.load(run_dir if run_dir is not None else latest_run()))


def train(config: Config | dict | str | Path, run_dir: str | Path | None = None, overwrite: bool = False,
          callbacks: Sequence[Any] = ()) -> TrainedRun:
    """Train a run, as ``facetrip train --config ... --no-evaluate`` does, and load it.

    The config is written to ``run_dir/config.toml`` first; the run is calibrated (its
    threshold) but not evaluated: ``facetrip evaluate RUN`` writes ``metrics.json``.

    Args:
        config: a :class:`facetrip.config.Config`, a dict of TOML sections
            (``{"train": {"epochs": 5}}``; the rest default), or a TOML file.
        run_dir: the run directory to write; None for a new ``runs/<timestamp>``.
        overwrite: train into a folder that holds a run (its files are replaced) or other files.
        callbacks: Keras callbacks to add to the fit (a progress display, say).

    Returns:
        The trained run, loaded (:class:`TrainedRun`; its ``metadata`` is what training wrote).

    Raises:
        ConfigError: an unknown key or a bad value in the config.
        TrainingError, DataError: the folder is refused, or the config or data cannot be trained on.
        RunError: another process is training into ``run_dir``.
        TrainingDiverged: the loss became NaN or infinite (a RuntimeError).
    """
    from facetrip.config import Config, ConfigError

    if isinstance(config, (str, os.PathLike)):
        config = Config.from_toml(config)
    elif isinstance(config, dict):
        config = Config.from_dict(config)
    elif not isinstance(config, Config):
        raise ConfigError(f"config must be a Config, a dict of TOML sections or a TOML file, not {type(config).__name__}.")
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    from facetrip.runs import new_run_dir
    from facetrip.training import prepare_run_dir, train as train_run

    run_dir = Path(run_dir) if run_dir is not None else new_run_dir()
    prepare_run_dir(config, run_dir, overwrite=overwrite)  # refuses a folder it could lose files in
    train_run(config, run_dir, callbacks=callbacks)
    return load_run(run_dir)


def _photo_list(photos) -> list:
    """Photos as a list: one photo becomes a list of one; a (N, H, W, C) array, N photos."""
    if _is_one_photo(photos):
        return [photos]
    if isinstance(photos, np.ndarray) and photos.ndim == 4:
        return list(photos)
    try:
        return list(photos)
    except TypeError:
        raise _photo_error(photos, 1) from None


def _is_one_photo(photo) -> bool:
    if isinstance(photo, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if isinstance(photo, np.ndarray):
        return photo.ndim in (2, 3)
    return _is_pil_image(photo)


def _is_pil_image(photo) -> bool:
    from PIL import Image

    return isinstance(photo, Image.Image)


def _photo_bytes(photo, number: int) -> tuple[bytes, str]:
    """``(encoded bytes, name)`` of one photo: a file's bytes as read, or a PIL image or array as PNG.

    Args:
        photo: a path, bytes, a PIL image or a uint8 array.
        number: the photo's place among those given, from 1, to name it in errors.

    Raises:
        ImageReadError: a missing or unreadable file, an array of another shape or type, or another kind of object.
    """
    from facetrip.data.images import ImageReadError, image_to_png_bytes, read_photo_file

    if isinstance(photo, (str, os.PathLike)):
        return read_photo_file(photo), str(photo)
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return bytes(photo), f"photo {number} (bytes)"
    if _is_pil_image(photo):
        from PIL import ImageOps

        try:
            upright = ImageOps.exif_transpose(photo)  # as a file's photo is turned (facetrip.data.photo_pixels)
            return image_to_png_bytes(upright), f"photo {number} (a PIL image)"
        except (OSError, ValueError) as error:
            raise ImageReadError(f"photo {number} (a PIL image) cannot be read: {str(error).splitlines()[0][:120]}") from None
    if isinstance(photo, np.ndarray):
        from PIL import Image

        pixels = photo[..., 0] if photo.ndim == 3 and photo.shape[-1] == 1 else photo
        if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)) \
                or 0 in pixels.shape:
            raise ImageReadError(f"photo {number} is a {photo.dtype} array of shape {photo.shape}: give uint8 pixels, "
                                 f"(height, width, 3) RGB or (height, width) grey; several photos as a list.")
        return image_to_png_bytes(Image.fromarray(np.ascontiguousarray(pixels))), f"photo {number} (an array)"
    raise _photo_error(photo, number)


def _photo_error(photo, number: int):
    from facetrip.data.images import ImageReadError

    return ImageReadError(f"photo {number} is a {type(photo).__name__}: give a file path, the bytes of an image, "
                          f"a PIL image or a uint8 array (height, width, 3).")

