"""The face-chip cache is the user's alone: private folders and files, a keyed tag on every entry, a private key.

What it guards against: whoever can write the cache folder planting another person's chip
under a photo's key (``verify`` would then answer "same person" for two strangers), and
whoever can read it looking at the user's face crops.
"""

import hashlib
import hmac
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from helpers import call_within, one_line_error

from facetrip.data import chip_cache, chip_cutting
from facetrip.data.chip_cache import UntrustedCacheError, cached_chip_png, chip_cache_dir, photo_key, store_chip_png
from facetrip.data.chip_cutting import FaceChip
from facetrip.data.chip_png import encode_chip
from facetrip.data.face_chips import chip_faces, chip_from_file
from facetrip.data.orl import orl_faces_root
from facetrip.data.sources import FaceImages

NOBODY = 65534  # the uid (and gid) of "nobody": another user, whose files tests hand folders to
HANG_SECONDS = 5.0


@pytest.fixture(autouse=True)
def private_key_file(tmp_path, monkeypatch):
    """The cache's key in this test's own folder (not the user's ~/.config); yields its path."""
    key_file = tmp_path / "config" / "cache.key"
    monkeypatch.setenv("FACETRIP_CACHE_KEY_FILE", str(key_file))
    chip_cache._keys.clear()
    yield key_file
    chip_cache._keys.clear()


def orl_path(identity: int, image: int) -> Path:
    return orl_faces_root() / f"s{identity}" / f"{image}.pgm"


def flat_chip_png(value: int) -> bytes:
    """A well-formed PNG chip of one grey value: cut by nobody, quick to make."""
    return encode_chip(FaceChip(np.full((150, 150, 3), value, np.uint8), 1))


def with_entry_label(png: bytes, text: str) -> bytes:
    """``png`` with a ``facetrip:cache_entry`` text chunk saying ``text`` right after its IHDR chunk."""
    payload = b"facetrip:cache_entry\0" + text.encode("latin-1")
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    return png[:33] + chunk + png[33:]


def tag_under(secret: bytes, key: str, png: bytes) -> str:
    """The tag an entry of ``key`` holding ``png`` carries under ``secret``: HMAC-SHA256 of key, alignment and chip."""
    message = b"\0".join((b"facetrip:cache_entry", key.encode(), chip_cutting.ALIGNMENT_VERSION.encode(), png))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def cache_file(key: str) -> Path:
    return chip_cache._cache_path(key)


def private_folders(folder: Path) -> None:
    """Make ``folder`` and the missing folders above it, each 0700."""
    if not folder.parent.exists():
        private_folders(folder.parent)
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def give_to_another_user(path: Path, monkeypatch) -> None:
    """Make ``path`` another user's: chowned to nobody as root, else its owner faked in what facetrip's checks see."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        return
    target = os.lstat(path)

    def as_another_users(status):
        if (status.st_dev, status.st_ino) != (target.st_dev, target.st_ino):
            return status
        fields = list(status)
        fields[4] = os.geteuid() + 1  # st_uid
        return os.stat_result(fields)

    real_stat, real_lstat, real_fstat = os.stat, os.lstat, os.fstat
    monkeypatch.setattr(chip_cache.os, "stat", lambda *args, **kwargs: as_another_users(real_stat(*args, **kwargs)))
    monkeypatch.setattr(chip_cache.os, "lstat", lambda *args, **kwargs: as_another_users(real_lstat(*args, **kwargs)))
    monkeypatch.setattr(chip_cache.os, "fstat", lambda descriptor: as_another_users(real_fstat(descriptor)))


# ---------------------------------------------------------------------------------------------
# Entries without the user's tag: never used, computed again and replaced


def _label_without_a_tag(key: str, planted: bytes, genuine_file: bytes) -> bytes:
    """A label of the photo's key and the alignment version alone, which anyone can compute."""
    return with_entry_label(planted, f"{key} {chip_cutting.ALIGNMENT_VERSION}")


def _the_photos_own_label_on_another_chip(key: str, planted: bytes, genuine_file: bytes) -> bytes:
    """The genuine entry's label, tag and all, copied onto another chip."""
    start = genuine_file.index(b"facetrip:cache_entry") - 8  # the chunk's length and type come first
    (length,) = struct.unpack(">I", genuine_file[start : start + 4])
    return planted[:33] + genuine_file[start : start + 12 + length] + planted[33:]


@pytest.mark.parametrize("forge", [_label_without_a_tag, _the_photos_own_label_on_another_chip],
                         ids=lambda forge: forge.__name__.strip("_"))
