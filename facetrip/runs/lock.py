"""The run directory's lock: one process trains into a run at a time."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from facetrip.runs.layout import LOCK_FILE, RunError


# Run directories locked by this process: resolved path -> [lock file descriptor, nesting depth].
_held_run_locks: dict[str, list[int]] = {}

@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock, so that no second process trains into it at the same time.

    The lock is ``fcntl.flock`` on ``LOCK_FILE`` in the run directory. The kernel releases
    it when the holding process exits, however it ends, so a lock file left behind by a
    killed process never blocks the next one; the file itself is kept (deleting it would
    let two processes lock two different files of the same name). Re-entrant within one
    process, so that the CLI can hold it across training and evaluation while
    :func:`facetrip.training.train` takes it too.

    Args:
        run_dir: an existing run directory.

    Raises:
        RunError: another process holds the lock, or the lock file cannot be opened.
    """
    import fcntl

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held_run_locks:
        _held_run_locks[key][1] += 1
        try:
            yield
        finally:
            _held_run_locks[key][1] -= 1
        return
    path = run_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        raise RunError(f"Cannot lock {run_dir}: {error.strerror} ({path}).") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip()
        os.close(descriptor)
        raise RunError(
            f"{run_dir} is in use by another facetrip process{f' (pid {holder})' if holder.isdigit() else ''}: "
            f"wait for it to finish, or train into another --run-dir."
        ) from None
    # Who holds it, for the message above; written after locking, so only the holder writes.
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held_run_locks[key] = [descriptor, 1]
    try:
        yield
    finally:
        del _held_run_locks[key]
        os.close(descriptor)  # releases the lock
