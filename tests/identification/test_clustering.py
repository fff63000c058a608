"""Clustering: every algorithm on embeddings whose groups are known by construction, the scores against true
identities on hand-derived examples, the contact sheets, and `facetrip cluster` end to end on ORL photos."""

import base64
import importlib.util
import csv
import html
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from facetrip.identification.cluster_page import THUMBNAIL as PAGE_THUMBNAIL
from facetrip.identification.cluster_page import cluster_page_html
from facetrip.identification.clustering import (ALGORITHMS, ALONE, ClusteringError, cluster_embeddings, numbered_clusters,
                                                threshold_edges)
from facetrip.identification.contact_sheet import THUMBNAIL, contact_sheet_png
from facetrip.identification.metrics import bcubed_scores, clustering_scores, pairwise_scores
from facetrip.identification.search import distance_matrix


def groups_and_loners(rng, sizes=(6, 4, 3, 2), loners=2, dim=12):
    """Tight groups near orthogonal axes (within 0.1 of each other, 1.41 from every other group) and lone points."""
    axes = np.eye(dim, dtype=np.float32)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    points = axes[labels] + 0.02 * rng.standard_normal((len(labels), dim))
    lone = axes[len(sizes):len(sizes) + loners]
    embeddings = np.vstack([points, lone]).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings, np.r_[labels, len(sizes) + np.arange(loners)]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_finds_the_groups(rng, algorithm):
    """The threshold algorithms leave the loners (1.41 from everything, beyond 0.6) alone. HDBSCAN follows
    density, not the threshold: a loner as far from the groups as they are from each other may join one,
    so its loners are put 4 times as far out (4.1 from every group, 5.7 from each other): noise, each alone."""
    embeddings, truth = groups_and_loners(rng)
    if algorithm == "hdbscan":
        embeddings[15:] *= 4.0
    labels = cluster_embeddings(embeddings, "euclidean", 0.6, algorithm)
    # largest group first: 0 has six photos, 1 four, 2 three, 3 two
    np.testing.assert_array_equal(numbered_clusters(labels)[:15], [0] * 6 + [1] * 4 + [2] * 3 + [3] * 2)
    np.testing.assert_array_equal(numbered_clusters(labels)[15:], [ALONE, ALONE])
    assert len(set(labels.tolist())) == 6  # each loner its own cluster
    assert clustering_scores(truth, labels)["pairwise_f"] == clustering_scores(truth, labels)["nmi"] == 1.0


def test_a_threshold_below_every_distance_leaves_every_photo_alone(rng):
    embeddings, _ = groups_and_loners(rng)
    for algorithm in ("average", "chinese_whispers"):
        assert np.all(numbered_clusters(cluster_embeddings(embeddings, "euclidean", 1e-4, algorithm)) == ALONE)


def test_threshold_edges_are_the_pairs_within_the_threshold(rng):
    embeddings = rng.standard_normal((30, 4)).astype(np.float32)
    first, second = threshold_edges(embeddings, "squared", 3.0)
    distances = distance_matrix(embeddings, embeddings, "squared")
    expected = {(i, j) for i in range(30) for j in range(i + 1, 30) if distances[i, j] <= 3.0}
    assert set(zip(first.tolist(), second.tolist())) == expected and np.all(first < second)


def test_numbered_clusters_orders_by_size_then_first_photo():
    np.testing.assert_array_equal(numbered_clusters([7, 3, 3, 9, 7, 5, 5, 5]), [1, 2, 2, ALONE, 1, 0, 0, 0])


def test_unknown_algorithm_and_too_many_photos_for_a_matrix_are_refused(rng, monkeypatch):
    from facetrip.identification import clustering

    embeddings, _ = groups_and_loners(rng)
    with pytest.raises(ClusteringError, match="Unknown"):
        cluster_embeddings(embeddings, "euclidean", 0.6, "kmeans")
    monkeypatch.setattr(clustering, "MAX_MATRIX_PHOTOS", 5)
    with pytest.raises(ClusteringError, match="chinese_whispers"):
        cluster_embeddings(embeddings, "euclidean", 0.6, "average")
    assert len(cluster_embeddings(embeddings, "euclidean", 0.6, "chinese_whispers")) == len(embeddings)


