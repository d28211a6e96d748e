"""Output folders this project writes: checked before anything starts, created private, marked,
and replaced or cleared only when they carry this project's marker.

A run folder (``trainers.train``), a study's Ray results folder and a report folder each hold
``MARKER``, a small JSON file naming what made them. ``--out .`` or ``--out ~`` can never delete a
folder this project did not make. Folders are created with mode 0700: checkpoints are loaded with
``torch.load(weights_only=True)``, but a private folder keeps others from planting files at all.
Files are written whole or not at all (``write_atomic``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MARKER = ".lead-study"


def check_writable_dir(path: Path) -> None:
    """Raise ValueError unless ``path`` is (or can be made) a folder we can write in: a file is
    really created in its nearest existing folder (``/proc`` and ``/sys`` pass ``os.access``)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise ValueError(f"cannot write in {existing} ({exc.strerror or exc})") from None


def owner(path: Path) -> str | None:
    """What made ``path`` ("run", "report", "study"), or None when it carries no marker."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def is_empty(path: Path) -> bool:
    return not Path(path).exists() or not any(Path(path).iterdir())


def make_private_dir(path: Path, kind: str) -> Path:
    """Create ``path`` (mode 0700, parents as usual) and mark it as ``kind``; an existing folder
    must be empty or already carry that marker."""
    path = Path(path)
    if not is_empty(path) and owner(path) != kind:
        raise ValueError(f"{path} is not empty and is not a {kind} folder of lead-study (no {MARKER} marker)")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (path / MARKER).exists():
        os.chmod(path, 0o700)
        (path / MARKER).write_text(json.dumps({"kind": kind, "made_by": "lead-study"}) + "\n")
    return path


def clear_owned(path: Path, kind: str) -> None:
    """Delete everything in ``path`` but its marker; refuses a folder that is not ``kind``'s."""
    if owner(path) != kind:
        raise ValueError(f"refusing to clear {path}: it is not a {kind} folder of lead-study (no {MARKER} marker)")
    for child in Path(path).iterdir():
        if child.name != MARKER:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def check_replaceable(target: Path, kind: str) -> None:
    """Raise ValueError unless ``target`` is missing, empty or carries ``kind``'s marker."""
    if target.exists() and not is_empty(target) and owner(target) != kind:
        raise ValueError(f"{target} exists and is not a {kind} folder of lead-study (no {MARKER} marker); "
                         "refusing to replace it")


def replace_owned(built: Path, target: Path, kind: str) -> None:
    """Put the finished folder ``built`` (a sibling of ``target``) at ``target``, replacing an
    earlier one only if ``check_replaceable`` allows it."""
    check_replaceable(target, kind)
    (built / MARKER).write_text(json.dumps({"kind": kind, "made_by": "lead-study"}) + "\n")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on the file ``path`` (made if missing) for the block: one process at
    a time, across processes on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_atomic(path: Path, content: str | pa.Table) -> Path:
    """Write ``content`` (text, or a table as Parquet) to a temporary file beside ``path``, then
    rename it over ``path``: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        pass
    try:
        if isinstance(content, pa.Table):
            pq.write_table(content, tmp.name)
        else:
            Path(tmp.name).write_text(content)
        Path(tmp.name).replace(path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return path
