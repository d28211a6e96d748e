"""What every settings model shares: the strict base model (unknown keys are errors, settings never
change once validated), and whether validation checks that the files a config names exist.

Files are checked by default. ``with files_unchecked():`` validates everything else only, for a
config meant for another machine (``python -m study.run SPEC --dry-run`` on a laptop for a GPU
node's model and data); the block yields the list of paths that were not looked at.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def omit_empty(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A dump without the optional ``keys`` that are empty, so a config written before they
    existed keeps its hash (for a ``model_serializer(mode="wrap")``)."""
    for key in keys:
        if key in data and not data[key]:
            del data[key]
    return data


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
