"""Where points are evaluated: in this process, local worker processes or a Dask cluster.

Points go to workers in batches sorted so that a batch shares a compiled stream (one
compile per worker); every backend is a ``concurrent.futures`` executor, so local and
cluster runs take the same code path.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.managers
import signal
import threading
from collections.abc import Iterator

from flightforge import progress

from .points import evaluate_batch
from .spec import ARCH_KNOBS, Spec


def _ignore_sigint() -> None:
    """Worker initialiser: Ctrl-C is the parent's to handle (it stops the workers); a
    terminal sends SIGINT to the whole process group, and workers that took it would each
    print a traceback and hand a ``KeyboardInterrupt`` back as a batch's result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_executor(jobs: int, scheduler: str | None):
    """A ``concurrent.futures`` executor: local processes, or a Dask cluster's."""
    if scheduler:
        from dask.distributed import Client

        client = Client(scheduler)
        return client.get_executor(), client
    if jobs <= 1:
        return None, None
    return cf.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigint,
    ), None


def close_executor(executor, client, abort: bool) -> None:
    """Shut down what :func:`make_executor` made; on ``abort`` (Ctrl-C, an error) now.

    A process pool's ``shutdown`` cancels the batches not yet started, but the
    interpreter's exit then waits for the running ones (tens of seconds to minutes for
    a large model's compile), so on abort the workers are terminated first: their
    batches were not stored, and a resumed run evaluates them again. A Dask cluster's
    pending tasks are cancelled with the client.
    """
    if isinstance(executor, cf.ProcessPoolExecutor):
        if abort:
            terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
            if terminate is not None:
                terminate()
            else:
                for proc in list((executor._processes or {}).values()):
                    proc.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
    elif executor is not None:
        quiet = _CancelledTasksUnlogged() if abort else None
        if quiet is not None:
            _TORNADO_LOG.addFilter(quiet)
        try:
            executor.shutdown(wait=False)
            if client is not None:
                client.close()
        finally:
            if quiet is not None:
                _TORNADO_LOG.removeFilter(quiet)
        return
    if client is not None:
        client.close()


_TORNADO_LOG = logging.getLogger("tornado.application")


class _CancelledTasksUnlogged(logging.Filter):
    """Drops the event loop's report of a Dask task cancelled by an abort.

    ``distributed``'s executor relays each task's outcome from a coroutine on the
    client's event loop; when the abort cancels a task while that coroutine waits on
    it, the coroutine can raise ``FutureCancelledError`` and tornado logs it with a
    traceback (a race, seen in a CI run). The cancellation is
    the abort's intent, so its report is dropped; any other error is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.client import FutureCancelledError

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FutureCancelledError)


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """The DSE's bar: points done of ``total``, resumed ones counted but not in the rate.

    The bar advances point by point, also while the batches of local workers run (see
    :func:`run_points`), and its rate is the average since the start
    (:func:`flightforge.progress.bar`): an ETA from batches that arrive whole, or from a
    short recent window, was several times too long (the issue saw 53 min for a 4.5 min
    run; docs/dse.md has measurements).
    """
    return progress.bar(total, desc, unit="pt", show=enabled, initial=initial)


def _batches(points: list[dict], size: int, stream_of) -> list[list[dict]]:
    """Batches of points sharing a compiled stream where possible (one compile per worker)."""
    points = sorted(points, key=stream_of)
    return [points[i : i + size] for i in range(0, len(points), size)]


class _Advance:
    """A ``put``-able that advances a bar: point-by-point progress within this process."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)


@contextlib.contextmanager
def _points_done(bar) -> Iterator:
    """A queue that local worker processes put a 1 on per evaluated point, drained into
    ``bar`` by a thread: with the results of a batch arriving at once, the bar (and its
    ETA) would otherwise move only when a whole batch of every worker is done."""
    manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(_ignore_sigint)
    queue = manager.Queue()

    def drain() -> None:
        while (n := queue.get()) is not None:
            bar.update(n)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        queue.put(None)
        thread.join()
        manager.shutdown()


def run_points(
    spec: Spec, points: list[dict], executor, cache_dir: str | None, on_row, bar=None
) -> None:
    """Evaluate ``points`` on ``executor`` (None: here), calling ``on_row`` per result.

    ``bar`` counts the points: per point as they finish here or in local worker
    processes, per batch (the rows ``on_row`` reports new) on a Dask cluster. Results
    arrive in completion order; pending batches are cancelled if one fails.
    """
    spec_json = spec.model_dump_json()
    stream_params = [k for k in spec.parameters if k not in ARCH_KNOBS or k.endswith("_kib")]
    batches = _batches(
        points,
        spec.search.batch,
        lambda p: json.dumps([p.get(k) for k in sorted(stream_params)], default=str),
    )

    live = bar is not None and not getattr(bar, "disable", True)
    per_point = live and (executor is None or isinstance(executor, cf.ProcessPoolExecutor))

    def take(rows: list[dict]) -> None:
        new = sum(bool(on_row(row)) for row in rows)
        if live and not per_point:
            bar.update(new)

    if executor is None:
        for b in batches:
            take(evaluate_batch(spec_json, b, cache_dir, _Advance(bar) if per_point else None))
        return
    with _points_done(bar) if per_point else contextlib.nullcontext() as done:
        futures = [executor.submit(evaluate_batch, spec_json, b, cache_dir, done) for b in batches]
        try:
            for f in cf.as_completed(futures):
                take(f.result())
        finally:
            for f in futures:
                f.cancel()
