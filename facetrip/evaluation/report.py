"""The evaluation workflow: a run's model and the classic baselines on identities it never saw.

:func:`evaluate_run` loads a run, checks its saved split (no test identity may be a
training identity), chooses pairs (all pairs of a small test split, a seeded balanced
sample of a large one, or an LFW ``pairs.txt`` file), embeds the images of those pairs
with the saved model (a black box), fits raw pixels / Eigenfaces / Fisherfaces on the
run's training identities, scores everyone on exactly the same pairs, and writes
``metrics.json`` and ``roc.png`` into the run directory.

On another data source than the run's, every identity of that source is evaluated except
those named like one of the run's training identities (the same name may be the same
person); the baselines still fit on the training identities of the run's own source.

Images reach the model and the baselines as the same arrays: the run's image size and
channels through :func:`facetrip.data.preprocess_encoded`, the path training used.

Nothing the size of the evaluated images is held in memory: the model's embeddings (and
the baselines' images) are written a batch at a time to a memory-mapped scratch ``.npy``
in the run directory (else the temporary folder), removed when done, and the distances of
the pairs are computed a chunk of pairs at a time from it. What is held is per pair: the
pairs and their distances, which the ROC needs.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np

from facetrip import __version__
# Runs calibrated to a target FAR save their threshold's rule; THRESHOLD_RULES describes older, equal-error runs.
from facetrip.evaluation.calibration import THRESHOLD_RULES, saved_threshold_rule  # noqa: F401  (THRESHOLD_RULES re-exported)
from facetrip.evaluation.metrics import NUM_FOLDS
from facetrip.data.sources import is_same_source  # noqa: F401 - also facetrip.evaluation.report's
from facetrip.data.splits import SPLIT_SIZE_LIMIT
from facetrip.untrusted_files import UntrustedFileError, read_untrusted_json
from facetrip.evaluation.pairs import Pairs
from facetrip.evaluation.pairs_file import NamedPairs, PairsFileError, PathPairs
from facetrip.evaluation.report_page import (DEFAULT_HARDEST_ERRORS, EvaluatedPairs, decision_threshold,
                                             hardest_error_rows)

# Most same-identity (and most different-identity) pairs; above it a balanced sample is drawn.
DEFAULT_MAX_PAIRS_PER_CLASS = 50_000
# Identities and identity pairs listed per kind of error at the run's threshold.
IDENTITIES_LISTED = 10
# Identities named in an error message before "..."
_SHOWN_NAMES = 3


class EvaluationError(ValueError):
    """A run or pairs set that cannot be evaluated honestly: one line saying why."""


class ReportNotWritten(EvaluationError):
    """The evaluation was computed but ``metrics.json`` or ``roc.png`` could not be written.

    Attributes:
        report: the complete report (``files`` is None), so that nothing computed is lost.
    """

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")


def run_split(run_dir: str | Path, metadata: dict) -> dict[str, list[str]]:
    """The run's identity split from ``split.json`` (checked against ``metadata.json``).

    Returns:
        ``{"train": [...], "dev": [...], "test": [...], "replay": [...]}``: ``replay`` lists the
        people of another source the run also trained on (``replay.json``, from ``train.replay``).

    Raises:
        EvaluationError: no split, the two files disagree, the split is not identity-disjoint
            between train and test, or the replay people of a run that records replay are unknown.
    """
    from facetrip.runs import METADATA_FILE, SPLIT_FILE

    split_path = Path(run_dir) / SPLIT_FILE
    saved = None
    if split_path.exists():
        try:
            saved = read_untrusted_json(split_path, SPLIT_SIZE_LIMIT, "identity split")
        except UntrustedFileError as error:
            raise EvaluationError(f"{error}.") from None
    recorded = metadata.get("split")
    if saved is None and recorded is None:
        raise EvaluationError(f"{run_dir} records no identity split ({SPLIT_FILE} or 'split' in {METADATA_FILE}).")
    split, where = (saved, split_path) if saved is not None else (recorded, Path(run_dir) / METADATA_FILE)
    try:
        parts = {name: [str(identity) for identity in split.get(name, [])] for name in ("train", "dev", "test")}
    except (AttributeError, TypeError):
        raise EvaluationError(f"{where} does not hold an identity split (train / dev / test lists).") from None
    trained_on_and_tested = set(parts["train"]) & set(parts["test"])
    if trained_on_and_tested:
        raise EvaluationError(
            f"{len(trained_on_and_tested)} test identities of {where} are also training identities "
            f"({_names(trained_on_and_tested)}): numbers on identities the model was trained on are meaningless."
        )
    if saved is not None and recorded is not None:
        for name in ("train", "test"):
            if sorted(parts[name]) != sorted(str(identity) for identity in recorded.get(name, [])):
                raise EvaluationError(
                    f"The {name} identities of {split_path} and {Path(run_dir) / METADATA_FILE} differ: "
                    f"the run directory was edited, so which identities were trained on is unknown."
                )
    parts["replay"] = _replay_identities(Path(run_dir), metadata)
    return parts


def _replay_identities(run_dir: Path, metadata: dict) -> list[str]:
    """The names of the replay people in ``replay.json``; none for a run without replay."""
    from facetrip.runs import REPLAY_FILE

    path = run_dir / REPLAY_FILE
    if not path.exists():
        if metadata.get("replay"):
            raise EvaluationError(f"{run_dir} trained with replay but has no {REPLAY_FILE}: which people it was "
                                  "trained on is unknown.")
        return []
    try:
        record = read_untrusted_json(path, SPLIT_SIZE_LIMIT, "replay record")
    except UntrustedFileError as error:
        raise EvaluationError(f"{error}.") from None
    names = record.get("identities") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise EvaluationError(f"{path} is not a replay record facetrip writes (it needs a list of identity names).")
    return names


def trained_identities(split: dict[str, list[str]]) -> list[str]:
    """Every identity a run trained on, by name: its training split and its replay people."""
    return [*split["train"], *split.get("replay", [])]


def image_index_by_name_and_number(file_names, labels, identity_names) -> dict[tuple[str, int], int]:
    """``{(identity, image number): image index}`` from file names ``identity/.../<stem ending in digits>.ext``.

    The number is the trailing digits of the file's stem: ``Aaron_Peirsol/Aaron_Peirsol_0003.jpg``
    (LFW) -> 3, ``s7/3.pgm`` (ORL) -> 3. Files whose first folder is not their identity
    (tfds data sets without file names, named ``split/index``) are left out. A key that
    several files share maps to -1.
    """
    index_by_key: dict[tuple[str, int], int] = {}
    for index, (file_name, label) in enumerate(zip(file_names, labels)):
        name = identity_names[label]
        path = PurePosixPath(str(file_name))
        digits = re.search(r"(\d+)$", path.stem)
        if len(path.parts) < 2 or path.parts[0] != name or digits is None:
            continue
        key = (name, int(digits.group(1)))
        index_by_key[key] = -1 if key in index_by_key else index
    return index_by_key


def pairs_from_file(named: NamedPairs | PathPairs, faces, pairs_file: str | Path) -> Pairs:
    """Map the pairs of an LFW pairs file, (name, number), or of CFP's protocol, paths, onto the images of ``faces``.

    Args:
        named: the pairs as :func:`facetrip.evaluation.pairs_file.read_pairs` reads them.
        faces: the evaluated source's images.
        pairs_file: the file or folder the pairs came from, for messages.

    Returns:
        :class:`Pairs` indexing ``faces``, with the file's folds.

    Raises:
        PairsFileError: the images carry no usable file names, or a name, an image number
            or a photo of the file is not in the data (names the line).
    """
    if isinstance(named, PathPairs):
        first, second = named.photo_indices(faces.file_names, faces.source)
        how = f"{len(named):,} pairs of {named.protocol} ({pairs_file}) in {len(np.unique(named.folds))} folds"
        return Pairs(first, second, named.same.copy(), named.folds, how)
    index_by_key = image_index_by_name_and_number(faces.file_names, faces.labels, faces.identity_names)
    if not index_by_key:
        example = faces.file_names[0] if len(faces) else "-"
        raise PairsFileError(
            f"The images of {faces.source} are not named NAME/NAME_0001.jpg (e.g. {example}), so the image numbers of "
            f"{pairs_file} cannot be matched: use folder:PATH on a folder in the LFW layout (NAME/NAME_0001.jpg)."
        )
    known = set(faces.identity_names)
    counts = faces.images_per_identity()
    position = {name: number for number, name in enumerate(faces.identity_names)}
    indices = np.empty((len(named), 2), np.int64)
    for row, (line, pair) in enumerate(zip(named.line_numbers, zip(named.first_names, named.first_numbers,
                                                                    named.second_names, named.second_numbers))):
        for column, (name, number) in enumerate((pair[:2], pair[2:])):
            if name not in known:
                raise PairsFileError(f"{pairs_file} line {line}: no identity {name!r} in {faces.source}.")
            index = index_by_key.get((name, int(number)))
            if index is None:
                raise PairsFileError(
                    f"{pairs_file} line {line}: {name} has no image number {number} in {faces.source} "
                    f"({counts[position[name]]} images found, e.g. {name}/{name}_0001.jpg)."
                )
            if index < 0:
                raise PairsFileError(f"{pairs_file} line {line}: image {number} of {name} matches several files in {faces.source}.")
            indices[row, column] = index
    folds = named.folds
    how = f"{len(named):,} pairs of {pairs_file}" + (
        f" in {len(np.unique(folds))} folds" if folds is not None else " (no folds: seeded stratified folds)"
    )
    return Pairs(indices[:, 0], indices[:, 1], named.same.copy(), folds, how)


def identities_of_another_source(faces, training_identities) -> tuple[list[str], list[str]]:
    """The identities of a source the run was not trained on to evaluate on, and those left out.

    An identity whose name is also one of the run's training identities is left out: the
    same name in both sources may be the same person, and a model must be scored on
    people it never saw.

    Returns:
        ``(evaluated, left_out)``, both sorted lists of names.
    """
    trained_on = set(map(str, training_identities))
    names = sorted(map(str, faces.identity_names))
    return [name for name in names if name not in trained_on], [name for name in names if name in trained_on]


def pairs_of_identities(faces, identity_names, max_pairs: int, seed: int) -> Pairs:
    """:func:`facetrip.evaluation.verification_pairs` of the images of some identities, as indices into ``faces``."""
    from facetrip.evaluation.pairs import verification_pairs

    chosen_names = set(identity_names)
    wanted = np.fromiter((name in chosen_names for name in faces.identity_names), bool,
                         len(faces.identity_names))  # (identities,)
    images = np.flatnonzero(wanted[faces.labels])  # (T,) indices into faces
    chosen = verification_pairs(faces.labels[images], max_pairs, seed)
    return Pairs(images[chosen.first], images[chosen.second], chosen.same, None, chosen.how)


def preprocess_images(faces, image_size, channels: int) -> np.ndarray:
    """(N, H, W, C) float32 images in [0, 1] through :func:`facetrip.data.preprocess_encoded`, in order."""
    from facetrip.data import image_dataset

    if not len(faces):
        return np.zeros((0, *image_size, channels), np.float32)
    batches = [images.numpy() for images, _ in image_dataset(faces, tuple(image_size), channels, batch_size=256)]
    return np.concatenate(batches)


def preprocess_images_to_file(faces, image_size, channels: int, path: str | Path) -> np.ndarray:
    """:func:`preprocess_images` written to a ``.npy`` a batch at a time, and returned memory-mapped, read-only.

    Returns:
        (N, H, W, C) float32 ``numpy.memmap`` of ``path``.
    """
    from facetrip.data import image_dataset
    from facetrip.embedding import write_npy_rows

    batches = (images.numpy() for images, _ in image_dataset(faces, tuple(image_size), channels, batch_size=256))
    write_npy_rows(path, batches, len(faces), (*image_size, channels))
    return np.load(path, mmap_mode="r")


def mean_pixels(images: np.ndarray) -> np.ndarray:
    """(P,) float64 mean of (N, H, W, C) images as pixel vectors, a chunk of rows at a time (a memmap stays on disk)."""
    from facetrip.embedding import row_chunks

    total = np.zeros(int(np.prod(images.shape[1:], dtype=np.int64)), np.float64)  # (P,)
    for chunk in row_chunks(images):
        total += chunk.reshape(len(chunk), -1).sum(axis=0, dtype=np.float64)
    return total / max(len(images), 1)


# The classic baselines read face chips as small grey images, the size they were made for,
# not the face network's 150 x 150 RGB (67,500 numbers per photo).
BASELINE_CHIP_SIZE = (56, 56)


def evaluation_files(other_source: str | None, protocol: str | None = None) -> tuple[str, str]:
    """``(metrics file, ROC plot file)`` names in the run directory.

    The run's own evaluation is ``metrics.json`` / ``roc.png``; one on another data source
    gets files named after it (``metrics-folder_lfw_images.json``), so it never replaces
    the run's own, and one on a protocol folder (CFP's ``Split/FP``) after that too
    (``metrics-folder_cfp_Data_Images-FP.json``), so FF and FP keep their own.

    Args:
        other_source: the data source when it is not the run's, else None.
        protocol: the name of a pairs protocol folder (``FF``, ``FP``), else None.
    """
    from facetrip.runs import EVALUATION_FILE, ROC_PLOT_FILE

    parts = [re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[-60:] for text in (other_source, protocol) if text]
    if not parts:
        return EVALUATION_FILE, ROC_PLOT_FILE
    slug = "-".join(parts)
    return f"metrics-{slug}.json", f"roc-{slug}.png"


def baseline_input(run) -> tuple[tuple[int, int], int]:
    """``((height, width), channels)`` the baselines read: the run's input, or small grey chips for runs on face chips."""
    if run.face_chips:
        return BASELINE_CHIP_SIZE, 1
    return tuple(run.image_size), run.channels


