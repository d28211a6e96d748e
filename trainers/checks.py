"""Whether validating a config checks that the files it names exist.

They are checked by default. ``with files_unchecked():`` validates everything else only, for a
config meant for another machine (``python -m study.run SPEC --dry-run`` on a laptop for a GPU
node's model and data); ``unchecked_paths()`` then lists what was not looked at.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

_checking: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("unchecked_paths", default=None)


@contextlib.contextmanager
def files_unchecked() -> Iterator[list[Path]]:
    """Within the block, ``must_exist`` lets missing paths through and collects them in the yielded list."""
    skipped: list[Path] = []
    token = _checking.set(skipped)
    try:
        yield skipped
    finally:
        _checking.reset(token)


def must_exist(path: Path, what: str) -> None:
    """Raise ValueError(``what``) when ``path`` is missing, unless inside ``files_unchecked()``."""
    if path.exists():
        return
    skipped = _checking.get()
    if skipped is None:
        raise ValueError(what)
    if path not in skipped:
        skipped.append(path)
