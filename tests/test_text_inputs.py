"""Text a user hands facetrip: config values, pairs files, photo and folder names.

Every bad value is a one-line error with exit code 2, found before any data is prepared;
every name a file system can hold either works or is named in that one line.
"""

import dataclasses
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_cli
from facetrip.config import SECTIONS, Config, ConfigError
from facetrip.evaluation import PairsFileError, parse_lfw_pairs, read_lfw_pairs

# Linux and most Unix file systems store names as bytes; macOS and Windows insist on Unicode.
NON_UTF8_NAMES = pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="names must be Unicode here")


def error_lines(result) -> list[str]:
    """The non-blank lines a command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result, *expected: str) -> None:
    """Exit code 2, no traceback, and one stderr line holding every ``expected`` text."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in lines[0], (text, lines[0])


def write_photo(path, seed: int, size=(20, 16), fmt="PNG") -> np.ndarray:
    """A random RGB photo at ``path`` (bytes or str), its folders created; returns its pixels."""
    os.makedirs(os.path.dirname(os.fsencode(path)), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.fsdecode(path), format=fmt)
    return pixels


def in_folder(root, *parts: bytes) -> bytes:
    """``root/parts...`` as bytes, so that parts may be names that are not UTF-8."""
    return os.path.join(os.fsencode(root), *parts)


@pytest.fixture
def forbid_data_loading(monkeypatch):
    """Make loading any data source fail the test: config errors must come first."""
    import facetrip.data
    import facetrip.data.sources

    def refuse(*arguments, **options):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(facetrip.data, "load_faces", refuse)
    monkeypatch.setattr(facetrip.data.sources, "load_faces", refuse)


# ----------------------------------------------------------------------------------- configs

BAD_CONFIG_VALUES = [
    # (section, key, TOML value, what the error quotes)
    ("data", "image_size", "[0, -3]", "[0, -3]"),
    ("data", "image_size", "[150, 100000]", "[150, 100000]"),
    ("data", "channels", "2", "2"),
    ("split", "test", "nan", "nan"),
    ("split", "test", "2.5", "2.5"),
    ("split", "dev", "-1", "-1"),
    ("split", "seed", "-1", "-1"),
    ("sampler", "identities_per_batch", "1", "1"),
    ("sampler", "images_per_identity", "0", "0"),
    ("augment", "max_shift", "2.0", "2.0"),
    ("augment", "brightness", "nan", "nan"),
    ("augment", "contrast", "-0.1", "-0.1"),
    ("augment", "rotation", "-10.0", "-10.0"),
    ("augment", "scale", "1.0", "1.0"),
    ("augment", "erasing", "1.5", "1.5"),
    ("augment", "blended_identities", "-1", "-1"),
    ("loss", "margin", "inf", "inf"),
    ("loss", "memory_size", "-1", "-1"),
    ("loss", "memory_size", "2.5", "2.5"),
    ("loss", "memory_warmup_steps", "-3", "-3"),
    ("model", "width", "0", "0"),
    ("model", "embedding_dim", "0", "0"),
    ("model", "dropout", "5", "5"),
    ("model", "tta_shift", "-1", "-1"),
    ("train", "epochs", "nan", "nan"),
    ("train", "epochs", "inf", "inf"),
    ("train", "epochs", "-1", "-1"),
    ("train", "epochs", "2.5", "2.5"),
    ("train", "epochs", "true", "True"),
    ("train", "warmup_epochs", "-2", "-2"),
    ("train", "classification_weight", "nan", "nan"),
    ("train", "classification_scale", "-1.0", "-1.0"),
    ("train", "classification_margin", "1.5", "1.5"),
    ("train", "classifier_sample", "-1", "-1"),
    ("train", "classifier_sample", "0.5", "0.5"),
    ("train", "learning_rate", "0.0", "0.0"),
    ("train", "learning_rate", "-inf", "-inf"),
    ("train", "lr_warmup_epochs", "-1", "-1"),
    ("train", "weight_decay", "-0.1", "-0.1"),
    ("train", "target_far", "1.0", "1.0"),
    ("train", "checkpoint_seconds", "nan", "nan"),
    ("train", "checkpoint_seconds", "-5.0", "-5.0"),
    ("train", "replay_share", "1.0", "1.0"),
    ("train", "replay_share", "-0.25", "-0.25"),
    ("train", "weight_interpolation", "1.5", "1.5"),
    ("train", "seed", "4294967296", "4294967296"),
    ("train", "replicas", "257", "257"),
    ("train", "steps_per_epoch", "-1", "-1"),
    ("train", "steps_per_epoch", "1.5", "1.5"),
    ("identify", "false_alarm", "1.0", "1.0"),
]


