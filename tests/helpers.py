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
