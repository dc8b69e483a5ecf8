"""Files of a repository: where each dataset lives, atomic writes, checksums.

A dataset file is written to a temporary name in its final directory,
flushed, fsync'ed and renamed, so a reader never sees a half-written file and
a crash leaves at worst an orphan temporary file (which ``drp verify
--repair`` removes).  The BLAKE2b checksum is computed from the bytes as they
are written, so no second read is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ChecksumMismatchError, DrpError, FormatError

__all__ = [
    "TMP_MARKER",
    "BatchWriter",
    "HashingWriter",
    "atomic_replace",
    "atomic_write",
    "checksum_file",
    "dataset_relpath",
    "flush_filesystem",
    "fsync_directory",
    "serialize",
    "transfer_file",
    "verify_file",
]

#: Substring of temporary file names (recognised by ``verify --repair``).
TMP_MARKER = ".drp-tmp-"
_CHECKSUM = "blake2b"
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class HashingWriter:
    """A binary file wrapper that hashes and counts what is written through it."""

    def __init__(self, raw):
        self._raw = raw
        self._hash = hashlib.blake2b(digest_size=32)
        self.size = 0
        self._pos = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.tell() != self._pos:
            raise OSError("HashingWriter only supports sequential writes")
        self._hash.update(view)
        n = self._raw.write(view)
        self.size += len(view)
        self._pos += len(view)
        return n

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        self._raw.flush()

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._raw.closed

    @property
    def mode(self) -> str:
        return "wb"

    @property
    def name(self) -> str:
        return self._raw.name

    def hexdigest(self) -> str:
        """``blake2b:<hex>`` of the bytes written so far."""
        return f"{_CHECKSUM}:{self._hash.hexdigest()}"


def _component(value: Any) -> str:
    return _SAFE.sub("-", str(value))


def dataset_relpath(run: str, dataset_type: str, data_id: Mapping[str, Any],
                    extension: str) -> str:
    """Relative path of a dataset file inside the repository.

    ``<run>/<dataset_type>/<group>/<dataset_type>_<values>.<ext>`` where the
    group is the visit, patch or sky pixel, so no directory grows huge.

    Parameters
    ----------
    run : str
        RUN collection name (``/`` separated parts become directories).
    dataset_type : str
        Dataset type name.
    data_id : mapping
        Complete data ID in canonical dimension order.
    extension : str
        File extension including the dot.
    """
    parts = [p for p in run.split("/") if p]
    if any(p in (".", "..") for p in parts) or not parts:
        raise DrpError(f"invalid run name {run!r}")
    run_dir = "/".join(_component(p) for p in parts)
    if "visit" in data_id:
        group = f"visit{data_id['visit']}"
    elif "patch" in data_id:
        group = f"tract{data_id.get('tract')}-patch{data_id['patch']}"
    elif "healpix" in data_id:
        group = f"healpix{data_id['healpix']}"
    else:
        group = ""
    values = "_".join(_component(v) for v in data_id.values())
    name = f"{dataset_type}_{values}{extension}" if values else f"{dataset_type}{extension}"
    return "/".join(p for p in (run_dir, _component(dataset_type), group, name) if p)


def fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def flush_filesystem(root: Path) -> None:
    """Make every file written so far under ``root`` durable (one ``syncfs``, else ``sync``).

    The pipeline driver calls this once before registering a batch of files
    its workers wrote without fsync'ing each (measured 9 ms per fsync here).
    """
    if not _syncfs(Path(root)):
        os.sync()


def serialize(write: Callable[[Any], None]) -> memoryview:
    """Run a serialiser into memory and return the bytes."""
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getbuffer()


def _syncfs(path: Path) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``); False if unavailable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


class BatchWriter:
    """Write many files atomically with two filesystem flushes instead of one per file.

    Files go to temporary names; :meth:`commit` flushes the filesystem once
    (contents durable), renames every file into place, and flushes again
    (renames durable).  Where ``syncfs`` is unavailable each file is fsync'ed.

    Parameters
    ----------
    root : Path
        Any directory on the filesystem being written.
    durable : bool
        Flush at all (tests and scratch repositories may skip it).
    """

    def __init__(self, root: Path, *, durable: bool = True):
        self.root = root
        self.durable = durable
        self._pending: list[tuple[Path, Path]] = []
        self._done: list[Path] = []
        self._dirs: set[Path] = set()

    def write(self, path: Path, write: Callable[[Any], None]) -> tuple[int, str]:
        """Write ``path`` through ``write(fileobj)`` to a temporary name; (size, checksum).

        The object is serialised in memory first, then hashed and written with
        one system call (serialisers write many small chunks).
        """
        return self.write_bytes(path, serialize(write))

    def write_bytes(self, path: Path, data: bytes | memoryview) -> tuple[int, str]:
        """Write already serialised bytes to a temporary name; (size, checksum)."""
        directory = path.parent
        if directory not in self._dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._dirs.add(directory)
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite a dataset file")
        tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
        self._pending.append((tmp, path))
        with open(tmp, "wb") as raw:
            raw.write(data)
        digest = hashlib.blake2b(data, digest_size=32).hexdigest()
        return len(data), f"{_CHECKSUM}:{digest}"

    def commit(self) -> list[Path]:
        """Make every written file durable under its final name; returns the paths."""
        if not self._pending:
            return []
        flushed = self.durable and _syncfs(self.root)
        if self.durable and not flushed:
            for tmp, _ in self._pending:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        for tmp, path in self._pending:
            os.replace(tmp, path)
            self._done.append(path)
        if self.durable and not (flushed and _syncfs(self.root)):
            for directory in {p.parent for _, p in self._pending}:
                fsync_directory(directory)
        self._pending = []
        return self._done

    def abort(self) -> None:
        """Remove temporary and already renamed files (nothing was registered)."""
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for path in self._done:
            with contextlib.suppress(OSError):
                path.unlink()
        self._pending, self._done = [], []


def atomic_write(path: Path, write: Callable[[Any], None], *, durable: bool = True
                 ) -> tuple[int, str]:
    """Write a file through ``write(fileobj)`` atomically; return (size, checksum).

    Parameters
    ----------
    path : Path
        Final location; must not exist yet.
    write : callable
        Receives a sequential binary file object.
    durable : bool
        fsync the file before the rename.
    """
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a dataset file")
    return atomic_replace(path, write, durable=durable)


def atomic_replace(path: Path, write: Callable[[Any], None], *, durable: bool = True
                   ) -> tuple[int, str]:
    """Like :func:`atomic_write` but replaces an existing (unregistered) file.

    Used by pipeline workers: a file left by an interrupted run was never
    registered, so rewriting it loses nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as raw:
            writer = HashingWriter(raw)
            write(writer)
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return writer.size, writer.hexdigest()


