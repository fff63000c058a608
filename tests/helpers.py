"""Helpers several test modules share: where the benchmark data lives, and facetrip's rule for bad input."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The read-only benchmark sets (LFW, Yale B, CFP) beside the repository; tests that need one
# skip with a reason when it is absent.
SHARED_DATA = Path(os.environ.get("FACETRIP_SHARED_DATA") or REPO.parent / "shared" / "data")


def one_line_error(result, *fragments: str) -> str:
    """Assert a CLI call failed as facetrip's rule says: exit 2, one ``Error:`` line on stderr, no traceback.

    Args:
        result: what :func:`conftest.run_cli` returned (Typer's test runner).
        fragments: texts the line must contain (white space folded).

    Returns:
        The line.
    """
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert " ".join(fragment.split()) in " ".join(lines[0].split()), (fragment, lines[0])
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) -> its kind and, for a plain file, the SHA-256 of its bytes.

    Two digests are equal only when no file was added, removed, replaced or changed byte for byte.
    """
    import hashlib
    import stat

    digest = {}
    for path in sorted(Path(root).rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            digest[str(path.relative_to(root))] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(mode):
            digest[str(path.relative_to(root))] = "link " + os.readlink(path)
        else:
            digest[str(path.relative_to(root))] = "folder" if stat.S_ISDIR(mode) else "other"
    return digest
