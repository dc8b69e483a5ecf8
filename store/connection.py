"""Connections to ``registry.duckdb``: one writer at a time, readers that retry.

DuckDB lets one process hold a database file read-write, and while it does no
other process can open the file at all, even read-only.  So drp holds the
read-write connection only for the moment of a commit, and every open retries
with backoff for a bounded time (``DRP_LOCK_TIMEOUT`` seconds, default 30)
before failing with :class:`~store.errors.RegistryLockedError`.

Within one process DuckDB refuses a read-only and a read-write connection to
the same file at the same time, so all :class:`~store.repo.Repo` objects of a
process share one :class:`ConnectionManager` per file.  A read connection is
kept for bursts of queries (opening costs ~25 ms) and released after
``DRP_READ_IDLE`` seconds (default 1) of idleness, so an idle reader never
blocks another process's writer for long.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from .errors import RegistryLockedError

__all__ = ["ConnectionManager", "lock_timeout", "manager_for"]

_MANAGERS: dict[str, ConnectionManager] = {}
_MANAGERS_LOCK = threading.Lock()
_LOCK_MESSAGES = ("Could not set lock", "Conflicting lock", "database is locked",
                  "Resource temporarily unavailable")


def lock_timeout() -> float:
    """Seconds to keep retrying a locked registry (``DRP_LOCK_TIMEOUT``, default 30)."""
    return float(os.environ.get("DRP_LOCK_TIMEOUT", "30"))


def _is_lock_error(err: Exception) -> bool:
    text = str(err)
    return any(m in text for m in _LOCK_MESSAGES)


def _holder(err: Exception) -> str:
    match = re.search(r"PID (\d+)", str(err))
    return f" (held by process {match.group(1)})" if match else ""


class ConnectionManager:
    """Opens, shares and releases the connections of one registry file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._reader: duckdb.DuckDBPyConnection | None = None
        self._last_used = 0.0
        self._timer: threading.Timer | None = None
        self._depth = 0  # nested read() contexts in flight

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + lock_timeout()
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only,
                                      config={"autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False})
            except duckdb.Error as err:
                if not _is_lock_error(err):
                    raise
                if time.monotonic() >= deadline:
                    raise RegistryLockedError(
                        f"registry {self.path} is locked by another process{_holder(err)} for "
                        f"more than {lock_timeout():.0f} s; retry later or raise DRP_LOCK_TIMEOUT"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(duckdb.Error):
                self._reader.close()
            self._reader = None

    def _idle_check(self) -> None:
        with self._lock:
            self._timer = None
            if self._depth == 0 and self._reader is not None:
                if time.monotonic() - self._last_used >= _idle_seconds():
                    self._close_reader()
                else:
                    self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(_idle_seconds(), self._idle_check)
            self._timer.daemon = True
            self._timer.start()

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (shared, released when idle)."""
        with self._lock:
            if self._reader is None:
                self._reader = self._connect(read_only=True)
            self._depth += 1
            try:
                # A cursor isolates the caller's registered views and results.
                cursor = self._reader.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
            finally:
                self._depth -= 1
                self._last_used = time.monotonic()
                self._arm_timer()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, committed on success.

        The connection is closed on exit so other processes can open the file.
        """
        with self._lock:
            if self._depth:
                raise RuntimeError("cannot write to the registry while a read is in progress")
            self._close_reader()
            con = self._connect(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    def release(self) -> None:
        """Close the shared read connection now."""
        with self._lock:
            if self._depth == 0:
                self._close_reader()


def _idle_seconds() -> float:
    return float(os.environ.get("DRP_READ_IDLE", "1.0"))


def manager_for(path: Path) -> ConnectionManager:
    """The process-wide manager of a registry file."""
    key = str(Path(path).resolve())
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(key)
        if manager is None:
            manager = _MANAGERS[key] = ConnectionManager(Path(key))
        return manager


@atexit.register
def _release_all() -> None:
    # Close shared readers before the interpreter tears DuckDB's bindings down.
    for manager in list(_MANAGERS.values()):
        with contextlib.suppress(Exception):
            if manager._timer is not None:
                manager._timer.cancel()
            manager._close_reader()