def test_pairwise_and_bcubed_scores_on_a_hand_derived_example():
    """Identities a a a b b, clusters {a a} {a b b}.

    Pairwise: true pairs C(3,2) + C(2,2) = 4; predicted C(2,2) + C(3,2) = 4; together (a,a) in cluster 1
    and (b,b) in cluster 2 = 2. Precision = recall = 2 / 4.
    BCubed precision: the two a's of cluster 1 score 2/2, the a of cluster 2 scores 1/3, the two b's 2/3:
    (1 + 1 + 1/3 + 2/3 + 2/3) / 5 = 11/15. Recall: a's of cluster 1 2/3 each, the other a 1/3, b's 2/2:
    (2/3 + 2/3 + 1/3 + 1 + 1) / 5 = 11/15.
    """
    truth, clusters = [0, 0, 0, 1, 1], [5, 5, 6, 6, 6]
    assert pairwise_scores(truth, clusters) == {"precision": 0.5, "recall": 0.5, "f": 0.5}
    bcubed = bcubed_scores(truth, clusters)
    assert bcubed["precision"] == pytest.approx(11 / 15) and bcubed["recall"] == pytest.approx(11 / 15)
    perfect = clustering_scores(truth, [1, 1, 1, 0, 0])
    assert perfect["pairwise_f"] == perfect["bcubed_f"] == perfect["nmi"] == 1.0
    assert perfect["clusters"] == perfect["identities"] == 2


def test_all_singletons_have_perfect_pairwise_precision_and_no_recall():
    scores = pairwise_scores([0, 0, 1, 1], [0, 1, 2, 3])
    assert scores["precision"] == 1.0 and scores["recall"] == 0.0 and scores["f"] == 0.0


