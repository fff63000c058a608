"""What a command may write into: an output folder that is its own, and a single output file.

A command that writes a folder of results (``cluster -o``, ``index -o``, ``embed -o``,
``export -o``) writes only into a folder that is

- missing or empty, or
- its own earlier output, with ``--overwrite`` (``index`` also with ``--add``): its files are
  the ones listed in the record it wrote there, :data:`OUTPUT_RECORD`.

Anything else ends the command in one line naming the folder and the first files in the way,
before anything is computed or written. With ``--overwrite`` a folder that also holds files
the command did not write is used, and those files are left alone, as long as none of them
has a name the command writes (:attr:`CommandOutput.names`): a user's file is never replaced.

The order is always: :func:`check_output_folder` (reads only) before the command computes
anything; :meth:`OutputFolder.claim` records each name in the record *before* the file of that
name is written; :meth:`OutputFolder.finish` then removes the command's earlier files that
this output did not write again, and records exactly this output. A kill at any point
leaves a record that lists every file the command may have written, so a later
``--overwrite`` still takes them for its own.

The record is read as untrusted input (:mod:`facetrip.untrusted_files`): it must be a regular
file (not a FIFO, a device or a folder) of at most :data:`RECORD_SIZE_LIMIT` bytes holding
this format's JSON, nested within bounds, written by the
same command, whose names are plain file names of the kind that command writes (no ``/``, no
``..``). A record that is not all of that makes the folder a stranger's, and the record
itself a file in the way. Only plain files listed in a trusted record are ever deleted.

A single output file (``mine -o``) follows the same rule through :func:`check_output_file`:
it may be replaced only with ``--overwrite`` and only when its content shows that facetrip
wrote it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from facetrip import __version__
from facetrip.runs.files import atomic_write_json
from facetrip.untrusted_files import UntrustedFileError, read_untrusted_json

# The record of what a command wrote into its output folder; hidden, like the run lock.
OUTPUT_RECORD = ".facetrip-output.json"
OUTPUT_RECORD_FORMAT = 1
# A record lists file names only (a clustering of 100,000 photos: about 2 MB); a larger file is not one.
RECORD_SIZE_LIMIT = 16 << 20
# Names listed in a refusal before "and N more".
SHOWN_NAMES = 3
# Why a record is not trusted, by the reason of facetrip.untrusted_files.
_DISTRUST = {"not regular": "it is not a plain file", "unreadable": "it cannot be read",
             "too large": "it is larger than any record", "not text": "it is not JSON", "too deep": "it is not JSON",
             "corrupt": "it is not JSON"}


class OutputFolderError(ValueError):
    """An output folder or file a command must not write into: one line naming it and what is in the way."""


@dataclasses.dataclass(frozen=True)
class CommandOutput:
    """What one command writes into its output folder.

    Attributes:
        command: the command as the user types it, e.g. ``"facetrip cluster"``.
        names: shell patterns (:func:`fnmatch.fnmatchcase`) of every name it writes in the
            folder, e.g. ``"cluster_[0-9][0-9][0-9]*.png"``; the record's name is added.
        option: the option that names another folder, for the refusals.
        again: what the user may do with the command's earlier output, for the refusals.
    """

    command: str
    names: tuple[str, ...]
    option: str = "--output"
    again: str = "give --overwrite to replace it"

    def writes(self, name: str) -> bool:
        """Whether the command writes files of this name (so a stranger's file of it would be replaced)."""
        return name == OUTPUT_RECORD or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


def _listed(names: Iterable[str]) -> str:
    """``a, b, c and 4 more``: the first names, each as Python writes it (spaces and control characters shown)."""
    names = sorted(names)
    shown = ", ".join(_quoted(name) for name in names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def _quoted(name: str) -> str:
    """A file name as it is, or as Python's ``repr`` where spaces at its ends or unprintable characters would hide."""
    return name if name.isprintable() and name == name.strip() and name else repr(name)


def _plain_name(name) -> bool:
    """Whether ``name`` is one file name inside a folder: text, no separator, not ``.`` or ``..``."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and name != OUTPUT_RECORD)


def read_output_record(folder: str | Path, output: CommandOutput) -> tuple[frozenset[str] | None, str | None]:
    """The names ``output.command`` recorded writing into ``folder``, read as untrusted input.

    Args:
        folder: the output folder.
        output: the command asking.

    Returns:
        ``(names, None)`` for a trusted record; ``(None, None)`` where there is no record;
        ``(None, why)`` for a record that is not to be trusted, ``why`` saying in a few words why.
    """
    path = Path(folder) / OUTPUT_RECORD
    try:
        record = read_untrusted_json(path, RECORD_SIZE_LIMIT, "output record")
    except UntrustedFileError as error:
        if error.reason == "missing":
            return None, None
        return None, _DISTRUST.get(error.reason, "it cannot be read")
    if not isinstance(record, dict) or record.get("format") != OUTPUT_RECORD_FORMAT or not isinstance(record.get("files"), list):
        return None, "it is not a facetrip output record"
    if record.get("command") != output.command:
        written_by = record.get("command")
        return None, f"it records the output of {_quoted(written_by[:80])}" if isinstance(written_by, str) else "it names no command"
    names = record["files"]
    strangers = [name for name in names if not (_plain_name(name) and output.writes(name))]
    if strangers:
        return None, f"it lists {_quoted(str(strangers[0])[:80])}, not a file {output.command} writes in its folder"
    return frozenset(names), None


@dataclasses.dataclass
class OutputFolder:
    """A command's output folder, checked by :func:`check_output_folder`: which of its files are the command's own.

    Attributes:
        path: the folder (missing until the first :meth:`claim`).
        output: what the command writes.
        earlier: the names the command's earlier output left there, from its record.
        claimed: the names this output writes, so far.
    """

    path: Path
    output: CommandOutput
    earlier: frozenset[str] = frozenset()
    claimed: set[str] = dataclasses.field(default_factory=set)

    def claim(self, names: Iterable[str]) -> None:
        """Record ``names`` as this output's, before their files are written; the folder is created if missing.

        Args:
            names: plain file names the command writes (:meth:`CommandOutput.writes`).

        Raises:
            OutputFolderError: a file of one of the names appeared since the check, and the
                command did not write it.
            ValueError: a name the command does not declare (a mistake in the command).
            OSError: the folder or the record cannot be written.
        """
        names = set(names)
        undeclared = [name for name in names if not (_plain_name(name) and self.output.writes(name))]
        if undeclared:
            raise ValueError(f"{self.output.command} does not declare writing {undeclared[0]!r} into its output folder.")
        foreign = [name for name in names - self.earlier - self.claimed if os.path.lexists(self.path / name)]
        if foreign:
            raise OutputFolderError(f"{self.path} holds {_listed(foreign)}, which {self.output.command} did not write and "
                                    f"would replace: move it away or choose another folder with {self.output.option}.")
        self.path.mkdir(parents=True, exist_ok=True)
        self.claimed |= names
        self._record(self.earlier | self.claimed)

    def adopt(self, names: Iterable[str]) -> None:
        """Record ``names`` as this output's after a library wrote them under names it chose itself.

        Only names the command declares, which :func:`check_output_folder` made sure no
        stranger's file had: what is there, the command wrote.

        Raises:
            ValueError: a name the command does not declare (a mistake in the command).
        """
        names = set(names) - self.claimed
        undeclared = [name for name in names if not (_plain_name(name) and self.output.writes(name))]
        if undeclared:
            raise ValueError(f"{self.output.command} does not declare writing {undeclared[0]!r} into its output folder.")
        if names:
            self.claimed |= names
            self._record(self.earlier | self.claimed)

    def finish(self) -> list[str]:
        """After the output is written: remove the earlier output's files it did not write again; record the output.

        Only plain files listed in the earlier record are removed; a listed name that has become
        a folder or a link is left alone and stays listed.

        Returns:
            The names removed.
        """
        removed, kept = [], set()
        for name in sorted(self.earlier - self.claimed):
            path = self.path / name
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    path.unlink()
                    removed.append(name)
                else:
                    kept.add(name)
            except FileNotFoundError:
                continue
        self.earlier = frozenset(self.claimed | kept)
        self._record(self.earlier)
        return removed

    def _record(self, names: Iterable[str]) -> None:
        atomic_write_json(self.path / OUTPUT_RECORD, {"format": OUTPUT_RECORD_FORMAT, "command": self.output.command,
                                                      "facetrip_version": __version__, "files": sorted(names)})


def check_output_folder(folder: str | Path, output: CommandOutput, overwrite: bool = False,
                        recognised: frozenset[str] = frozenset()) -> OutputFolder:
    """Refuse an output folder the command could lose someone's files in; reads only.

    A missing or empty folder is taken. Without ``overwrite`` any other is refused: one that
    holds the command's earlier output (say how to replace it), and one that holds other
    files. With ``overwrite`` the earlier output is replaced and other files stay, unless one
    of them has a name the command writes, or the record cannot be trusted.

    Args:
        folder: the output folder the user named (or the command's default).
        output: what the command writes.
        overwrite: the user gave ``--overwrite`` (or ``--add``).
        recognised: where the folder has no record, the names of files the caller has
            recognised by their content as the command's earlier output (an index written
            before records were kept, checked against its manifest); taken as recorded.

    Returns:
        The checked :class:`OutputFolder`, to :meth:`~OutputFolder.claim` names in.

    Raises:
        OutputFolderError: with the reason, in one line.
    """
    folder = Path(folder)
    choose = f"choose another folder with {output.option}"
    try:
        entries = {entry.name for entry in os.scandir(folder)}
    except FileNotFoundError:
        return OutputFolder(folder, output)
    except NotADirectoryError:
        raise OutputFolderError(f"{folder} is a file, not a folder: {choose}.") from None
    except OSError as error:
        raise OutputFolderError(f"{folder} cannot be read ({error.strerror or error}): {choose}.") from None
    if not entries:
        return OutputFolder(folder, output)
    earlier, distrust = read_output_record(folder, output)
    if distrust is not None:
        raise OutputFolderError(f"{folder} holds {OUTPUT_RECORD}, which {output.command} cannot trust ({distrust}): "
                                f"nothing in the folder is taken for its output; {choose}.")
    if earlier is None and recognised:
        earlier = frozenset(name for name in recognised & entries if _plain_name(name) and output.writes(name))
    trusted = earlier is not None
    earlier = earlier if trusted else frozenset()
    own = entries & earlier
    foreign = entries - earlier - ({OUTPUT_RECORD} if trusted else set())
    in_the_way = sorted(name for name in foreign if output.writes(name))
    if in_the_way:
        raise OutputFolderError(f"{folder} holds {_listed(in_the_way)}, which {output.command} did not write and would "
                                f"replace: move {'it' if len(in_the_way) == 1 else 'them'} away or {choose}.")
    if overwrite:
        return OutputFolder(folder, output, earlier)
    earlier_output = f"the output of an earlier {output.command} ({_listed(own or [OUTPUT_RECORD])})"
    if trusted and foreign:
        raise OutputFolderError(f"{folder} holds {earlier_output} and files it did not write ({_listed(foreign)}): "
                                f"{output.again} (the other files are kept), or {choose}.")
    if trusted:
        raise OutputFolderError(f"{folder} holds {earlier_output}: {output.again}, or {choose}.")
    raise OutputFolderError(f"{folder} holds files {output.command} did not write ({_listed(foreign)}): {choose}, "
                            f"or give --overwrite to write beside them (they are kept).")


def check_output_file(path: str | Path, written_by_facetrip: Callable[[Path], bool], what: str, command: str,
                      overwrite: bool = False, option: str = "--output") -> None:
    """Refuse an output file a command could replace someone's file with; reads only.

    A missing file is taken. An existing one is replaced only with ``overwrite``, and only
    when ``written_by_facetrip`` recognises its content: a file of any other content is never
    replaced, ``--overwrite`` or not.

    Args:
        path: the output file.
        written_by_facetrip: whether a plain file holds what the command writes (reads it
            as untrusted input, without following links).
        what: what the command writes, for the refusals (``"a facetrip triplets file"``).
        command: the command, for the refusals (``"facetrip mine"``).
        overwrite: the user gave ``--overwrite``.
        option: the option that names another file.

    Raises:
        OutputFolderError: with the reason, in one line.
    """
    path = Path(path)
    choose = f"choose another file with {option}"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputFolderError(f"{path} cannot be read ({error.strerror or error}): {choose}.") from None
    if stat.S_ISDIR(mode):
        raise OutputFolderError(f"{path} is a folder, not a file: {choose}.")
    if not stat.S_ISREG(mode) or not written_by_facetrip(path):
        raise OutputFolderError(f"{path} exists and is not {what}: {command} never replaces it; move it away or {choose}.")
    if not overwrite:
        raise OutputFolderError(f"{path} holds the output of an earlier {command}: give --overwrite to replace it, "
                                f"or {choose}.")
