"""Where a study's results live: a local folder, or any URI pyarrow opens (``s3://``, ``gs://``,
``file://``), so that a cluster whose nodes share no disk keeps its results in object storage.

A ``Storage`` is a place in a pyarrow filesystem. Ray Tune takes it as its ``storage_path`` and
``storage_filesystem``; the driver checks it before anything starts (``open_storage``: one line
for a scheme pyarrow cannot open, a missing bucket, one it cannot reach or write), takes the
study's lock there, and puts the report there. Credentials and endpoints come from the usual
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...), never
from the spec.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainers.io.outputs import check_writable_dir, write_atomic
from trainers.io.remote import CHUNK


class StorageError(ValueError):
    """A storage location that cannot be used (one line)."""


@dataclass(frozen=True)
class Storage:
    uri: str  # as the user would write it: an absolute local path, or scheme://bucket/prefix
    filesystem: pafs.FileSystem
    path: str  # the location inside ``filesystem``

    @property
    def local(self) -> Path | None:
        """The local folder, for a local storage (None for object storage)."""
        return Path(self.path) if isinstance(self.filesystem, pafs.LocalFileSystem) else None

    def child(self, *parts: str) -> "Storage":
        joined = "/".join(p.strip("/") for p in parts)
        return Storage(f"{self.uri.rstrip('/')}/{joined}", self.filesystem, f"{self.path.rstrip('/')}/{joined}")

    def __str__(self) -> str:
        return self.uri

    def info(self, name: str = "") -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.child(name).path if name else self.path)

    def exists(self, name: str = "") -> bool:
        return self.info(name).type != pafs.FileType.NotFound

    def is_empty(self) -> bool:
        """Nothing at or under this location."""
        if self.info().type == pafs.FileType.NotFound:
            return True
        return not self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))

    def read_text(self, name: str) -> str | None:
        if not self.exists(name):
            return None
        with self.filesystem.open_input_stream(self.child(name).path) as stream:
            return stream.read().decode()

    def write_text(self, name: str, text: str) -> None:
        """Write ``name`` whole: a local file through a temporary file and a rename; an object in one put."""
        target = self.child(name)
        if target.local is not None:
            write_atomic(target.local, text)
            return
        with self.filesystem.open_output_stream(target.path) as stream:
            stream.write(text.encode())

    def delete(self, name: str) -> None:
        if self.exists(name):
            self.filesystem.delete_file(self.child(name).path)

    def upload(self, folder: Path) -> None:
        """Copy a local folder's files here (what was there under the same names is replaced)."""
        if self.local is not None:
            shutil.copytree(folder, self.local, dirs_exist_ok=True)
            return
        pafs.copy_files(str(folder), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem, chunk_size=CHUNK)


PROBE = ".lead-study-write-probe"


def open_storage(where: str | Path) -> Storage:
    """``where`` (a local path or a URI) as a checked ``Storage``: a local folder must be writable;
    object storage must name a bucket that exists and that this machine can list and write to."""
    text = str(where)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        try:
            check_writable_dir(path)
        except ValueError as exc:
            raise StorageError(str(exc)) from None
        return Storage(str(path), pafs.LocalFileSystem(), str(path))
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"{text}: not a storage URI pyarrow can open ({str(exc).splitlines()[0]})") from None
    storage = Storage(text.rstrip("/"), filesystem, path.rstrip("/"))
    if isinstance(filesystem, pafs.LocalFileSystem):  # file:///...
        return open_storage(path)
    bucket = path.split("/", 1)[0]
    try:
        if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"{text}: the bucket '{bucket}' does not exist (create it first)")
        storage.write_text(PROBE, "lead-study checks it can write here\n")
        storage.delete(PROBE)
    except OSError as exc:
        raise StorageError(f"{text}: cannot use it from this machine ({str(exc).splitlines()[0]})") from None
    return storage