def checksum_file(path: Path, chunk: int = 1 << 22) -> tuple[int, str]:
    """Size and ``blake2b:<hex>`` checksum of an existing file."""
    h = hashlib.blake2b(digest_size=32)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, f"{_CHECKSUM}:{h.hexdigest()}"


def verify_file(path: Path, size: int | None, checksum: str | None) -> None:
    """Raise if the file is missing or no longer matches its recorded size and checksum."""
    if not path.exists():
        raise FormatError(f"{path}: registered dataset file is missing")
    actual_size, actual = checksum_file(path)
    if (size is not None and actual_size != size) or (checksum and actual != checksum):
        raise ChecksumMismatchError(
            f"{path}: checksum mismatch (recorded {checksum}, size {size}; "
            f"found {actual}, size {actual_size})"
        )


TRANSFER_MODES = ("copy", "move", "hardlink", "symlink", "direct")


def transfer_file(source: Path, destination: Path, mode: str) -> None:
    """Bring an existing file into the repository with the given transfer mode.

    ``direct`` leaves the file where it is (the caller records its absolute path).
    """
    if mode not in TRANSFER_MODES:
        raise DrpError(f"unknown transfer mode {mode!r}; use one of {', '.join(TRANSFER_MODES)}")
    if mode == "direct":
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; refusing to overwrite")
    tmp = destination.with_name(f"{destination.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        if mode == "copy":
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        elif mode == "move":
            shutil.move(source, tmp)
        elif mode == "hardlink":
            os.link(source, tmp)
        elif mode == "symlink":
            os.symlink(Path(source).resolve(), tmp)
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
