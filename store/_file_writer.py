"""Placing dataset files: write under a temporary name, rename without replacing.

Standard library only, so it also runs as the datastore's writer process
(``python -I -S _file_writer.py``): :class:`store.datastore.BatchWriter` streams
``(temporary name, final name, bytes)`` records to its standard input while
the caller serialises the next objects, and the process creates directories,
writes and renames in parallel (a thread would not: every system call would
hand the GIL back and forth with the serialiser, which measured slower than
no overlap at all).  At end of input it flushes the filesystem (``syncfs``)
when given a directory argument, and prints ``{"placed": n, "error": ...,
"synced": bool}``: the first ``n`` records are in place (and durable if
``synced``); it stops at the first error.
"""

from __future__ import annotations

import errno
import functools
import os
import struct

#: One record: lengths of the temporary name, the final name and the data.
HEADER = struct.Struct("<III")

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@functools.cache
def _libc_renameat2():
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (ImportError, OSError, AttributeError):
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2


def rename_noreplace(source, destination) -> None:
    """Rename ``source`` to ``destination`` atomically unless ``destination`` exists.

    One ``renameat2(RENAME_NOREPLACE)`` call on Linux, else a hard link and
    an unlink, else (filesystems without either) a check then a rename.  So
    two processes putting the same dataset cannot overwrite each other's file.

    Raises
    ------
    FileExistsError
        ``destination`` exists (``source`` is left in place).
    """
    message = f"{os.fspath(destination)} already exists; refusing to overwrite a dataset file"
    renameat2 = _libc_renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination),
                     _RENAME_NOREPLACE) == 0:
            return
        import ctypes

        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, message)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
            raise OSError(err, os.strerror(err), os.fspath(destination))
    try:
        os.link(source, destination)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, message) from None
    except OSError:  # no hard links on this filesystem
        if os.path.lexists(destination):
            raise FileExistsError(errno.EEXIST, message) from None
        os.replace(source, destination)
        return
    os.unlink(source)


def write_file(tmp: str, final: str, data, known_dirs: set[str]) -> None:
    """Create the directory (once), write ``tmp``, rename it to ``final`` (no replacing)."""
    directory = os.path.dirname(final)
    if directory not in known_dirs:
        try:
            os.mkdir(directory)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        known_dirs.add(directory)
    fd = os.open(tmp, _OPEN_FLAGS, 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    rename_noreplace(tmp, final)


def _serve(stream) -> dict:
    placed, error, known = 0, None, set()
    while True:
        header = stream.read(HEADER.size)
        if len(header) < HEADER.size:
            break
        sizes = HEADER.unpack(header)
        tmp, final, data = (stream.read(n) for n in sizes)
        if len(data) < sizes[2]:
            break  # the caller died mid-record
        if error is not None:
            continue  # drain: the caller must never block on a full pipe
        try:
            write_file(os.fsdecode(tmp), os.fsdecode(final), data, known)
            placed += 1
        except OSError as err:
            error = {"type": type(err).__name__, "errno": err.errno,
                     "message": str(err), "path": os.fsdecode(final)}
    return {"placed": placed, "error": error}


def syncfs(path) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``); False if unavailable."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return call(fd) == 0
    finally:
        os.close(fd)


def main() -> None:
    """Serve standard input; with a directory argument, ``syncfs`` it after the last file."""
    import json
    import signal
    import sys

    # A Ctrl-C reaches the whole process group: finish and report, the caller cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = _serve(sys.stdin.buffer)
    report["synced"] = False
    if len(sys.argv) > 1 and report["placed"] and report["error"] is None:
        try:
            report["synced"] = syncfs(sys.argv[1])
        except OSError:
            pass
    try:
        sys.stdout.write(json.dumps(report))
        sys.stdout.flush()
    except OSError:  # the caller is gone
        pass


if __name__ == "__main__":
    main()