def test_every_numeric_config_key_has_a_range_its_default_meets():
    """A numeric key without a range would take nan, inf or a negative count unchecked."""
    from facetrip.config import ALLOWED

    numeric_keys = set()
    for section_name in SECTIONS:
        section = getattr(Config(), section_name)
        for field in dataclasses.fields(section):
            default = getattr(section, field.name)
            if isinstance(default, (int, float, list)) and not isinstance(default, bool):
                key = f"{section_name}.{field.name}"
                numeric_keys.add(key)
                if field.type == "float":  # e.g. split.test = 10 (an int) would refuse the fraction 0.25
                    assert isinstance(default, float), (key, default)
                Config().set(key, default)  # the defaults pass their own checks
    # A number or a word: train.weight_interpolation = "auto" by default, or a share from 0 to 1.
    for key, number in (("train.weight_interpolation", 0.5),):
        numeric_keys.add(key)
        assert Config().set(key, number) is None and Config().set(key, "auto") is None
    assert numeric_keys == set(ALLOWED)
    assert {f"{section}.{key}" for section, key, _, _ in BAD_CONFIG_VALUES} == numeric_keys  # each is tried below


@pytest.mark.parametrize("section, key, value, shown", BAD_CONFIG_VALUES)
def test_bad_config_values_are_one_line_errors_before_any_data(section, key, value, shown, tmp_path, forbid_data_loading):
    config_file = tmp_path / "bad.toml"
    config_file.write_text(f"[{section}]\n{key} = {value}\n")
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", config_file, "--run-dir", run_dir, "--no-evaluate")
    assert_one_line_error(result, str(config_file), f"{section}.{key} must be", f"not {shown}")
    assert not run_dir.exists()  # nothing written either


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--epochs", "-1"), "train.epochs must be a whole number >= 0, not -1."),
        (("--lr", "nan"), "train.learning_rate must be a number > 0, not nan."),
        (("--lr", "inf"), "train.learning_rate must be a number > 0, not inf."),
        (("--image-size", "0x-3"), "data.image_size must be a list of 2 whole numbers, each from 1 to 4096, not [0, -3]."),
        (("-P", "1"), "sampler.identities_per_batch must be a whole number >= 2, not 1."),
        (("--seed", "-3"), "train.seed must be a whole number from 0 to 4294967295, not -3."),
        (("--embedding-dim", "0"), "model.embedding_dim must be a whole number >= 1, not 0."),
        (("--data", "folder:/photos/caf\udce9"), "data.source must be UTF-8 text"),
        (("--weight-interpolation", "half"), "--weight-interpolation must be a number from 0 to 1 or 'auto', not 'half'."),
        (("--weight-interpolation", "-0.5"), "train.weight_interpolation must be a number from 0 to 1 or 'auto', not -0.5."),
    ],
)
def test_bad_command_line_overrides_are_one_line_errors_before_any_data(flags, expected, tmp_path, forbid_data_loading):
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", TINY, *flags, "--run-dir", run_dir, "--no-evaluate")
    assert_one_line_error(result, expected)
    assert not run_dir.exists()


def test_config_accepts_the_edges_of_every_range(tmp_path):
    config_file = tmp_path / "edges.toml"
    config_file.write_text(
        "[split]\ntest = 0.25\ndev = 0\n[augment]\nscale = 0.99\nerasing = 1.0\nrotation = 180\n"
        "[model]\ndropout = 0.5\n[train]\nepochs = 0\ncheckpoint_seconds = 0\nseed = 4294967295\n"
    )
    config = Config.from_toml(config_file)
    assert (config.split.test, config.split.dev, config.train.epochs, config.train.seed) == (0.25, 0.0, 0, 2**32 - 1)
    assert config.augment.rotation == 180.0 and isinstance(config.augment.rotation, float)
    with pytest.raises(ConfigError, match=r"train.epochs must be a whole number >= 0 \(at most 2147483647\), not 10"):
        Config().set("train.epochs", 10**30)  # the command line takes numbers of any size


