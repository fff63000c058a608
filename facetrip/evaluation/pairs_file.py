"""The pairs `facetrip evaluate --pairs` reads: an LFW pairs file, or a split folder of CFP's protocol.

- LFW's ``pairs.txt`` / ``pairsDevTrain.txt`` format: :func:`parse_lfw_pairs` turns a
  file's text into :class:`NamedPairs` (identity names and 1-based image numbers, with the
  file's folds).
- CFP's protocol (Celebrities in Frontal-Profile, Sengupta et al., WACV 2016):
  :func:`read_cfp_split` reads a split folder (``Protocol/Split/FF`` or ``.../FP``) as
  :class:`PathPairs`, photos named by their path inside the data folder.

:func:`read_pairs` reads either, as the path says. Input that is not in its format raises
:class:`PairsFileError` with one line naming the file and the line. Which images the
names, numbers and paths are is for the evaluation report to find
(``facetrip.evaluation.report``).

Pure NumPy; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from facetrip.untrusted_files import UntrustedFileError, read_untrusted_text

# LFW's pairs.txt takes 140 kB; a pairs file of 10^6 pairs some 50 MB.
PAIRS_FILE_SIZE_LIMIT = 256 << 20


class PairsFileError(ValueError):
    """A pairs file that is not in the LFW pairs.txt format, or names images that do not exist."""


# Fields are separated by tabs (pairs.txt) or spaces (pairsDevTrain.txt), and only by those:
# str.split() would also cut a name at \v, \f, \x1c-\x1f, \x85, \u2028 and other Unicode spaces.
_PAIRS_FIELD_SEPARATOR = re.compile(r"[ \t]+")
# ASCII digits only: int() would also take '+1', '1_000' and the digits of other scripts.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
# Image numbers are kept as int64; a larger one cannot be stored (nor name an image).
_LARGEST_IMAGE_NUMBER = int(np.iinfo(np.int64).max)


def _pairs_file_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """The fields of each non-blank line of a pairs file, with its 1-based line number.

    Lines end at '\\n' only (a '\\r' before it, from Windows, is dropped): str.splitlines()
    would also end them at \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029, shifting every line
    number after one and cutting a line that holds such a character in two.

    Args:
        text: the file's content.

    Returns:
        ``(line number, fields)`` of each line holding more than spaces and tabs, one at a
        time: a file of millions of short lines is refused at the first line too many, not
        held whole as fields.
    """
    start = 0
    for number in itertools.count(1):
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        fields = _PAIRS_FIELD_SEPARATOR.split(line.removesuffix("\r").strip(" \t"))
        if fields != [""]:
            yield number, fields
        if end < 0:
            return
        start = end + 1


def _whole_number(field: str) -> int | None:
    """``field`` as an int if it is written in ASCII digits only, else None.

    Args:
        field: one field of a pairs file line.

    Returns:
        The number (``_LARGEST_IMAGE_NUMBER + 1`` for one of more digits than any int64
        has: Python refuses to convert a string of over 4,300 digits), or None.
    """
    if not _WHOLE_NUMBER.fullmatch(field):
        return None
    digits = field.lstrip("0")
    return _LARGEST_IMAGE_NUMBER + 1 if len(digits) > len(str(_LARGEST_IMAGE_NUMBER)) else int(field)


def _shortened(text: str, most: int = 60) -> str:
    """``text``, cut to its first ``most`` characters and "..." when longer (for error messages)."""
    return text if len(text) <= most else text[:most] + "..."


@dataclasses.dataclass
class NamedPairs:
    """Pairs of a file in the LFW format, by identity name and 1-based image number.

    Attributes:
        first_names, second_names: (M,) identity names.
        first_numbers, second_numbers: (M,) 1-based image numbers (``name/name_%04d.jpg``).
        same: (M,) bool.
        folds: (M,) int64 fold of each pair, or None when the file has no folds.
        line_numbers: (M,) the 1-based line of each pair in the file (for error messages).
    """

    first_names: list[str]
    first_numbers: np.ndarray
    second_names: list[str]
    second_numbers: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None
    line_numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.same)


def parse_lfw_pairs(text: str, source: str = "pairs file") -> NamedPairs:
    """Parse LFW pairs in either header style.

    - ``N`` (pairsDevTrain.txt / pairsDevTest.txt): N matched lines, then N mismatched.
    - ``FOLDS N`` (pairs.txt): FOLDS sets, each of N matched lines then N mismatched.

    A matched line is ``name i j`` (two images of one person), a mismatched line
    ``name1 i name2 j``; image numbers are 1-based. Fields are separated by tabs or
    spaces, lines by '\\n' or '\\r\\n'; blank lines are ignored.

    Args:
        text: the file's content.
        source: the file's name, for error messages.

    Returns:
        :class:`NamedPairs` in file order (folds None for the ``N`` header).

    Raises:
        PairsFileError: one line naming the file, the line number and what was expected.
    """
    lines = _pairs_file_lines(text)
    first = next(lines, None)
    if first is None:
        raise PairsFileError(f"{source} is empty: expected the LFW pairs format (a first line 'N' or 'FOLDS N').")
    header_line, header = first
    counts = [_whole_number(field) for field in header]
    if len(counts) not in (1, 2) or None in counts or min(counts) < 1:
        raise PairsFileError(
            f"{source} line {header_line}: expected a header 'N' or 'FOLDS N' (LFW pairs format), got {' '.join(header)!r}."
        )
    num_folds, per_fold = (1, counts[0]) if len(counts) == 1 else counts
    expected_lines = num_folds * 2 * per_fold
    first_names, first_numbers, second_names, second_numbers, same, folds, line_numbers = [], [], [], [], [], [], []
    # Each line is checked as it is read, and no more lines than the header announces are read:
    # a file of millions of short lines fails at its first bad or surplus line.
    for position, (line_number, fields) in enumerate(itertools.islice(lines, expected_lines)):
        matched = (position // per_fold) % 2 == 0
        expected = "'name i j' (a matched pair)" if matched else "'name1 i name2 j' (a mismatched pair)"
        if len(fields) != (3 if matched else 4):
            raise PairsFileError(f"{source} line {line_number}: expected {expected}, got {' '.join(fields)!r}.")
        names = (fields[0], fields[0]) if matched else (fields[0], fields[2])
        number_fields = (fields[1], fields[2]) if matched else (fields[1], fields[3])
        numbers = [_whole_number(field) for field in number_fields]
        if None in numbers or min(numbers) < 1:
            raise PairsFileError(
                f"{source} line {line_number}: image numbers must be whole numbers >= 1 (1-based), got {' '.join(fields)!r}."
            )
        if max(numbers) > _LARGEST_IMAGE_NUMBER:
            too_large = next(field for field, number in zip(number_fields, numbers) if number > _LARGEST_IMAGE_NUMBER)
            raise PairsFileError(
                f"{source} line {line_number}: image number {_shortened(too_large)} is too large (at most "
                f"{_LARGEST_IMAGE_NUMBER:,}), got {_shortened(' '.join(fields))!r}."
            )
        first_names.append(names[0])
        second_names.append(names[1])
        first_numbers.append(numbers[0])
        second_numbers.append(numbers[1])
        same.append(matched)
        folds.append(position // (2 * per_fold))
        line_numbers.append(line_number)
    if len(same) != expected_lines or next(lines, None) is not None:
        found = f"{len(same):,}" if len(same) != expected_lines else "more"
        raise PairsFileError(
            f"{source}: the header {' '.join(header)!r} announces {expected_lines:,} pair lines but the file has {found}."
        )
    return NamedPairs(
        first_names, np.asarray(first_numbers, np.int64), second_names, np.asarray(second_numbers, np.int64),
        np.asarray(same, bool), np.asarray(folds, np.int64) if len(counts) == 2 else None,
        np.asarray(line_numbers, np.int64),
    )


def read_lfw_pairs(path: str | Path) -> NamedPairs:
    """:func:`parse_lfw_pairs` of a UTF-8 file (a leading byte-order mark is allowed).

    The bytes are decoded as they are: reading in text mode would also turn a lone '\\r'
    into a line end, which the format does not have.

    Args:
        path: the pairs file.

    Returns:
        :class:`NamedPairs`.

    Raises:
        PairsFileError: the file cannot be read, is not UTF-8 text, or is not in the format.
    """
    path = Path(path)
    try:
        text = read_untrusted_text(path, PAIRS_FILE_SIZE_LIMIT, "pairs file")
    except UntrustedFileError as error:
        raise PairsFileError(f"Cannot read the pairs file: {error}.") from None
    return parse_lfw_pairs(text, str(path))


# ----------------------------------------------------------------------------- CFP's protocol

# CFP's protocol folder: Pair_list_F.txt and Pair_list_P.txt number the frontal and the profile
# photos; Split/FF and Split/FP each hold the folds 01 .. 10, each fold a same.txt and a diff.txt.
CFP_PHOTO_LISTS = {"F": "Pair_list_F.txt", "P": "Pair_list_P.txt"}
CFP_SPLITS = {"FF": ("F", "F", "frontal with frontal"), "FP": ("F", "P", "frontal with profile")}
CFP_FOLDS = tuple(f"{fold:02d}" for fold in range(1, 11))
CFP_FOLD_FILES = {"same.txt": True, "diff.txt": False}
# CFP's photo lists take 200 kB and its fold files 3.5 kB each.
CFP_FILE_SIZE_LIMIT = 16 << 20
# A listed photo's path ends in identity/kind/photo (../Data/Images/001/frontal/01.jpg): its last
# three parts are the identity's folder and the photo's path inside it, the name the data source gives it.
_CFP_PATH_PARTS = 3
# A fold file's line: two 1-based indices, a comma between them.
_CFP_PAIR = re.compile(r"([0-9]+) ?, ?([0-9]+)")


@dataclasses.dataclass
class PathPairs:
    """Pairs of photos named by their path inside the data folder (CFP's protocol).

    Attributes:
        first_paths, second_paths: (M,) '/'-separated paths inside the data folder, the
            identity's folder first (``001/frontal/01.jpg``).
        first_names, second_names: (M,) identity names, each path's first folder.
        same: (M,) bool.
        folds: (M,) int64 fold of each pair (0 for the protocol's fold 01, ...).
        listed_at: ``{path: "LIST FILE line N"}``, where each photo of the pairs is listed.
        protocol: what the pairs are (``CFP-FP, frontal with profile``).
    """

    first_paths: list[str]
    second_paths: list[str]
    first_names: list[str]
    second_names: list[str]
    same: np.ndarray
    folds: np.ndarray
    listed_at: dict[str, str]
    protocol: str

    def __len__(self) -> int:
        return len(self.same)

    def photo_indices(self, file_names, source: str) -> tuple[np.ndarray, np.ndarray]:
        """The pairs as indices into a data source's photos, matched by path.

        Only the protocol's photos are held while the source's names are read, one at a time.

        Args:
            file_names: (N,) each photo's path inside the source (``001/frontal/01.jpg`` in
                ``folder:.../cfp/Data/Images``).
            source: the source's name, for error messages.

        Returns:
            ``(first, second)``: (M,) int64 indices into ``file_names``.

        Raises:
            PairsFileError: a photo of the pairs is not in the source (names the list file
                and its line).
        """
        index_of = dict.fromkeys((*self.first_paths, *self.second_paths), -1)
        example = None
        for index, file_name in enumerate(file_names):
            name = str(file_name)
            example = example or name
            if index_of.get(name) == -1:
                index_of[name] = index
        missing = next((path for path, index in index_of.items() if index < 0), None)
        if missing is not None:
            named_like = f"its photos are named like {example}" if example else "it has no photos"
            raise PairsFileError(
                f"{self.listed_at[missing]}: {missing} is not in {source} ({named_like}): evaluate on the folder "
                f"of CFP's photos (--data folder:.../cfp/Data/Images)."
            )
        first = np.fromiter((index_of[path] for path in self.first_paths), np.int64, len(self))
        second = np.fromiter((index_of[path] for path in self.second_paths), np.int64, len(self))
        return first, second


def _read_protocol_file(path: Path, what: str) -> str:
    """A file of CFP's protocol as text, read as untrusted (size-capped, UTF-8).

    Raises:
        PairsFileError: the file is missing, too large or not UTF-8 text.
    """
    try:
        return read_untrusted_text(path, CFP_FILE_SIZE_LIMIT, what)
    except UntrustedFileError as error:
        raise PairsFileError(f"Cannot read CFP's {what}: {error}.") from None


def parse_cfp_photo_list(text: str, source: str = "photo list") -> tuple[list[str], list[int]]:
    """Parse one of CFP's photo lists (``Pair_list_F.txt``): lines ``N path``, N = 1, 2, 3, ...

    Args:
        text: the file's content.
        source: the file's name, for error messages.

    Returns:
        ``(paths, line numbers)``: photo N's path inside the data folder (its last three
        parts, ``001/frontal/01.jpg``) at ``paths[N - 1]``, and the line that lists it.

    Raises:
        PairsFileError: a line is not ``N path``, N is not the next number, or the path has
            fewer than three parts; names the line.
    """
    paths, line_numbers = [], []
    for line_number, fields in _pairs_file_lines(text):
        expected = len(paths) + 1
        if len(fields) != 2 or _whole_number(fields[0]) != expected:
            raise PairsFileError(
                f"{source} line {line_number}: expected '{expected} PATH' (photo {expected} of the list and its "
                f"path), got {_shortened(' '.join(fields))!r}."
            )
        parts = [part for part in fields[1].split("/") if part not in ("", ".")]
        if len(parts) < _CFP_PATH_PARTS or ".." in parts[-_CFP_PATH_PARTS:]:
            raise PairsFileError(
                f"{source} line {line_number}: expected a path ending in IDENTITY/KIND/PHOTO (like "
                f"../Data/Images/001/frontal/01.jpg), got {_shortened(fields[1])!r}."
            )
        paths.append("/".join(parts[-_CFP_PATH_PARTS:]))
        line_numbers.append(line_number)
    if not paths:
        raise PairsFileError(f"{source} lists no photos: expected lines 'N PATH' (CFP's protocol).")
    return paths, line_numbers


def parse_cfp_fold_file(text: str, first_count: int, second_count: int,
                        source: str = "fold file") -> tuple[np.ndarray, np.ndarray]:
    """Parse one of CFP's fold files (``same.txt`` / ``diff.txt``): lines ``i,j``, 1-based photo numbers.

    Args:
        text: the file's content.
        first_count, second_count: how many photos the lists that i and j number hold.
        source: the file's name, for error messages.

    Returns:
        ``(indices, line numbers)``: (K, 2) int64 0-based indices into the two lists, and
        (K,) the line of each pair.

    Raises:
        PairsFileError: a line that is not ``i,j``, or a number out of its list's range;
            names the line.
    """
    indices, line_numbers = [], []
    for line_number, fields in _pairs_file_lines(text):
        matched = _CFP_PAIR.fullmatch(" ".join(fields))
        if matched is None:
            raise PairsFileError(
                f"{source} line {line_number}: expected 'i,j' (two photo numbers), "
                f"got {_shortened(' '.join(fields))!r}."
            )
        pair = [_whole_number(number) for number in matched.groups()]
        for column, (number, count) in enumerate(zip(pair, (first_count, second_count))):
            if not 1 <= number <= count:
                raise PairsFileError(
                    f"{source} line {line_number}: photo number {_shortened(matched.group(column + 1))} is out of "
                    f"range: the {('first', 'second')[column]} list numbers 1 to {count:,}."
                )
        indices.append((pair[0] - 1, pair[1] - 1))
        line_numbers.append(line_number)
    return np.asarray(indices, np.int64).reshape(-1, 2), np.asarray(line_numbers, np.int64)


def read_cfp_split(folder: str | Path) -> PathPairs:
    """Read a split folder of CFP's protocol (``Protocol/Split/FF`` or ``Protocol/Split/FP``).

    The folder holds the folds ``01`` .. ``10``, each a ``same.txt`` and a ``diff.txt`` of lines
    ``i,j``; the photo lists ``Pair_list_F.txt`` and ``Pair_list_P.txt`` lie two folders up (in
    ``Protocol``). ``FF`` pairs frontal photo i with frontal photo j, ``FP`` frontal photo i
    with profile photo j: the folder's name says which. Pairs come fold by fold, each fold's
    same pairs then its different pairs.

    Args:
        folder: the split folder.

    Returns:
        :class:`PathPairs`, folds 0 .. 9.

    Raises:
        PairsFileError: one line naming the folder, or the file and its line: a folder that
            is not FF or FP or lacks a fold, a missing or unreadable file, a line that is not
            in its format, an index out of range, a same pair of two people or a different
            pair of one.
    """
    folder = Path(folder)
    split = CFP_SPLITS.get(folder.resolve().name.upper())
    if split is None:
        inside = sorted(name for name in CFP_SPLITS if (folder / name).is_dir())
        hint = f": choose {' or '.join(str(folder / name) for name in inside)}" if inside else ""
        raise PairsFileError(
            f"{folder} is a folder but not a split of CFP's protocol (Protocol/Split/FF or Protocol/Split/FP){hint}; "
            f"--pairs takes an LFW pairs file or such a split folder."
        )
    missing = [fold for fold in CFP_FOLDS if not all((folder / fold / name).is_file() for name in CFP_FOLD_FILES)]
    if missing:
        raise PairsFileError(
            f"{folder} lacks the fold{'s' if len(missing) > 1 else ''} {', '.join(missing)}: a split of CFP's protocol "
            f"holds the folders {CFP_FOLDS[0]} .. {CFP_FOLDS[-1]}, each with {' and '.join(CFP_FOLD_FILES)}."
        )
    first_list, second_list, description = split
    protocol_folder = folder.resolve().parents[1]
    lists = {}
    for kind in dict.fromkeys((first_list, second_list)):
        path = protocol_folder / CFP_PHOTO_LISTS[kind]
        paths, line_numbers = parse_cfp_photo_list(_read_protocol_file(path, "photo list"), str(path))
        lists[kind] = (path, paths, line_numbers)
    first_path, first_paths, first_lines = lists[first_list]
    second_path, second_paths, second_lines = lists[second_list]
    pair_first, pair_second, same, folds, listed_at = [], [], [], [], {}
    for fold, fold_name in enumerate(CFP_FOLDS):
        for file_name, is_same in CFP_FOLD_FILES.items():
            path = folder / fold_name / file_name
            indices, line_numbers = parse_cfp_fold_file(_read_protocol_file(path, "fold file"), len(first_paths),
                                                        len(second_paths), str(path))
            for line_number, (i, j) in zip(line_numbers.tolist(), indices.tolist()):
                photos = first_paths[i], second_paths[j]
                people = [photo.split("/", 1)[0] for photo in photos]
                if (people[0] == people[1]) != is_same:
                    raise PairsFileError(
                        f"{path} line {line_number}: {file_name} pairs {photos[0]} with {photos[1]}, "
                        f"{'two people' if is_same else 'one person'}: "
                        f"{'a same pair must show one person' if is_same else 'a different pair must show two people'}."
                    )
                listed_at.setdefault(photos[0], f"{first_path} line {first_lines[i]}")
                listed_at.setdefault(photos[1], f"{second_path} line {second_lines[j]}")
                pair_first.append(photos[0])
                pair_second.append(photos[1])
                same.append(is_same)
                folds.append(fold)
    return PathPairs(
        pair_first, pair_second, [path.split("/", 1)[0] for path in pair_first],
        [path.split("/", 1)[0] for path in pair_second], np.asarray(same, bool), np.asarray(folds, np.int64),
        listed_at, f"CFP-{folder.resolve().name.upper()}, {description}",
    )


def read_pairs(path: str | Path) -> NamedPairs | PathPairs:
    """The pairs ``--pairs`` names: a CFP split folder (:func:`read_cfp_split`), else an LFW pairs file.

    Args:
        path: a split folder of CFP's protocol, or an LFW-format pairs file.

    Returns:
        :class:`PathPairs` for a folder, :class:`NamedPairs` for a file.

    Raises:
        PairsFileError: one line saying what is wrong, naming the file and the line.
    """
    return read_cfp_split(path) if Path(path).is_dir() else read_lfw_pairs(path)