def test_a_contact_sheet_is_a_grid_of_the_photos(rng):
    from PIL import Image

    def png(value):
        buffer = io.BytesIO()
        Image.new("RGB", (150, 150), (value, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    sheet = Image.open(io.BytesIO(contact_sheet_png([png(200)] * 10 + [b"not an image"], [f"f{i}.jpg" for i in range(11)],
                                                    "cluster 0: 11 photos", max_photos=9)))
    assert sheet.format == "PNG" and sheet.width == 8 * THUMBNAIL and sheet.height > 2 * THUMBNAIL
    assert sheet.convert("RGB").getpixel((THUMBNAIL // 2, 22 + THUMBNAIL // 2)) == (200, 0, 0)


# A file name that is markup if it is not escaped.
HOSTILE = "<img src=x onerror=alert(1)>&\"'.png"


def png_bytes(size=(150, 150), colour=(200, 0, 0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def page_images(page: str) -> list:
    """Every <img> of a page, decoded with Pillow; each must be an inline PNG or JPEG."""
    from PIL import Image

    sources = re.findall(r"<img\b[^>]*?\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == page.count("<img")
    images = []
    for source in sources:
        media, data = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", source).groups()
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == media.upper()
        images.append(image)
    return images


def test_the_cluster_page_is_self_contained_with_escaped_names():
    sheets = [(0, 3, png_bytes()), (1, 2, png_bytes(colour=(0, 200, 0)))]
    apart = [(f"/photos/{HOSTILE}", "no face found", png_bytes((400, 200))), ("/photos/b.jpg", "alone in its cluster", b"junk"),
             ("/photos/c.png", "unreadable: <not an image>", None)]
    page = cluster_page_html(sheets, apart, title="facetrip <cluster>")
    assert HOSTILE not in page and "<cluster>" not in page and "<not an image>" not in page
    assert html.escape(HOSTILE) in page and html.escape("unreadable: <not an image>") in page
    assert "<script" not in page and not re.search(r"https?:", page) and not re.search(r'(src|href)="(?!data:)', page)
    images = page_images(page)
    assert len(images) == 3  # two sheets and the one decodable unclustered photo
    assert max(images[2].size) == PAGE_THUMBNAIL and images[2].format == "JPEG"
    assert "Cluster 1: 2 photos" in page and "no image" in page
    shown = cluster_page_html(sheets, apart, max_sheets=1, max_apart=1)
    assert len(page_images(shown)) == 2 and "1 smaller clusters are not shown" in shown and "2 more are not shown" in shown


def test_photos_inside_the_output_folder_are_not_clustered_again(tmp_path):
    """`facetrip cluster RUN ~/photos -o ~/photos/clusters` run twice must not cluster its own contact sheets."""
    from PIL import Image

    from facetrip.identification.photos import unlabelled_photos

    (tmp_path / "clusters").mkdir()
    for name in ("a.png", "clusters/cluster_000.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    (tmp_path / "b.jpg").write_bytes(b"not a photo")
    photos = unlabelled_photos([tmp_path], skip_unreadable=True, outside=tmp_path / "clusters")
    assert [name.rsplit("/", 1)[1] for name in photos.faces.file_names] == ["a.png"]
    assert [name.rsplit("/", 1)[1] for name, _ in photos.skipped] == ["b.jpg"]


# ----------------------------------------------------------------------------- the command, on ORL photos


@pytest.fixture(scope="module")
def mixed_photos(tmp_path_factory):
    """Three ORL people with three photos each and one with one photo, all in one folder, plus a faceless image."""
    from PIL import Image

    from facetrip.data.orl import orl_faces_root

    folder = tmp_path_factory.mktemp("mixed") / "photos"
    folder.mkdir()
    for person, count in ((5, 3), (6, 3), (7, 3), (8, 1)):
        for photo in range(1, count + 1):
            shutil.copy(orl_faces_root() / f"s{person}" / f"{photo}.pgm", folder / f"s{person}_{photo}.pgm")
    Image.new("L", (92, 112), 128).save(folder / f"blank{HOSTILE}")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return folder


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_cluster_groups_photos_by_person_and_lists_the_rest_apart(pretrained_run, mixed_photos, tmp_path):
    out = tmp_path / "clusters"
    out.mkdir()
    result = run_cli("cluster", pretrained_run, mixed_photos, "-o", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "clusters.csv")
    person_of = {row["file"].rsplit("/", 1)[1].split("_")[0]: set() for row in rows}
    for row in rows:
        person_of[row["file"].rsplit("/", 1)[1].split("_")[0]].add(row["cluster"])
    assert person_of.keys() == {"s5", "s6", "s7"} and all(len(clusters) == 1 for clusters in person_of.values())
    assert len({cluster for clusters in person_of.values() for cluster in clusters}) == 3
    apart = {row["file"].rsplit("/", 1)[1]: row["reason"] for row in read_csv(out / "unclustered.csv")}
    assert apart["s8_1.pgm"] == "alone in its cluster" and apart[f"blank{HOSTILE}"] == "no face found"
    assert apart["broken.png"].startswith("unreadable")
    assert sorted(path.name for path in out.glob("cluster_*.png")) == ["cluster_000.png", "cluster_001.png", "cluster_002.png"]
    summary = json.loads((out / "clusters.json").read_text())
    assert summary["clusters"] == 3 and summary["alone"] == 1 and summary["no_face"] == 1 and summary["unreadable"] == 1
    assert summary["files"]["page"] == str(out / "clusters.html")
    page = (out / "clusters.html").read_text(encoding="utf-8")
    assert f"blank{HOSTILE}" not in page and html.escape(f"blank{HOSTILE}") in page and "broken.png" in page
    assert not re.search(r"https?:", page) and not re.search(r'(src|href)="(?!data:)', page)
    assert len(page_images(page)) == 3 + 2  # the sheets, and the alone and faceless photos (not the unreadable one)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is not None and importlib.util.find_spec("playwright") is not None:
        checked = subprocess.run([sys.executable, REPO / "scripts" / "check_report.py", out / "clusters.html"],
                                 capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stderr
        assert "5 images decoded, 0 console errors, 0 network requests" in checked.stdout


@pytest.mark.slow
def test_bad_input_to_cluster_is_one_line_with_exit_2(pretrained_run, mixed_photos, tmp_path):
    (tmp_path / "empty").mkdir()
    for arguments, word in (((tmp_path / "empty",), "No readable photo"), ((tmp_path / "missing",), "no such file"),
                            ((mixed_photos, "--algorithm", "kmeans"), "--algorithm"),
                            ((mixed_photos, "--threshold", "0.5", "--far", "0.01"), "not both")):
        result = run_cli("cluster", pretrained_run, *arguments, "-o", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert word in result.output and result.output.strip().count("\n") == 0, result.output
