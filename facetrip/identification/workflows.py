"""The plans of `facetrip index`, `identify` and `cluster`: each step handed to the module that owns it."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facetrip.embedding import row_chunks, scratch_npy_path, write_npy_rows
from facetrip.identification import ann as ann_search
from facetrip.identification.clustering import ALONE, DEFAULT_ALGORITHM, cluster_embeddings, numbered_clusters
from facetrip.identification.decision import (decision_record, expected_false_alarm, identify_decision,  # noqa: F401
                                              run_false_alarm, run_threshold)
from facetrip.identification.index import (GalleryIndex, GalleryIndexError, check_index_folder, check_same_model, merged,
                                           model_fingerprint, new_manifest, read_index, write_index)
from facetrip.identification.photos import Embedded, embed_gallery, embed_photos, unlabelled_photos
from facetrip.identification.search import (DEFAULT_SCORE, candidate_distances, identify_embeddings, score_gallery,
                                            top_people, top_people_from_candidates)
from facetrip.runs.output_folder import CommandOutput, OutputFolder, check_output_folder

Stage = Callable[[str], None] | None
Progress = Callable[[int, int], None] | None


# ----------------------------------------------------------------------------- index


@dataclasses.dataclass
class IndexSummary:
    """What `facetrip index` did.

    Attributes:
        manifest: the manifest written.
        added: photos added to the index.
        already_indexed: photos left out because their file was in the index already.
        no_face: files left out because no face was found on them.
        unreadable: ``(file, reason)`` of files that could not be read.
        source: the gallery's source name.
    """

    manifest: dict[str, Any]
    added: int
    already_indexed: int
    no_face: list[str]
    unreadable: list[tuple[str, str]]
    source: str


def index_gallery(run, gallery: str, index_dir: str | Path, add: bool = False, overwrite: bool = False,
                  ann: bool | None = None, data_dir: str | None = None, on_stage: Stage = None,
                  progress: Progress = None, output_folder: OutputFolder | None = None) -> IndexSummary:
    """Embed a gallery of known people with a run's model and write (or extend) an index.

    Args:
        run: a loaded :class:`facetrip.runs.loaded_run.Run`.
        gallery: ``GALLERY/<person>/<photo>`` folder, or any data source spec.
        index_dir: where the index is (to be) written.
        add: add the gallery's photos to the index already in ``index_dir``.
        overwrite: replace the index in ``index_dir``.
        ann: build the approximate-search index (True), never (False), or above
            :data:`facetrip.identification.ann.ANN_MIN_ENTRIES` photos when its library is installed (None).
        data_dir: tfds storage folder for data source specs.
        on_stage: called with a short message as each stage starts.
        progress: called as ``progress(done, total)`` while photos are read, aligned and embedded.
        output_folder: ``index_dir`` as :func:`check_index_folder` checked it for ``add`` and
            ``overwrite`` (the command checks before loading the run); default: checked here.

    Returns:
        :class:`IndexSummary`.

    Raises:
        OutputFolderError: the folder is not one `facetrip index` may write into (:func:`check_index_folder`).
        GalleryIndexError: ``add`` without an index; an index of another model; no photo with a face.
        DataError: an unknown source, or a folder without ``<person>/<photo>`` images.
        AnnUnavailable: ``ann`` is True and no ANN library is installed.
        ConfigError: the run's ``identify.false_alarm`` is out of range (:func:`run_false_alarm`).
    """
    index_dir = Path(index_dir)
    folder = output_folder if output_folder is not None else check_index_folder(index_dir, add, overwrite)
    run_false_alarm(run.path)  # a bad identify.false_alarm is refused before anything is embedded
    fingerprint = model_fingerprint(run.path, run.metadata)
    existing = None
    if add:
        existing = read_index(index_dir)
        check_same_model(existing.manifest, fingerprint, run.path, index_dir)
    if ann:
        ann_search.require_library()
    if on_stage is not None:
        on_stage(f"Reading {gallery} ...")
    # A gallery folder is read, aligned and embedded a batch of photos at a time (embed_gallery);
    # the embeddings go a batch at a time into scratch files beside the index, and from there
    # a chunk of rows at a time into its data file: memory bounded by the batch, not the gallery.
    with contextlib.ExitStack() as scratch:
        def scratch_path() -> Path:
            return scratch.enter_context(scratch_npy_path(index_dir, index_dir.parent))

        photos = embed_gallery(run, gallery, data_dir, embeddings_path=scratch_path(), on_stage=on_stage, progress=progress)
        if not len(photos):
            raise GalleryIndexError(f"The gallery {gallery} holds no readable photo: nothing to index.")
        embedded = photos.embedded
        with_face = embedded.face_found
        no_face = [str(name) for name in photos.file_names[~with_face]]
        if not with_face.any():
            raise GalleryIndexError(f"No face was found on any of the {len(photos)} photos of {gallery}: nothing to index.")
        manifest = dict(existing.manifest) if existing is not None else new_manifest(run.path, run.metadata, fingerprint)
        manifest["sources"] = [*manifest.get("sources", []), {"source": photos.source, "photos": int(with_face.sum()),
                                                              "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        identities = np.asarray(photos.identity_names, dtype=object)[photos.labels[with_face]]
        with_face_embeddings = embedded.embeddings  # (N, D) memory-mapped
        if not with_face.all():
            with_face_embeddings = _rows_to_file(with_face_embeddings, with_face, scratch_path())
        index, repeated = merged(existing, with_face_embeddings, identities, photos.file_names[with_face],
                                 embedded.faces_detected[with_face], manifest, rows_path=scratch_path())
        index.manifest["open_set"] = _open_set_record(run, len(index.people))
        ann_index = _ann_index(index, existing, ann, on_stage)
        written = write_index(index_dir, index, ann_index, ann_search.LIBRARY if ann_index is not None else None, folder)
        added = len(index) - (len(existing) if existing is not None else 0)
        del embedded, with_face_embeddings, index  # unmapped before the scratch files go
    return IndexSummary(written, added, repeated, no_face, photos.skipped, photos.source)


def _open_set_record(run, people: int) -> dict[str, Any]:
    """The manifest's record of `identify`'s default decision for the index's people (:func:`decision_record`).

    A run without any threshold gets a record without one: `identify` asks for ``--threshold`` then.
    """
    from facetrip.evaluation.calibration import CalibrationError

    try:
        return decision_record(identify_decision(run, people))
    except CalibrationError as error:
        return {"decision_rule": None, "people": people, "false_alarm": run_false_alarm(run.path), "pair_far": None,
                "threshold": None, "threshold_rule": str(error)}


def _rows_to_file(array: np.ndarray, rows: np.ndarray, path: Path) -> np.ndarray:
    """The chosen rows of an (N, D) array, written to a ``.npy`` a chunk at a time, memory-mapped read-only."""
    write_npy_rows(path, row_chunks(array, rows), int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows),
                   array.shape[1:])
    return np.load(path, mmap_mode="r")


def _ann_index(index: GalleryIndex, existing: GalleryIndex | None, ann: bool | None, on_stage: Stage) -> bytes | None:
    """The ANN index to save with a gallery index: the existing one extended by the new rows, a new one, or None."""
    wanted = ann if ann is not None else (len(index) >= ann_search.ANN_MIN_ENTRIES and ann_search.available())
    if not wanted:
        return None
    if on_stage is not None:
        on_stage(f"Building the approximate-search index of {len(index):,} photos ...")
    metric = index.manifest["metric"]
    if existing is not None and existing.ann is not None:
        return ann_search.extend(existing.ann, index.embeddings[len(existing):], metric)
    return ann_search.build(index.embeddings, metric)


# ----------------------------------------------------------------------------- identify


def load_index(run, index_dir: str | Path) -> GalleryIndex:
    """The index, refused when another model made it (:func:`check_same_model`)."""
    index = read_index(index_dir)
    check_same_model(index.manifest, model_fingerprint(run.path, run.metadata), run.path, index_dir)
    return index


def search_method(num_vectors: int, requested: str, saved_ann: bool) -> str:
    """``exact`` or ``ann``: as requested, or (``auto``) ANN for a gallery of at least ANN_MIN_ENTRIES vectors with a saved ANN index."""
    if requested in ("exact", "ann"):
        if requested == "ann":
            ann_search.require_library()
        return requested
    large = num_vectors >= ann_search.ANN_MIN_ENTRIES
    return "ann" if large and saved_ann and ann_search.available() else "exact"


def identify_with_index(index: GalleryIndex, embedded: Embedded, threshold: float, k: int = 5,
                        score: str = DEFAULT_SCORE, search: str = "auto") -> dict[str, Any]:
    """Top-k people and a decision for each probe whose face was found.

    Args:
        index: the gallery index (of the probes' model).
        embedded: the probes' embeddings.
        threshold: identify the best person when their score is at most this, else unknown.
        k: people listed per probe.
        score: ``nearest`` photo or ``mean`` embedding of each person.
        search: ``auto``, ``exact`` or ``ann``.

    Returns:
        ``{"search", "results": [per probe: identify_embeddings' dict, or {"decision": "no face"}]}``.
    """
    labels, names = index.labels()
    vectors, vector_labels = score_gallery(index.embeddings, labels, len(names), score)
    method = search_method(len(index), search, index.ann is not None)
    with_face = embedded.face_found
    queries = embedded.embeddings[with_face]
    metric = index.manifest["metric"]
    if not len(queries):
        return {"search": method, "results": [_no_face() for _ in with_face]}
    if method == "exact":
        matches = top_people(queries, vectors, vector_labels, metric, k)
    else:
        # The ANN index holds the photos (the saved one, read only now and only if complete):
        # it finds the nearest photos, whose people are then scored exactly by either score.
        saved_file = (index.manifest.get("ann") or {}).get("file", "the saved approximate-search index")
        photos_index = ann_search.load(index.ann, saved_file) if index.ann is not None else None
        if (photos_index is None or ann_search.size(photos_index) != len(index)
                or photos_index.d != index.embeddings.shape[1]):
            photos_index = ann_search.load(ann_search.build(index.embeddings, metric))
        rows = ann_search.nearest_rows(photos_index, queries, ann_search.candidates_for(k, len(index)), metric)  # (Q, m)
        if rows.size and int(rows.max()) >= len(index):  # ids a crafted file gave its vectors
            raise ann_search.AnnFileError(f"{saved_file} names photos the index does not hold: build the index "
                                          "again with facetrip index RUN GALLERY -o DIR --overwrite.")
        if score == "mean":  # the candidate photos' people, each scored by their mean
            rows = np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)
        matches = top_people_from_candidates(candidate_distances(queries, vectors, rows, metric), rows, vector_labels, k)
    found = iter(identify_embeddings(queries, matches, names, threshold, index.files if score == "nearest" else None))
    return {"search": method, "results": [next(found) if face else _no_face() for face in with_face]}


def index_identification_curve(run, index_dir: str | Path, score: str = DEFAULT_SCORE, max_probes: int | None = None,
                               seed: int = 0) -> dict[str, Any]:
    """DIR against FPIR of an index by leaving out (:func:`facetrip.identification.open_set.identification_curve`),
    with the operating point of `identify`'s default decision for the run and the index's people.

    Args:
        run: the loaded run that made the index.
        index_dir: the index folder.
        score: ``nearest`` or ``mean``.
        max_probes: gallery photos searched at most (default
            :data:`~facetrip.identification.open_set.DEFAULT_MAX_PROBES`).
        seed: the sample's seed.

    Returns:
        The curve's dict; plot it with :func:`facetrip.identification.open_set.dir_fpir_plot_png`.

    Raises:
        GalleryIndexError: no index, a damaged one, or one of another model.
        ConfigError: the run's ``identify.false_alarm`` is out of range.
    """
    from facetrip.evaluation.calibration import CalibrationError
    from facetrip.identification.open_set import DEFAULT_MAX_PROBES, identification_curve

    index = load_index(run, index_dir)
    try:
        decision = identify_decision(run, len(index.people))
    except CalibrationError:  # a run without any threshold: the curve, without an operating point
        decision = None
    return identification_curve(index, decision if decision is not None else {}, score,
                                DEFAULT_MAX_PROBES if max_probes is None else max_probes, seed)


def _no_face() -> dict[str, Any]:
    return {"decision": "no face", "person": None, "distance": None, "matches": []}


# ----------------------------------------------------------------------------- cluster


@dataclasses.dataclass
class Clustering:
    """What `facetrip cluster` found.

    Attributes:
        files: (N,) every readable photo.
        clusters: (N,) cluster number (0 = largest), :data:`ALONE` for photos alone in their
            cluster, and :data:`NO_FACE` for photos on which no face was found.
        model_images: (N,) what the model saw of each photo (its face chip, or the photo).
        unreadable: ``(file, reason)`` of files that could not be read.
        algorithm: the algorithm used.
        seconds: the time the clustering itself took.
    """

    files: np.ndarray
    clusters: np.ndarray
    model_images: np.ndarray
    unreadable: list[tuple[str, str]]
    algorithm: str
    seconds: float

    @property
    def num_clusters(self) -> int:
        return int(self.clusters.max(initial=-1) + 1)


NO_FACE = -2


def cluster_photos(run, inputs, threshold: float, algorithm: str = DEFAULT_ALGORITHM, on_stage: Stage = None,
                   out_dir: str | Path | None = None, progress: Progress = None) -> Clustering:
    """Group unlabelled photos by person with a run's model and threshold.

    Photos without a detected face (runs on face chips) are not clustered; unreadable files
    are listed. Files inside ``out_dir`` (the contact sheets of an earlier clustering into a
    folder among the inputs) are not photos to cluster. ``on_stage`` is told of each stage,
    and ``progress(done, total)`` of the photos read, aligned and embedded.

    Raises:
        GalleryIndexError: no readable photo among the inputs.
        ClusteringError: see :func:`facetrip.identification.clustering.cluster_embeddings`.
    """
    if on_stage is not None:
        on_stage("Reading the photos ...")
    photos = unlabelled_photos(inputs, skip_unreadable=True, outside=out_dir, progress=progress)
    if not len(photos.faces):
        listed = f" ({len(photos.skipped)} unreadable)" if photos.skipped else ""
        raise GalleryIndexError(f"No readable photo among the inputs{listed}: nothing to cluster.")
    embedded = embed_photos(run, photos.faces, on_stage, progress=progress)
    with_face = embedded.face_found
    if on_stage is not None:
        on_stage(f"Clustering {int(with_face.sum()):,} photos ({algorithm}) ...")
    started = time.perf_counter()
    clusters = np.full(len(with_face), NO_FACE, np.int64)
    if with_face.any():
        labels = cluster_embeddings(embedded.embeddings[with_face], run.metadata["metric"], threshold, algorithm)
        clusters[with_face] = numbered_clusters(labels)
    return Clustering(photos.faces.file_names, clusters, embedded.model_images, photos.skipped, algorithm,
                      time.perf_counter() - started)


CLUSTER_OUTPUT = CommandOutput("facetrip cluster", ("clusters.csv", "unclustered.csv", "clusters.json", "clusters.html",
                                                    "cluster_[0-9][0-9][0-9]*.png"), option="-o")


def check_cluster_folder(out_dir: str | Path, overwrite: bool = False) -> OutputFolder:
    """The folder `facetrip cluster` may write into, checked before anything is computed (:func:`check_output_folder`).

    Raises:
        OutputFolderError: a folder holding files of someone else, or (without ``overwrite``) an earlier clustering.
    """
    return check_output_folder(out_dir, CLUSTER_OUTPUT, overwrite)


def write_clustering(out_dir: str | Path, clustering: Clustering, summary: dict[str, Any],
                     output_folder: OutputFolder | None = None) -> dict[str, Any]:
    """clusters.csv (file, cluster), unclustered.csv (file, reason), contact sheets, clusters.html, clusters.json.

    A contact sheet ``cluster_NNN.png`` shows the photos of cluster NNN as the model saw them
    (their face chips); clusters.html shows the sheets and the unclustered photos on one
    self-contained page (:mod:`facetrip.identification.cluster_page`). The files of an earlier
    clustering into the same folder that this one does not replace are removed, those listed
    in its record only; no other file is touched.

    Args:
        out_dir: the output folder.
        clustering: what :func:`cluster_photos` found.
        summary: what clusters.json holds besides the files.
        output_folder: ``out_dir`` as :func:`check_cluster_folder` checked it before the
            clustering; default: checked here, taking an earlier clustering there for replacing.

    Returns:
        ``{"folder", "csv", "unclustered", "sheets": [...], "page", "summary"}``: the files written.

    Raises:
        OutputFolderError: the folder holds a file of a name the clustering writes that it did not write.
    """
    import csv
    import io
    import json

    from facetrip.data.names import utf8_name
    from facetrip.identification.cluster_page import MAX_SHEETS, cluster_page_html
    from facetrip.identification.contact_sheet import contact_sheet_png
    from facetrip.runs import atomic_write_bytes, atomic_write_text

    out_dir = Path(out_dir)
    folder = output_folder if output_folder is not None else check_cluster_folder(out_dir, overwrite=True)
    files = [utf8_name(str(name)) for name in clustering.files]  # text a CSV can hold, whatever the name's bytes

    def csv_text(header, rows) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue()

    clustered = np.flatnonzero(clustering.clusters >= 0)
    clustered = clustered[np.argsort(clustering.clusters[clustered], kind="stable")]
    reasons = {ALONE: "alone in its cluster", NO_FACE: "no face found"}
    apart = [(files[i], reasons[int(clustering.clusters[i])]) for i in np.flatnonzero(clustering.clusters < 0)]
    apart += [(utf8_name(name), f"unreadable: {reason}") for name, reason in clustering.unreadable]
    apart_images = [clustering.model_images[i] for i in np.flatnonzero(clustering.clusters < 0)]
    apart_images += [None] * len(clustering.unreadable)
    written = {"folder": str(out_dir), "csv": str(out_dir / "clusters.csv"), "unclustered": str(out_dir / "unclustered.csv"),
               "sheets": [], "page": str(out_dir / "clusters.html"), "summary": str(out_dir / "clusters.json")}
    sheet_names = [f"cluster_{number:03d}.png" for number in range(clustering.num_clusters)]
    folder.claim(["clusters.csv", "unclustered.csv", "clusters.json", "clusters.html", *sheet_names])
    atomic_write_text(out_dir / "clusters.csv", csv_text(("file", "cluster"), ((files[i], int(clustering.clusters[i])) for i in clustered)))
    atomic_write_text(out_dir / "unclustered.csv", csv_text(("file", "reason"), apart))
    page_sheets = []
    for number in range(clustering.num_clusters):
        members = np.flatnonzero(clustering.clusters == number)
        sheet = out_dir / sheet_names[number]
        captions = [Path(files[i]).name for i in members]
        png = contact_sheet_png(clustering.model_images[members], captions, f"cluster {number}: {len(members)} photos")
        atomic_write_bytes(sheet, png)
        written["sheets"].append(str(sheet))
        page_sheets.append((number, len(members), png if number < MAX_SHEETS else b""))  # the page shows the first only
    atomic_write_text(out_dir / "clusters.html", cluster_page_html(
        page_sheets, [(name, reason, image) for (name, reason), image in zip(apart, apart_images)],
        f"facetrip cluster: {len(files):,} photos"))
    atomic_write_text(out_dir / "clusters.json", json.dumps({**summary, "files": written}, indent=2, sort_keys=True) + "\n")
    folder.finish()
    return written