# -------------------------------------------------------------------------------- pairs files

# Characters str.splitlines() ends a line at, besides '\n' and '\r'.
OTHER_LINE_BREAKS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_image_numbers_beyond_int64_name_the_line():
    for line in ("Ann 1 99999999999999999999", "Ann 99999999999999999999 2"):
        with pytest.raises(PairsFileError, match=r"pairs.txt line 2: image number 99999999999999999999 is too large"):
            parse_lfw_pairs(f"1\n{line}\nAnn 1 Bob 2\n", "pairs.txt")
    with pytest.raises(PairsFileError, match=r"pairs.txt line 3: image number 18446744073709551616 is too large"):
        parse_lfw_pairs("1\nAnn 1 2\nAnn 1 Bob 18446744073709551616\n", "pairs.txt")
    biggest = np.iinfo(np.int64).max
    assert parse_lfw_pairs(f"1\nAnn 1 {biggest}\nAnn 1 Bob 2\n").second_numbers[0] == biggest


@pytest.mark.parametrize("line_break", OTHER_LINE_BREAKS)
def test_pairs_lines_end_only_at_newlines(line_break):
    """A name holding \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 or \\u2029 stays one name on one line."""
    name = f"Ann{line_break}Lee"
    named = parse_lfw_pairs(f"1\r\n{name}\t1\t2\r\n{name} 1 Bob 2\r\n")
    assert named.first_names == [name, name] and named.second_names == [name, "Bob"]
    assert named.line_numbers.tolist() == [2, 3]
    with pytest.raises(PairsFileError, match="pairs.txt line 3: image numbers must be whole numbers"):
        parse_lfw_pairs(f"1\n{name} 1 2\n{name} 1 Bob x\n", "pairs.txt")


