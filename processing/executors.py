"""Where quanta run: in this process, a local process pool, or a Dask cluster.

Each executor takes an iterable of :class:`~processing.quantum.Quantum` and
yields :class:`~processing.quantum.QuantumOutcome` as they finish.  Workers
only read and write files; the driver registers what they wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from .quantum import Quantum, QuantumOutcome, execute_quantum

__all__ = ["DaskExecutor", "InProcessExecutor", "PoolExecutor", "make_executor"]


def _run(quantum: Quantum) -> QuantumOutcome:
    return execute_quantum(quantum)


class InProcessExecutor:
    """Run quanta one after another in this process (``--jobs 1``)."""

    n_workers = 1

    def map(self, quanta: Iterable[Quantum]) -> Iterator[QuantumOutcome]:
        for q in quanta:
            yield _run(q)

    def close(self) -> None:
        pass


def _init_worker() -> None:
    # One BLAS/numba thread per worker: the pool provides the parallelism.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")


class PoolExecutor:
    """A local pool of ``n`` worker processes (``--jobs n``).

    Uses the ``forkserver`` start method: workers do not inherit the driver's
    open DuckDB handles or threads.
    """

    def __init__(self, n_workers: int):
        import concurrent.futures
        import multiprocessing

        self.n_workers = n_workers
        ctx = multiprocessing.get_context("forkserver")
        self._pool = concurrent.futures.ProcessPoolExecutor(
            n_workers, mp_context=ctx, initializer=_init_worker)

    def map(self, quanta: Iterable[Quantum]) -> Iterator[QuantumOutcome]:
        import concurrent.futures

        futures = [self._pool.submit(_run, q) for q in quanta]
        for fut in concurrent.futures.as_completed(futures):
            yield fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Quanta as tasks on a Dask distributed cluster (``--dask tcp://host:8786``).

    The workers must see the repository directory at the same path (a shared
    filesystem), as for any butler datastore on a cluster.
    """

    def __init__(self, address: str, timeout: float = 10.0):
        from store.errors import DrpError

        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - dependency declared
            raise DrpError("Dask execution needs the 'distributed' package") from err
        try:
            self._client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise DrpError(f"cannot reach the Dask scheduler at {address} within "
                           f"{timeout:.0f} s ({type(err).__name__})") from None
        self.n_workers = max(len(self._client.scheduler_info().get("workers", {})), 1)

    def map(self, quanta: Iterable[Quantum]) -> Iterator[QuantumOutcome]:
        from distributed import as_completed

        futures = [self._client.submit(_run, q, pure=False, key=f"{q.key}-{id(q)}")
                   for q in quanta]
        for fut in as_completed(futures):
            yield fut.result()

    def close(self) -> None:
        self._client.close()


def make_executor(jobs: int | None = None, dask: str | None = None):
    """The executor for ``--jobs`` / ``--dask`` (default: one process per core)."""
    if dask:
        return DaskExecutor(dask)
    n = jobs if jobs else (os.cpu_count() or 1)
    return InProcessExecutor() if n <= 1 else PoolExecutor(n)
