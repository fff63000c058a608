"""Training memory does not grow with the data set: a prepared set is read by random access.

Two insightface RecordIO sets of tiny photos, 10^4 and 10^5 records (10 per identity), are
prepared without detection (whole photos), then each trains a few steps of the
from-scratch recipe (128 x 128 grey input) in its own process. The peak RSS of the two
training processes must agree within 40 MB: holding the photos' bytes, as an in-memory
loader does, would add over 60 MB at 10^5 tiny photos (and their decoded images 5.9 GB),
while the host keeps only labels and record positions (16 bytes a photo).
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTOS_PER_IDENTITY = 10

# A process that trains the scratch recipe for a few steps and prints its peak RSS (bytes).
TRAIN_AND_REPORT_PEAK = """
import json, pathlib, resource, sys
from facetrip.config import Config
from facetrip.training import train
config = Config.from_toml(sys.argv[1])
for key, value in json.loads(sys.argv[2]).items():
    config.set(key, value)
pathlib.Path(sys.argv[3]).mkdir()
train(config, sys.argv[3])
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_tiny_rec(path: Path, records: int) -> None:
    """``records`` tiny grey JPEGs (600-700 bytes each, 10 per identity) as train.rec + train.idx."""
    from PIL import Image

    from facetrip.data.recordio_writer import write_record_set

    rng = np.random.default_rng(0)
    photos = []
    for _ in range(200):  # distinct photos, reused: the bytes read are what matter, not their variety
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 24), dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
        photos.append(buffer.getvalue())
    write_record_set(path, ((float(number // PHOTOS_PER_IDENTITY), photos[number % len(photos)])
                            for number in range(records)))


def training_peak_rss(tmp_path: Path, records: int) -> int:
    rec = tmp_path / f"rec_{records}"
    write_tiny_rec(rec, records)
    data_dir = tmp_path / f"prepared_{records}"
    source = f"rec:{rec}"
    prepared = subprocess.run([sys.executable, "-c", "from facetrip.cli import app; app()", "prepare", source,
                               "--data-dir", str(data_dir), "--no-face-chips", "--workers", "2"],
                              capture_output=True, text=True, cwd=REPO)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr[-3000:]
    assert f"{records:,}" in prepared.stdout
    settings = {"data.source": source, "data.data_dir": str(data_dir), "train.epochs": 1, "train.steps_per_epoch": 5,
                "train.stranger_check": "", "train.weight_interpolation": 1.0, "split.test": 2, "split.dev": 2,
                "data.image_size": [128, 128]}  # 64 KB a decoded image: even 10^4 are read batch by batch
    trained = subprocess.run([sys.executable, "-c", TRAIN_AND_REPORT_PEAK, str(REPO / "configs" / "scratch.toml"),
                              json.dumps(settings), str(tmp_path / f"run_{records}")],
                             capture_output=True, text=True, cwd=REPO)
    assert trained.returncode == 0, trained.stdout + trained.stderr[-3000:]
    return json.loads(trained.stdout.strip().splitlines()[-1])["peak_rss"]


@pytest.mark.slow
def test_a_training_steps_peak_memory_does_not_grow_with_the_number_of_records(tmp_path):
    small = training_peak_rss(tmp_path, 10_000)
    large = training_peak_rss(tmp_path, 100_000)
    grown = large - small
    print(f"training peak RSS: {small / 2**20:.0f} MB at 10^4 records, {large / 2**20:.0f} MB at 10^5")
    # 90,000 more records: 1.4 MB of labels and positions; 60 MB is the photos' own bytes alone.
    assert grown < 40 * 2**20, f"peak RSS {small / 2**20:.0f} MB at 10^4 records, {large / 2**20:.0f} MB at 10^5"
