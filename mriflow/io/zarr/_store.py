"""Where a store lives: local paths, fsspec URLs, zarr store objects; progress markers.

A write is resumable because every region of every array gets a small completion marker
under ``<group>/.mriflow-progress/<level>/`` once all of its chunks are stored. A resume
trusts those markers only, and first removes the ``*.partial`` files a killed writer leaves
behind (zarr's local store writes each chunk to ``<chunk>.<uuid>.partial`` and renames it).
"""

from __future__ import annotations

import errno
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mriflow.errors import StoreWriteError

__all__ = ["StoreLocation", "is_url", "resolve_store", "sanitize_location", "write_error"]

PROGRESS_DIR = ".mriflow-progress"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_url(location: Any) -> bool:
    """Whether ``location`` is an fsspec URL such as ``memory://x.zarr`` or ``s3://b/x.zarr``."""
    return isinstance(location, str) and bool(_URL.match(location))


def sanitize_location(location: str) -> str:
    """``location`` without credentials: user, password, query string and fragment dropped."""
    if not is_url(location):
        return location
    parts = urllib.parse.urlsplit(location)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class StoreLocation:
    """A resolved store: the zarr store, a filesystem view of it, and a printable name."""

    name: str
    store: Any
    fs: Any
    root: str
    local: bool

    def path(self, *parts: str) -> str:
        """Filesystem path of ``parts`` inside the store."""
        pieces = [self.root.rstrip("/"), *(p.strip("/") for p in parts if p)]
        return "/".join(pieces)

    # --- progress markers ---------------------------------------------------------------

    def done_regions(self, group: str, level: int) -> set[int]:
        """Regions of array ``level`` in ``group`` whose completion marker exists."""
        directory = self.path(group, PROGRESS_DIR, str(level))
        try:
            names = self.fs.ls(directory, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        done = set()
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".done") and base[:-5].isdigit():
                done.add(int(base[:-5]))
        return done

    def mark_done(self, group: str, level: int, regions: list[int]) -> None:
        """Write the completion markers of ``regions`` (after their chunks are stored)."""
        directory = self.path(group, PROGRESS_DIR, str(level))
        self.fs.makedirs(directory, exist_ok=True)
        for region in regions:
            target = f"{directory}/{region}.done"
            if self.local:
                staging = target + ".partial"
                Path(staging).write_bytes(b"done\n")
                os.replace(staging, target)
            else:
                self.fs.pipe_file(target, b"done\n")

    def clear_progress(self, group: str) -> None:
        """Drop the markers of ``group`` once it is complete."""
        directory = self.path(group, PROGRESS_DIR)
        if self.fs.exists(directory):
            self.fs.rm(directory, recursive=True)

    def remove_partials(self, group: str) -> list[str]:
        """Remove orphaned ``*.partial`` files under ``group``; returns what was removed."""
        top = self.path(group)
        removed = []
        if self.local:
            for folder, _, files in os.walk(top):
                for name in files:
                    if name.endswith(".partial"):
                        path = os.path.join(folder, name)
                        Path(path).unlink(missing_ok=True)
                        removed.append(path)
            return removed
        try:
            found = self.fs.find(top)
        except FileNotFoundError:
            return removed
        for path in found:
            if path.endswith(".partial"):
                self.fs.rm_file(path)
                removed.append(path)
        return removed


def resolve_store(
    location: Any, *, storage_options: dict[str, Any] | None = None, read_only: bool = False
) -> StoreLocation:
    """Resolve a path, ``file://`` or other fsspec URL, or zarr store into a location.

    ``storage_options`` (credentials, endpoints) go to fsspec only; they are never written
    into the store.
    """
    import fsspec
    import zarr.storage

    if isinstance(location, zarr.storage.LocalStore):
        root = str(location.root)
        return StoreLocation(root, location, fsspec.filesystem("file"), root, True)
    if isinstance(location, zarr.storage.FsspecStore):
        fs = getattr(location.fs, "sync_fs", location.fs)
        return StoreLocation(location.path, location, fs, location.path, False)
    if isinstance(location, zarr.storage.MemoryStore):
        raise TypeError("pass memory stores as 'memory://name.zarr' URLs")
    if is_url(location):
        name = sanitize_location(location)
        storage_options = dict(storage_options or {})
        if fsspec.core.split_protocol(location)[0] in ("file", "local"):
            storage_options.setdefault("auto_mkdir", True)
        fs, root = fsspec.core.url_to_fs(location, **storage_options)
        store = zarr.storage.FsspecStore.from_url(
            location, storage_options=storage_options, read_only=read_only
        )
        return StoreLocation(name, store, fs, root, False)
    if not isinstance(location, str | os.PathLike):
        raise TypeError(
            f"store must be a path, an fsspec URL or a zarr store, got {type(location).__name__}"
        )
    path = Path(location).expanduser().absolute()
    local = zarr.storage.LocalStore(path, read_only=read_only)
    return StoreLocation(str(path), local, fsspec.filesystem("file"), str(path), True)


def write_error(name: str, exc: BaseException) -> StoreWriteError:
    """The typed error for a failed write to store ``name``, from the low-level one."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(exc):
        problem = (
            "no space left on the device; chunks written so far are kept and marked, free "
            "space and resume (resume=True, mriflow convert --resume)"
        )
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM) or "read-only" in str(exc).lower():
        problem = "the location is read-only; write the store somewhere writable"
    elif isinstance(exc, NotADirectoryError | FileExistsError):
        problem = "a file is in the way of the store's folders"
    else:
        problem = f"cannot write ({type(exc).__name__}: {exc})"
    return StoreWriteError(f"{name}: {problem}")
