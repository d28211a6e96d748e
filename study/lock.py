"""One driver per study: a study holds an exclusive lock on its output folder and on its SQLite
store (``fcntl.flock``, released by the kernel when the driver exits, however it exits) for its
whole run, so a second driver of the same study fails at once instead of adding duplicate trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class StudyLocked(ValueError):
    """Another driver holds the study (one line)."""


def lock_files(study: str, output_dir: Path, tracking_uri: str) -> list[Path]:
    """The study's lock files: beside its Ray results, and beside a SQLite store."""
    files = [output_dir / f".{study}.lock"]
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        files.append(db.with_name(f".{db.name}.{study}.lock"))
    return files


@contextlib.contextmanager
def study_lock(study: str, output_dir: Path, tracking_uri: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for path in lock_files(study, output_dir, tracking_uri):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = stack.enter_context(open(path, "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StudyLocked(f"study '{study}' is already running ({holder} holds {path}); "
                                  "wait for it to finish, or use another --output-dir / study name") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
            handle.flush()
        yield