def test_pairs_files_are_read_as_utf8_with_windows_line_ends(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes("\ufeff1\r\nZo\u2028\u00eb 1 2\r\nZo\u2028\u00eb 2 Bob 1\r\n".encode())
    named = read_lfw_pairs(path)
    assert named.first_names == ["Zo\u2028\u00eb"] * 2 and named.line_numbers.tolist() == [2, 3]
    path.write_bytes(b"1\rAnn 1 2\nAnn 1 Bob 2\n")  # a lone carriage return ends no line
    with pytest.raises(PairsFileError, match="line 1: expected a header"):
        read_lfw_pairs(path)
    path.write_bytes(b"1\nAnn 1 2\nAnn 1 B\xffb 2\n")
    with pytest.raises(PairsFileError, match="is not UTF-8 text"):
        read_lfw_pairs(path)


@pytest.mark.slow
def test_evaluate_names_the_line_of_a_too_large_image_number(finished_run, tmp_path, data_dir):
    run_dir, _ = finished_run
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("1\ns1 1 99999999999999999999\ns1 1 s2 1\n")
    result = run_cli("evaluate", run_dir, "--pairs", pairs_file, "--data-dir", data_dir)
    assert_one_line_error(result, f"{pairs_file} line 2: image number 99999999999999999999 is too large")


# ------------------------------------------------------------------------- embed: metadata.tsv


def metadata_rows(output_dir) -> list[list[str]]:
    """metadata.tsv split as the projector splits it: rows at '\\n', fields at tabs."""
    text = (output_dir / "metadata.tsv").read_bytes().decode("utf-8")
    assert text.splitlines() == text.rstrip("\n").split("\n")  # no other line break hides in a field
    return [row.split("\t") for row in text.rstrip("\n").split("\n")]


@pytest.mark.slow
def test_embed_escapes_tabs_newlines_and_backslashes_in_metadata(finished_run, tmp_path):
    run_dir, _ = finished_run
    root = tmp_path / "photos"
    names = [("tab\there", "a\tb.png"), ("new\nline", "c\nd.png"), ("back\\slash", "e\\f.png"),
             ("sep\u2028arated", "g\x85h\x1ci.png"), ("plain", "\u00e9mile \U0001F600.png")]
    for seed, (folder, file_name) in enumerate(names):
        write_photo(root / folder / file_name, seed)
    result = run_cli("embed", root, "--run", run_dir, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = metadata_rows(tmp_path / "out")
    assert rows[0] == ["label", "path"] and len(rows) == len(names) + 1
    assert all(len(row) == 2 for row in rows), rows
    escaped = {row[0]: row[1] for row in rows[1:]}
    assert set(escaped) == {"tab\\there", "new\\nline", "back\\\\slash", "sep\\u2028arated", "plain"}
    assert escaped["tab\\there"].endswith("/tab\\there/a\\tb.png")
    assert escaped["back\\\\slash"].endswith("/back\\\\slash/e\\\\f.png")
    assert escaped["sep\\u2028arated"].endswith("/g\\x85h\\x1ci.png")
    assert escaped["plain"].endswith("/\u00e9mile \U0001F600.png")  # printable Unicode stays as it is
    assert np.load(tmp_path / "out" / "embeddings.npy").shape[0] == len(names)


@NON_UTF8_NAMES
@pytest.mark.slow
def test_embed_writes_non_utf8_file_names_as_byte_escapes(finished_run, tmp_path):
    run_dir, _ = finished_run
    root = tmp_path / "photos"
    write_photo(in_folder(root, b"caf\xe9", b"\xff.png"), 0)
    write_photo(in_folder(root, b"plain", b"ok.png"), 1)
    output = tmp_path / "out"
    result = run_cli("embed", root, "--run", run_dir, "-o", output, "--json")
    assert result.exit_code == 0, result.output
    rows = metadata_rows(output)
    assert rows[1][0] == "caf\\xe9" and rows[1][1].endswith("/caf\\xe9/\\xff.png") and rows[2][0] == "plain"
    for name in json.loads(result.stdout)["files"]:
        assert (output / name).is_file(), name
    assert list(output.glob("embedding.ckpt-*.index"))


@NON_UTF8_NAMES
@pytest.mark.slow
def test_embed_prints_non_utf8_names_of_photos_without_a_face(finished_run, tmp_path):
    """A face-chip run lists the photos without a face on a UTF-8 terminal, whatever their names."""
    from facetrip.data.model_input import model_input_metadata

    run_dir = tmp_path / "chips_run"
    shutil.copytree(finished_run[0], run_dir)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    (run_dir / "metadata.json").write_text(json.dumps({**metadata, **model_input_metadata(True)}))
    write_photo(in_folder(tmp_path, b"photos", b"noise\xff.png"), 0)  # random pixels: no face
    result = run_cli("embed", tmp_path / "photos", "--run", run_dir, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    printed = " ".join(result.stdout.split())
    assert "No face found in 1 of 1 photos" in printed and "noise\\xff.png" in printed
    assert metadata_rows(tmp_path / "out")[1] == ["photos", str(tmp_path / "photos" / "noise") + "\\xff.png", "0"]


# --------------------------------------------------------------------------- folder sources


def odd_folder(root) -> dict[bytes, list[bytes]]:
    """Two photos each for identities with a tab, a newline, a backslash, a non-UTF-8 byte, Unicode."""
    layout = {
        b"tab\there": [b"1\t.png", b"2.png"],
        b"new\nline": [b"1\n.png", b"2.png"],
        b"back\\slash": [b"1\\.png", b"2.png"],
        b"caf\xe9": [b"\xff.png", b"2.png"],
        "\u00e9mile \U0001F600".encode(): [b"1.png", "\u2028.png".encode()],
    }
    for seed, (identity, file_names) in enumerate(layout.items()):
        for number, file_name in enumerate(file_names):
            write_photo(in_folder(root, identity, file_name), 10 * seed + number)
    return layout


@NON_UTF8_NAMES
def test_folders_with_odd_names_are_prepared(tmp_path, data_dir):
    from facetrip.data import load_faces

    root = tmp_path / "faces"
    odd_folder(root)
    result = run_cli("data", f"folder:{root}", "--data-dir", data_dir, "--no-face-chips", "--test", "0", "--dev", "0",
                     "-P", "2", "-K", "2")
    assert result.exit_code == 0, result.output
    assert "5 (5 with two or more images)" in result.stdout
    faces = load_faces(f"folder:{root}", data_dir=data_dir)
    assert sorted(faces.identity_names) == sorted(
        ["tab\there", "new\nline", "back\\slash", "caf\\xe9", "\u00e9mile \U0001F600"]
    )
    assert {"caf\\xe9/\\xff.png", "tab\there/1\t.png", "\u00e9mile \U0001F600/\u2028.png"} <= set(faces.file_names)


@NON_UTF8_NAMES
def test_names_stored_alike_are_a_one_line_error(tmp_path, data_dir):
    """b'\\xff' is stored as the text '\\xff': a folder holding both cannot keep them apart."""
    root = tmp_path / "faces"
    for identity in (b"\xff", b"\\xff", b"other"):
        for number in (1, 2):
            write_photo(in_folder(root, identity, b"%d.png" % number), number)
    result = run_cli("data", f"folder:{root}", "--data-dir", data_dir, "--no-face-chips")
    assert_one_line_error(result, "b'\\\\xff' and b'\\xff' would both be stored as '\\\\xff'", "rename one")


@NON_UTF8_NAMES
@pytest.mark.slow
def test_embed_a_folder_source_with_odd_names(finished_run, tmp_path, data_dir):
    run_dir, _ = finished_run
    root = tmp_path / "faces"
    layout = odd_folder(root)
    result = run_cli("embed", "--run", run_dir, "--data", f"folder:{root}", "--split", "all", "--data-dir", data_dir,
                     "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = metadata_rows(tmp_path / "out")
    assert len(rows) == 1 + sum(len(names) for names in layout.values()) and all(len(row) == 2 for row in rows)
    assert ["caf\\\\xe9", "caf\\\\xe9/\\\\xff.png"] in rows  # the stored name '\xff', its backslash escaped
    assert ["tab\\there", "tab\\there/1\\t.png"] in rows


# ------------------------------------------------------------------------ folder fingerprint


def bmp_folder(root) -> None:
    """Three identities of two BMP photos (uncompressed: a replacement of the same size is easy)."""
    for identity in range(3):
        for number in range(2):
            write_photo(root / f"person{identity}" / f"{number}.bmp", 10 * identity + number, fmt="BMP")


def test_a_replaced_photo_of_the_same_name_size_and_time_is_prepared_anew(tmp_path, data_dir):
    from facetrip.data import load_faces
    from facetrip.data.folder import folder_builder

    root = tmp_path / "faces"
    bmp_folder(root)
    photo = root / "person1" / "0.bmp"
    before = folder_builder(root, data_dir=data_dir)
    load_faces(f"folder:{root}", data_dir=data_dir)
    stat = photo.stat()
    replacement = write_photo(photo, 99, fmt="BMP")
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or an archive would leave it
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = folder_builder(root, data_dir=data_dir)
    assert after.builder_config.name != before.builder_config.name and not after.is_prepared()
    faces = load_faces(f"folder:{root}", data_dir=data_dir)
    index = list(faces.file_names).index("person1/0.bmp")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(faces.encoded[index]))), replacement)


def test_another_folder_with_the_same_photos_gets_its_own_copy_and_touching_changes_nothing(tmp_path):
    from facetrip.data.folder import folder_builder

    root = tmp_path / "faces"
    bmp_folder(root)
    copy = tmp_path / "elsewhere" / "faces"
    shutil.copytree(root, copy)  # the same names, sizes and modification times
    name = folder_builder(root, data_dir=str(tmp_path / "tfds")).builder_config.name
    assert folder_builder(copy, data_dir=str(tmp_path / "tfds")).builder_config.name != name
    os.utime(root / "person0" / "0.bmp")  # a new modification time, the same content
    assert folder_builder(root, data_dir=str(tmp_path / "tfds")).builder_config.name == name
