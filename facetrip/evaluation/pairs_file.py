"""LFW pairs files: the ``pairs.txt`` / ``pairsDevTrain.txt`` format, parsed and read.

:func:`parse_lfw_pairs` turns a file's text into :class:`NamedPairs` (identity names and
1-based image numbers, with the file's folds); a file that is not in the format raises
:class:`PairsFileError` with one line naming the file and the line. Which images the
names and numbers are is for the evaluation report to find (``facetrip.evaluation.report``).

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
        The number, or None.
    """
    return int(field) if _WHOLE_NUMBER.fullmatch(field) else None


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
            raise PairsFileError(
                f"{source} line {line_number}: image number {max(numbers)} is too large (at most "
                f"{_LARGEST_IMAGE_NUMBER:,}), got {' '.join(fields)!r}."
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
