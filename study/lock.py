"""One driver per study: a study holds an exclusive lock on its output folder and on its SQLite
store (``fcntl.flock``, released by the kernel when the driver exits, however it exits) for its
whole run, so a second driver of the same study fails at once instead of adding duplicate trials.

Object storage has no such lock. There the lock is an object, ``.STUDY.lock`` beside the study's
prefix, naming the driver (process, host); a driver that finds one refuses to start, unless it
names a process of this host that no longer runs (a crashed driver's: taken over). The driver
deletes it when it ends. Two drivers started within the same moment can both miss each other's
object (a bucket offers no atomic create here); a driver killed on another host leaves its
object behind: delete it by hand once that driver is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from study.storage import Storage


class StudyLocked(ValueError):
    """Another driver holds the study (one line)."""


def lock_files(study: str, output: Storage, tracking_uri: str) -> list[Path]:
    """The study's lock files: beside its Ray results (a local output), and beside a SQLite store."""
    files = [output.local / f".{study}.lock"] if output.local is not None else []
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        files.append(db.with_name(f".{db.name}.{study}.lock"))
    return files


def holder() -> str:
    return f"pid {os.getpid()} on {os.uname().nodename}"


def stale(text: str) -> bool:
    """Whether a lock object names a process of this host that no longer runs."""
    parts = text.split()
    if len(parts) != 4 or parts[0] != "pid" or parts[2] != "on" or parts[3] != os.uname().nodename:
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


@contextlib.contextmanager
def object_lock(study: str, output: Storage) -> Iterator[None]:
    """The lock object of a study in object storage (see the module docstring)."""
    name = f".{study}.lock"
    found = output.read_text(name)
    if found is not None and not stale(found.strip()):
        raise StudyLocked(f"study '{study}' is already running ({found.strip()} holds {output.child(name)}); "
                          "wait for it to finish, or delete that object if its driver is gone")
    output.write_text(name, holder())
    try:
        yield
    finally:
        if (output.read_text(name) or "").strip() == holder():
            output.delete(name)


@contextlib.contextmanager
def study_lock(study: str, output: Storage, tracking_uri: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if output.local is None:
            stack.enter_context(object_lock(study, output))
        for path in lock_files(study, output, tracking_uri):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = stack.enter_context(open(path, "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                found = handle.read().strip() or "another process"
                raise StudyLocked(f"study '{study}' is already running ({found} holds {path}); "
                                  "wait for it to finish, or use another --output-dir / study name") from None
            handle.seek(0)
            handle.truncate()
            handle.write(holder())
            handle.flush()
        yield