def test_an_entry_without_the_users_tag_for_this_chip_is_not_used(fresh_cache, forge):
    key = photo_key(b"a photo")
    genuine = flat_chip_png(40)
    store_chip_png(key, genuine)
    genuine_file = cache_file(key).read_bytes()
    chip_cache._memo.clear()
    assert cached_chip_png(key) == genuine  # the entry facetrip wrote is read back

    cache_file(key).write_bytes(forge(key, flat_chip_png(220), genuine_file))
    chip_cache._memo.clear()
    assert cached_chip_png(key) is None  # computed again, not taken from the planted file


def test_a_planted_chip_of_another_person_does_not_change_what_verify_compares(fresh_cache, detector_calls):
    """Person s1's chip planted under s2's photo with a label anyone can compute: the model still sees s2."""
    from facetrip.data.model_input import file_inputs

    first, second = orl_path(1, 1), orl_path(2, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACETRIP_CACHE_DIR", "")
        uncached, faces_uncached = file_inputs([first, second], face_chips=True)
    chip_cache._memo.clear()
    assert uncached[0] != uncached[1]

    chip_from_file(first)
    planted = _label_without_a_tag(photo_key(second.read_bytes()), uncached[0], b"")
    cache_file(photo_key(second.read_bytes())).parent.mkdir(parents=True, exist_ok=True)
    cache_file(photo_key(second.read_bytes())).write_bytes(planted)
    chip_cache._memo.clear()
    calls_before = len(detector_calls)

    assert file_inputs([first, second], face_chips=True) == (uncached, faces_uncached)
    assert len(detector_calls) == calls_before + 1  # s2 cut again; s1 read from its genuine entry
    chip_cache._memo.clear()
    assert cached_chip_png(photo_key(second.read_bytes())) == uncached[1]  # the planted file is replaced

    photos = np.empty(2, dtype=object)
    photos[:] = [first.read_bytes(), second.read_bytes()]
    faces = FaceImages(encoded=photos, labels=np.array([0, 1]), identity_names=["s1", "s2"],
                       file_names=np.array(["s1/1.pgm", "s2/1.pgm"]), channels=1, source="by hand")
    cache_file(photo_key(second.read_bytes())).write_bytes(planted)
    chip_cache._memo.clear()
    chips, report = chip_faces(faces)  # the path of a set of photos (train, evaluate)
    assert list(chips.encoded) == uncached and report.from_cache == 1


def test_an_entry_of_another_users_cache_is_not_used(fresh_cache, private_key_file, tmp_path, monkeypatch):
    key = photo_key(b"a photo")
    store_chip_png(key, flat_chip_png(90))
    monkeypatch.setenv("FACETRIP_CACHE_KEY_FILE", str(tmp_path / "someone-else" / "cache.key"))
    chip_cache._memo.clear()
    assert cached_chip_png(key) is None


def test_the_tag_is_made_with_the_key_in_the_key_file(fresh_cache, private_key_file):
    private_key_file.parent.mkdir(mode=0o700)
    secret = bytes(range(32))
    private_key_file.write_bytes(secret)
    private_key_file.chmod(0o600)
    key, png = photo_key(b"a photo"), flat_chip_png(120)
    store_chip_png(key, png)
    assert private_key_file.read_bytes() == secret  # the user's key is used, never replaced
    assert cache_file(key).read_bytes() == with_entry_label(
        png, f"{key} {chip_cutting.ALIGNMENT_VERSION} {tag_under(secret, key, png)}")


# ---------------------------------------------------------------------------------------------
# Private folders and files


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_folders_are_0700_and_files_0600_whatever_the_umask(fresh_cache, private_key_file, umask):
    previous = os.umask(umask)
    try:
        key = photo_key(b"a photo")
        store_chip_png(key, flat_chip_png(60))
    finally:
        os.umask(previous)
    folders = [fresh_cache, fresh_cache / "face_chips", chip_cache_dir(), cache_file(key).parent, private_key_file.parent]
    assert {str(folder): mode_of(folder) for folder in folders} == {str(folder): 0o700 for folder in folders}
    assert (mode_of(cache_file(key)), mode_of(private_key_file)) == (0o600, 0o600)
    assert len(private_key_file.read_bytes()) == 32
    chip_cache._memo.clear()
    chip_cache._keys.clear()
    assert cached_chip_png(key) == flat_chip_png(60)  # the key made is read back


def test_an_older_facetrips_open_cache_folders_are_closed(fresh_cache, monkeypatch, tmp_path):
    """The default cache folder, made 0755 (or 0775 under a umask of 002) by an older facetrip, becomes 0700."""
    monkeypatch.delenv("FACETRIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    key = photo_key(b"a photo")
    root = tmp_path / "xdg" / "facetrip"
    folders = [root, root / "face_chips", chip_cache_dir(), cache_file(key).parent]
    for folder, mode in zip(folders, (0o755, 0o775, 0o777, 0o755)):
        folder.mkdir(parents=True)
        folder.chmod(mode)
    assert cached_chip_png(key) is None
    assert [mode_of(folder) for folder in folders[:3]] == [0o700] * 3
    store_chip_png(key, flat_chip_png(70))
    assert mode_of(folders[3]) == 0o700


def test_a_cache_folder_that_cannot_be_closed_is_refused(fresh_cache, monkeypatch):
    folder = chip_cache_dir()
    private_folders(folder)
    folder.chmod(0o755)

    def no_chmod(path, mode, **options):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(chip_cache.os, "chmod", no_chmod)
    with pytest.raises(UntrustedCacheError) as refused:
        cached_chip_png(photo_key(b"a photo"))
    message = str(refused.value)
    assert "\n" not in message and str(folder) in message and f"chmod 700 {folder}" in message
    assert "FACETRIP_CACHE_DIR= (empty) to turn the cache off" in message


def test_a_cache_folder_the_user_named_is_refused_when_others_may_write_it_never_changed(fresh_cache):
    fresh_cache.mkdir()
    fresh_cache.chmod(0o775)
    for use in (lambda: cached_chip_png(photo_key(b"a photo")), lambda: store_chip_png(photo_key(b"a photo"), b""),
                chip_cache.check_chip_cache):
        with pytest.raises(UntrustedCacheError, match="writable by other users") as refused:
            use()
        assert f"chmod 700 {fresh_cache}" in str(refused.value)
    assert mode_of(fresh_cache) == 0o775 and not (fresh_cache / "face_chips").exists()

    fresh_cache.chmod(0o755)  # others may read it: the folders facetrip keeps in it are closed
    store_chip_png(photo_key(b"a photo"), flat_chip_png(10))
    assert mode_of(fresh_cache) == 0o755 and mode_of(fresh_cache / "face_chips") == 0o700


@pytest.mark.parametrize("which", ["root", "face_chips", "version", "shard"])
def test_a_cache_folder_of_another_user_is_refused(fresh_cache, monkeypatch, which):
    key = photo_key(b"a photo")
    folder = {"root": fresh_cache, "face_chips": fresh_cache / "face_chips", "version": chip_cache_dir(),
              "shard": cache_file(key).parent}[which]
    private_folders(folder)
    give_to_another_user(folder, monkeypatch)
    use = (lambda: store_chip_png(key, flat_chip_png(30))) if which == "shard" else (lambda: cached_chip_png(key))
    with pytest.raises(UntrustedCacheError, match="belongs to user") as refused:
        use()
    assert "\n" not in str(refused.value) and str(folder) in str(refused.value)
    assert "FACETRIP_CACHE_DIR" in str(refused.value)


def test_a_key_that_cannot_be_made_only_turns_the_disk_cache_off(fresh_cache, private_key_file, monkeypatch,
                                                                 tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the key's folder would go")
    monkeypatch.setenv("FACETRIP_CACHE_KEY_FILE", str(blocker / "cache.key"))
    store_chip_png(photo_key(b"a photo"), flat_chip_png(10))
    chip_cache._memo.clear()
    assert cached_chip_png(photo_key(b"a photo")) is None
    assert not list(chip_cache_dir().glob("*/*.png"))

    monkeypatch.setenv("FACETRIP_CACHE_KEY_FILE", str(private_key_file))
    monkeypatch.setenv("FACETRIP_CACHE_DIR", "")  # a cache that is off never needs its key
    store_chip_png(photo_key(b"a photo"), flat_chip_png(10))
    assert cached_chip_png(photo_key(b"a photo")) is not None  # the memo
    assert not private_key_file.parent.exists()


# ---------------------------------------------------------------------------------------------
# The key file


def _open_to_others(key_file: Path, monkeypatch) -> str:
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o644)
    return "open to other users (mode 0644)"


def _open_to_the_group(key_file: Path, monkeypatch) -> str:
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o640)
    return "open to other users (mode 0640)"


def _of_another_user(key_file: Path, monkeypatch) -> str:
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    give_to_another_user(key_file, monkeypatch)
    return "belongs to user"


def _a_link(key_file: Path, monkeypatch) -> str:
    target = key_file.with_name("elsewhere.key")
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    key_file.symlink_to(target)
    return "not a regular file"


def _a_folder(key_file: Path, monkeypatch) -> str:
    key_file.mkdir()
    return "not a regular file"


def _too_short(key_file: Path, monkeypatch) -> str:
    key_file.write_bytes(os.urandom(16))
    key_file.chmod(0o600)
    return "not a facetrip cache key (16 bytes, not 32)"


def _a_fifo(key_file: Path, monkeypatch) -> str:
    os.mkfifo(key_file, 0o600)
    return "not a regular file"


@pytest.mark.parametrize("spoil", [_open_to_others, _open_to_the_group, _of_another_user, _a_link, _a_folder,
                                   _too_short, _a_fifo], ids=lambda spoil: spoil.__name__.strip("_"))
def test_a_key_file_that_is_not_the_users_alone_is_refused_in_one_line(fresh_cache, private_key_file, monkeypatch,
                                                                       spoil):
    private_key_file.parent.mkdir(mode=0o700)
    reason = spoil(private_key_file, monkeypatch)
    before = os.lstat(private_key_file)
    with pytest.raises(UntrustedCacheError) as refused:
        call_within(HANG_SECONDS, lambda: cached_chip_png(photo_key(b"a photo")), private_key_file)
    message = str(refused.value)
    assert "\n" not in message and str(private_key_file) in message and reason in message, message
    assert "remove it" in message and "FACETRIP_CACHE_KEY_FILE" in message
    assert os.lstat(private_key_file).st_ino == before.st_ino  # left as it was
    assert not list(fresh_cache.glob("face_chips/*/*/*.png"))


def test_a_key_folder_others_may_write_is_refused(fresh_cache, private_key_file):
    private_key_file.parent.mkdir()
    private_key_file.parent.chmod(0o777)
    with pytest.raises(UntrustedCacheError, match="writable by other users") as refused:
        store_chip_png(photo_key(b"a photo"), flat_chip_png(10))
    assert f"chmod 700 {private_key_file.parent}" in str(refused.value)
    assert not private_key_file.exists()


def test_the_default_key_file_is_in_the_config_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FACETRIP_CACHE_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    assert chip_cache.cache_key_file() == tmp_path / "xdg-config" / "facetrip" / "cache.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert chip_cache.cache_key_file() == tmp_path / "home" / ".config" / "facetrip" / "cache.key"


# ---------------------------------------------------------------------------------------------
# On the command line: one line, exit 2


def test_every_command_that_cuts_chips_ends_a_refused_cache_in_one_line():
    import importlib

    from facetrip.cli.core import error_classes

    commands = {"train": "train", "evaluate": "evaluation", "verify": "verification", "identify": "identification",
                "index": "identification", "cluster": "identification"}
    for command, module in commands.items():
        mapped = getattr(importlib.import_module(f"facetrip.cli.{module}"), command).mapped_errors
        assert issubclass(UntrustedCacheError, error_classes(mapped)), command


def stub_run(tmp_path):
    """A run on face chips without a model: a command ends at the cache before the model is needed."""
    from facetrip.runs.loaded_run import Run

    return Run(tmp_path, None, {"face_chips": True, "metric": "euclidean", "image_size": [150, 150], "channels": 3})


@pytest.mark.parametrize("command", ["verify", "embed"])
def test_a_refused_cache_ends_a_command_in_one_line(fresh_cache, tmp_path, monkeypatch, command):
    from facetrip.cli import embedding, verification

    for module in (verification, embedding):
        monkeypatch.setattr(module, "_load_run", lambda run: stub_run(tmp_path))
    fresh_cache.mkdir()
    fresh_cache.chmod(0o777)
    photos = [orl_path(1, 1), orl_path(2, 1)]
    arguments = {"verify": ["verify", *photos, "--threshold", "0.6"],
                 "embed": ["embed", *photos, "--output", tmp_path / "embeddings"]}[command]
    result = run_cli(*arguments)
    one_line_error(result, str(fresh_cache), "writable by other users", f"chmod 700 {fresh_cache}")


def test_a_key_file_open_to_others_ends_verify_in_one_line(fresh_cache, private_key_file, tmp_path, monkeypatch):
    from facetrip.cli import verification

    monkeypatch.setattr(verification, "_load_run", lambda run: stub_run(tmp_path))
    private_key_file.parent.mkdir(mode=0o700)
    _open_to_others(private_key_file, monkeypatch)
    result = run_cli("verify", orl_path(1, 1), orl_path(2, 1), "--threshold", "0.6")
    one_line_error(result, str(private_key_file), "open to other users")
