"""File and folder names as text that any UTF-8 sink (tfds, a terminal, a file) can hold."""

from __future__ import annotations

import os


def utf8_name(name: str) -> str:
    """A file or folder name as valid UTF-8 text: the same name when it already is.

    Python reads the bytes of a name that is not UTF-8 as lone surrogates (``b"\\xff"`` as
    ``"\\udcff"``), which no UTF-8 text (a tfds text feature, a terminal, a file) can hold;
    they are written as ``\\xHH`` instead.

    Args:
        name: a name or path as ``os.listdir`` / ``pathlib`` give it.

    Returns:
        The name, with each byte that is not UTF-8 written as ``\\xHH``.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")
