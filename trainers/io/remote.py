"""Folders in object storage (any URI pyarrow opens: ``s3://``, ``gs://``, ``file://``), downloaded
once into a local cache: a base model given as ``model.path: s3://bucket/models/qwen``, or one a
study shipped to its nodes. Credentials and endpoints come from the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pyarrow.fs as pafs

from trainers.io.outputs import file_lock

CHUNK = 64 * 2**20  # bytes per read in a copy: one ranged request each (pyarrow's default 1 MiB made ~1,000 per GiB)
COMPLETE = ".complete"  # the last object an upload writes: a folder without it is not used, nor copied along


def is_uri(path) -> bool:
    return "://" in str(path)


def download_once(filesystem: pafs.FileSystem, source: str, target: Path) -> float | None:
    """The files under ``source`` (a location in ``filesystem``) into the local folder ``target``,
    unless it exists: under a lock (trials starting together on one node download once), through a
    temporary folder and a rename (never half a model). The seconds it took (None: none needed)."""
    with file_lock(target.with_name(f".{target.name}.lock")):
        if target.exists():
            return None
        start = time.perf_counter()
        tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pafs.copy_files(source, str(tmp), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem(),
                        chunk_size=CHUNK)
        (tmp / COMPLETE).unlink(missing_ok=True)
        os.rename(tmp, target)
        return time.perf_counter() - start


def cached_model(uri: str, cache_dir: Path, log) -> Path:
    """The model folder at ``uri``, downloaded once into ``cache_dir/remote/`` (a folder named by
    the URI's hash) and used from there."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(f"{path.rstrip('/')}/config.json").type != pafs.FileType.File:
            raise ValueError(f"{uri} is not a model directory (no config.json)")
    except (OSError, ValueError) as exc:
        raise ValueError(f"model.path: {str(exc).splitlines()[0]}") from None
    target = Path(cache_dir) / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    seconds = download_once(filesystem, path, target)
    if seconds is not None:
        log(f"model {uri} downloaded to {target} in {seconds:.2f} s")
    return target