def _compact(faces, pairs: Pairs):
    """Only the images that pairs use, with the pairs re-indexed into them."""
    used, inverse = np.unique(np.concatenate([pairs.first, pairs.second]), return_inverse=True)
    first, second = inverse[: len(pairs)], inverse[len(pairs) :]
    return faces.take(used), Pairs(first, second, pairs.same, pairs.folds, pairs.how)


def _baseline_training_faces(faces, training_identities, training_source: str | None, data_dir: str | None,
                             stage: Callable[[str], None]):
    """The images of the run's training identities to fit the baselines on.

    Args:
        faces: the evaluated source's images.
        training_identities: the run's training identity names.
        training_source: the run's own source when ``faces`` come from another one (it is
            loaded); None when ``faces`` are the run's own source.
        data_dir: tfds storage folder.
        stage: progress callback.

    Returns:
        ``(training faces, None)``, or ``(None, why the baselines are skipped)``.
    """
    from facetrip.data import DataError, load_faces

    if training_source is not None:
        stage(f"Loading {training_source} (the run's training identities, to fit the baselines) ...")
        try:
            faces = load_faces(training_source, data_dir=data_dir)
        except DataError as error:
            reason = str(error).rstrip(".")
            return None, f"the run's training source {training_source} cannot be loaded to fit them on ({reason})"
    train_faces = faces.restricted_to(training_identities)
    if len(np.unique(train_faces.labels)) < 2:
        return None, f"{faces.source} holds fewer than two of the run's training identities to fit them on"
    return train_faces, None


def _baseline_distances(baseline, images: np.ndarray, centre: np.ndarray, pairs: Pairs) -> np.ndarray:
    """(M,) distances of the pairs under a fitted baseline, from (U, h, w, c) images (memory-mapped), a chunk of pairs at a time.

    The same distances as ``baseline.embed(images, "evaluated")`` of all images at once,
    with ``centre`` their mean face (:func:`mean_pixels`).
    """
    from facetrip.embedding import CHUNK_BYTES
    from facetrip.evaluation.pairs import distances_of_pairs

    # A chunk of pairs holds two float64 pixel vectors a pair, and embed() makes about three more of each.
    pairs_per_chunk = max(1, CHUNK_BYTES // (8 * 2 * 4 * len(centre)))
    return distances_of_pairs(lambda rows: baseline.embed(images[rows], centre), pairs.first, pairs.second, baseline.metric,
                              pairs_per_chunk)


@contextlib.contextmanager
def _scratch_file(run_dir: Path) -> Iterator[Path]:
    """A scratch ``.npy`` path in the run directory (else the temporary folder); a full disk is an EvaluationError."""
    from facetrip.embedding import scratch_npy_path

    try:
        with scratch_npy_path(run_dir) as path:
            yield path
    except OSError as error:
        raise EvaluationError(f"Cannot write a scratch file of the evaluation: {error.strerror or error} "
                              f"({getattr(error, 'filename', None) or run_dir}); free some space or set TMPDIR.") from None


def _threshold_report(metadata: dict, distances: np.ndarray, same: np.ndarray) -> dict | None:
    """Accuracy / FAR / FRR on these pairs at the threshold saved with the run (None when it has none).

    A run calibrated to a target false accept rate adds ``target_far``, the FAR and its
    interval on the calibration pairs (``calibration_far``, ``calibration_far_interval``)
    and ``far_within_calibration_interval``: whether the FAR here lies in that interval.
    Older runs have None in these keys and their equal-error rule (:data:`THRESHOLD_RULES`).
    ``calibration`` is the ROC summary of the calibration pairs.
    """
    from facetrip.evaluation.metrics import rates_at_threshold

    threshold = metadata.get("threshold")
    if threshold is None:
        return None
    source = metadata.get("threshold_source", "dev")
    calibration = metadata.get("calibration") or {}
    rates = rates_at_threshold(distances, same, float(threshold))
    interval = calibration.get("far_interval")
    return {
        **rates,
        "source": source,
        "rule": saved_threshold_rule(metadata),
        "target_far": calibration.get("target_far"),
        "calibration_far": calibration.get("far"),
        "calibration_far_interval": interval,
        "far_within_calibration_interval": None if interval is None else bool(interval[0] <= rates["far"] <= interval[1]),
        "fallback": calibration.get("fallback"),
        "calibration": metadata.get(source),
    }


def _photo_folder(source: str, faces) -> str | None:
    """Where the photos of a folder source are, when ``faces`` holds what a prepared set made of them (chips)."""
    from facetrip.data.sources import parse_source

    spec = parse_source(source)
    if spec.kind != "folder" or faces.model_input is None:
        return None
    return str(Path(spec.name).expanduser())


def evaluate_run(
    run_dir: str | Path,
    pairs_file: str | Path | None = None,
    max_pairs: int = DEFAULT_MAX_PAIRS_PER_CLASS,
    seed: int = 0,
    baselines: bool = True,
    data_source: str | None = None,
    data_dir: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    hardest_errors: int = DEFAULT_HARDEST_ERRORS,
    pairs_seen: Callable[[EvaluatedPairs], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a run on identities it never trained on; write ``metrics.json`` and ``roc.png``.

    Args:
        run_dir: a finished run directory.
        pairs_file: an LFW-format pairs file (``N`` or ``FOLDS N`` header) naming images
            of the data source by identity and 1-based number, or a split folder of CFP's
            protocol (``Protocol/Split/FF`` or ``.../FP``) naming them by path; None for the
            run's test identities (or, on another data source, all of its identities).
        max_pairs: most same (and most different) pairs from the evaluated identities; when
            either kind has more, a seeded balanced sample of min(max_pairs, same,
            different) pairs of each kind is drawn.
        seed: seed of the pair sample, the k-fold assignment and the baselines' fit sample.
        baselines: also score raw pixels, Eigenfaces and Fisherfaces, fitted on the run's
            training identities from the run's own data source.
        data_source: data source (default: the run's). Another source than the run's is
            evaluated on all its identities except those named like a training identity
            of the run (:func:`identities_of_another_source`).
        data_dir: tfds storage folder (default: tfds' own).
        on_stage: called with a short message as each stage starts (a progress display).
        progress: called as ``progress(done, total)`` while the data set is prepared (its first
            use) and while its photos are embedded, each stage told by ``on_stage`` first; None
            to log the preparation at most every 30 s.
        hardest_errors: pairs of each kind of error listed in the report (``hardest_errors``).
        pairs_seen: called with the :class:`EvaluatedPairs` (distances and images) once the
            model's distances are known: the report page's input.

    Returns:
        The report written to ``metrics.json``: ``model``, ``baselines`` (name -> metrics,
        see :func:`facetrip.evaluation.verification_metrics`), ``pairs``, ``threshold``
        (the saved threshold's test results), ``files`` and what was evaluated.

    Raises:
        EvaluationError, PairsFileError, RunError, DataError: one line saying what is wrong.
        ReportNotWritten: (an EvaluationError) the run directory cannot be written; it
            carries the report.
    """
    from facetrip.data.prepared_bin import load_prepared_bin
    from facetrip.data.records import load_model_faces, logged_progress
    from facetrip.data.sources import parse_source
    from facetrip.evaluation.insightface_protocol import flip_summed_model, verification_bin_pairs
    from facetrip.evaluation.baselines import BaselineError, fit_baselines, fit_sample
    from facetrip.evaluation.metrics import error_breakdown, roc, verification_metrics
    from facetrip.embedding import embed_faces_to_file
    from facetrip.evaluation.pairs import distances_of_pairs
    from facetrip.evaluation.pairs_file import read_pairs
    from facetrip.evaluation.plots import roc_plot_png
    from facetrip.runs.loaded_run import Run
    from facetrip.runs import atomic_write_bytes, atomic_write_json, read_metadata

    stage = on_stage or (lambda message: None)
    run_dir = Path(run_dir)
    if max_pairs < 1:
        raise EvaluationError(f"max_pairs must be at least 1, not {max_pairs}.")
    metadata = read_metadata(run_dir)  # a one-line RunError before any data is loaded
    split = run_split(run_dir, metadata)
    named = read_pairs(pairs_file) if pairs_file is not None else None  # an LFW pairs file or a CFP split folder
    training_source = metadata["source"]
    other_source = data_source is not None and not is_same_source(data_source, training_source)
    if named is None and not other_source and not split["test"]:
        raise EvaluationError(
            f"{run_dir} has no test identities (its split lists none): evaluate on a pairs file (--pairs FILE) "
            f"or train with test identities (split.test > 0)."
        )
    run = Run.load(run_dir)
    source = data_source or training_source
    stage(f"Loading {source} ...")
    bin_same = None  # the flags of an insightface verification set (bin:PATH), which brings its own pairs
    if parse_source(source).kind == "bin":
        if named is not None:
            raise EvaluationError(f"{source} holds its own pairs (insightface's protocol): leave out --pairs.")
        faces, bin_same = load_prepared_bin(source, run.face_chips, data_dir=data_dir,
                                            progress=progress or logged_progress(f"Preparing {source}"))
    else:
        faces, _ = load_model_faces(source, data_dir=data_dir, face_chips=run.face_chips,
                                    aligned="none" if other_source else run.aligned,  # aligned describes the run's photos
                                    progress=progress or logged_progress(f"Preparing {source}"))  # as the model reads them
    left_out: list[str] = []

    if bin_same is not None:  # no identity names: the overlap with training identities is unknown, as pairs.how says
        pairs = verification_bin_pairs(bin_same, parse_source(source).name)
        evaluated_identities = []
    elif named is not None:
        trained_on = set(trained_identities(split)) & (set(named.first_names) | set(named.second_names))
        if trained_on:
            raise EvaluationError(
                f"{len(trained_on)} identities of {pairs_file} are training identities of {run_dir} "
                f"({_names(trained_on)}): verification must be scored on identities the model never saw."
            )
        pairs = pairs_from_file(named, faces, pairs_file)
        evaluated_identities = sorted(set(named.first_names) | set(named.second_names))
    elif other_source:
        evaluated_identities, left_out = identities_of_another_source(faces, trained_identities(split))
        if not evaluated_identities:
            raise EvaluationError(
                f"All {len(left_out)} identities of {faces.source} are named like training identities of {run_dir} "
                f"({_names(left_out)}): the same name may be the same person, so none can be scored."
            )
        pairs = pairs_of_identities(faces, evaluated_identities, max_pairs, seed)
        left_out_note = f" ({len(left_out)} left out, named like training identities)" if left_out else ""
        pairs.how = f"all identities of {faces.source}{left_out_note}, a model trained on {training_source}: {pairs.how}"
    else:
        missing = set(split["test"]) - set(faces.identity_names)
        if len(missing) == len(split["test"]):
            raise EvaluationError(
                f"None of the {len(split['test'])} test identities of {run_dir} is in {faces.source} "
                f"(e.g. {_names(missing)}): evaluate with the run's own data source (--data)."
            )
        evaluated_identities = sorted(set(split["test"]) - missing)
        pairs = pairs_of_identities(faces, evaluated_identities, max_pairs, seed)
    if pairs.num_same == 0 or pairs.num_different == 0:
        raise EvaluationError(
            f"The pairs hold {pairs.num_same} same-identity and {pairs.num_different} different-identity pairs: "
            f"verification needs both (at least two identities, one with two or more images)."
        )
    if pairs.folds is None and len(pairs) < NUM_FOLDS:
        raise EvaluationError(f"Only {len(pairs)} pairs: {NUM_FOLDS}-fold accuracy needs at least {NUM_FOLDS}.")
    if pairs.folds is not None and len(np.unique(pairs.folds)) < 2:
        raise EvaluationError(
            f"{pairs_file} holds one fold: k-fold accuracy needs two or more (a 'FOLDS N' header with FOLDS >= 2, "
            f"or an 'N' header for seeded folds)."
        )
    used_faces, pairs = _compact(faces, pairs)
    photos = used_faces  # as loaded, before alignment: the report page's thumbnails
    if run.face_chips:
        stage(f"Aligning the faces of {len(used_faces):,} photos ...")
    used_faces, chip_report = run.prepare_faces(used_faces, progress=progress)  # the photos as the model reads them

    stage(f"Embedding {len(used_faces):,} images ...")
    metric = metadata["metric"]
    # A batch at a time into a scratch file, read back a chunk of pairs at a time: memory bounded by the batch.
    with _scratch_file(run_dir) as scratch:
        # insightface's protocol embeds an image as normalise(f(x) + f(mirror(x)))
        model = run.model if bin_same is None else flip_summed_model(run.model)
        embeddings = embed_faces_to_file(model, used_faces, run.image_size, run.channels, scratch,
                                         progress=progress)  # (U, D) memmap
        model_distances = distances_of_pairs(embeddings.__getitem__, pairs.first, pairs.second, metric)  # (M,)
        del embeddings
    model_metrics = verification_metrics(model_distances, pairs.same, pairs.folds, seed)
    identity_of = np.asarray(used_faces.identity_names, dtype=object)[used_faces.labels]  # (U,)
    report: dict[str, Any] = {
        "facetrip_version": __version__,
        "run": str(run_dir),
        "source": faces.source,
        "training_source": training_source,
        "image_size": list(run.image_size),
        "channels": run.channels,
        "metric": metric,
        "faces": None if chip_report is None else {
            "images": chip_report.images, "no_face": len(chip_report.no_face),
            "several_faces": len(chip_report.several_faces), "found_by_cnn": len(chip_report.found_by_cnn),
            "summary": chip_report.summary(),
        },
        "pairs": {
            "how": pairs.how,
            "file": str(pairs_file) if pairs_file is not None else None,
            "same": pairs.num_same,
            "different": pairs.num_different,
            "images": len(used_faces),
            "identities": len(evaluated_identities),
            "left_out_identities": left_out,
            "max_pairs_per_class": max_pairs,
            "seed": seed,
        },
        "model": model_metrics,
        "threshold": _threshold_report(metadata, model_distances, pairs.same),
        "errors": {
            **error_breakdown(model_distances, pairs.same, identity_of[pairs.first], identity_of[pairs.second],
                              model_metrics["eer_threshold"]),
            "rule": "the model's equal-error-rate threshold on these pairs",
        },
        "baselines": {},
        "baselines_skipped": None,
    }
    evaluated = EvaluatedPairs(
        distances=model_distances, same=pairs.same, first=pairs.first, second=pairs.second, identity_of=identity_of,
        file_names=np.asarray(used_faces.file_names), model_images=used_faces.encoded if chip_report is not None else None,
        photos=photos.encoded, no_face=[] if chip_report is None else list(chip_report.no_face),
        several_faces=[] if chip_report is None else list(chip_report.several_faces),
        photo_folder=_photo_folder(source, photos),
    )
    threshold, rule = decision_threshold(report)
    rows = hardest_error_rows(evaluated, threshold, hardest_errors)
    report["hardest_errors"] = {
        "threshold": threshold, "rule": rule, "count": hardest_errors,
        **{kind: [{key: row[key] for key in ("identities", "files", "distance")} for row in listed]
           for kind, listed in rows.items()},
    }
    report["errors_at_threshold"] = {
        **error_breakdown(model_distances, pairs.same, identity_of[pairs.first], identity_of[pairs.second], threshold,
                          top=IDENTITIES_LISTED),
        "rule": rule,
    }
    if pairs_seen is not None:
        pairs_seen(evaluated)
    curves = {f"model ({metric}), AUC {report['model']['auc']:.3f}": roc(model_distances, pairs.same)[:2]}

    if baselines:
        train_faces, report["baselines_skipped"] = _baseline_training_faces(
            faces, split["train"], training_source if other_source else None, data_dir, stage
        )
        if train_faces is not None:
            train_faces = train_faces.take(fit_sample(len(train_faces), seed))  # preprocess only what is fitted on
            stage(f"Fitting the baselines on {len(train_faces):,} training images ...")
            try:
                train_faces, _ = run.prepare_faces(train_faces, progress=progress)  # the same inputs as the model's
                baseline_size, baseline_channels = baseline_input(run)
                fitted = fit_baselines(preprocess_images(train_faces, baseline_size, baseline_channels), train_faces.labels, seed)
            except BaselineError as error:
                fitted, report["baselines_skipped"] = [], str(error)
            report["baselines_fit"] = {
                "input": f"{baseline_size[0]}x{baseline_size[1]}x{baseline_channels}",
                "images": len(train_faces),
                "identities": int(len(np.unique(train_faces.labels))),
                "centre": "the mean of the evaluated images",
            }
            if fitted:
                with _scratch_file(run_dir) as scratch:
                    baseline_images = preprocess_images_to_file(used_faces, baseline_size, baseline_channels, scratch)
                    centre = mean_pixels(baseline_images)  # (P,) the evaluated images' mean face
                    for baseline in fitted:
                        distances = _baseline_distances(baseline, baseline_images, centre, pairs)  # (M,)
                        report["baselines"][baseline.name] = {
                            **verification_metrics(distances, pairs.same, pairs.folds, seed),
                            "description": baseline.description,
                        }
                        curves[f"{baseline.name}, AUC {report['baselines'][baseline.name]['auc']:.3f}"] = roc(distances, pairs.same)[:2]
                    del baseline_images

    stage("Writing metrics.json and roc.png ...")
    title = f"{Path(run_dir).name}: {pairs.num_same:,} same / {pairs.num_different:,} different pairs of {faces.source}"
    protocol = Path(pairs_file).name if pairs_file is not None and Path(pairs_file).is_dir() else None  # CFP's FF / FP
    metrics_file, roc_file = evaluation_files(faces.source if other_source else None, protocol)
    plot = roc_plot_png(curves, title)
    target = run_dir / roc_file
    try:
        atomic_write_bytes(target, plot)
        report["files"] = {"metrics": metrics_file, "roc": roc_file}
        target = run_dir / metrics_file
        atomic_write_json(target, report)
    except OSError as error:  # a read-only run directory, or a folder where the file must go
        report["files"] = None
        raise ReportNotWritten(f"Cannot write {target}: {error.strerror or error}.", report) from None
    return report
