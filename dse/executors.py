"""Where points are evaluated: in this process, local worker processes or a Dask cluster.

Points go to workers in batches sorted so that a batch shares a compiled stream (one
compile per worker); every backend is a ``concurrent.futures`` executor, so local and
cluster runs take the same code path.
"""

from __future__ import annotations

import concurrent.futures as cf
import json

from flightforge import progress

from .points import evaluate_batch
from .spec import ARCH_KNOBS, Spec


def make_executor(jobs: int, scheduler: str | None):
    """A ``concurrent.futures`` executor: local processes, or a Dask cluster's."""
    if scheduler:
        from dask.distributed import Client

        client = Client(scheduler)
        return client.get_executor(), client
    if jobs <= 1:
        return None, None
    import multiprocessing

    return cf.ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
    ), None


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """The DSE's bar: points done of ``total``, resumed ones counted but not in the rate.

    The bar advances by a whole batch when its rows arrive (see :func:`run_points`) and
    its rate is the average since the start (:func:`flightforge.progress.bar`): counting
    the first row of a batch alone made the first ETA one batch size too long (53 min
    shown for a 4.5 min run).
    """
    return progress.bar(total, desc, unit="pt", show=enabled, initial=initial)


def _batches(points: list[dict], size: int, stream_of) -> list[list[dict]]:
    """Batches of points sharing a compiled stream where possible (one compile per worker)."""
    points = sorted(points, key=stream_of)
    return [points[i : i + size] for i in range(0, len(points), size)]


def run_points(
    spec: Spec, points: list[dict], executor, cache_dir: str | None, on_row, bar=None
) -> None:
    """Evaluate ``points`` on ``executor`` (None: here), calling ``on_row`` per result and
    advancing ``bar`` by the rows ``on_row`` counted (it returns whether a row was new)
    once per batch.

    Results arrive in completion order; pending batches are cancelled if one fails.
    """
    spec_json = spec.model_dump_json()
    stream_params = [k for k in spec.parameters if k not in ARCH_KNOBS or k.endswith("_kib")]
    batches = _batches(
        points,
        spec.search.batch,
        lambda p: json.dumps([p.get(k) for k in sorted(stream_params)], default=str),
    )

    def take(rows: list[dict]) -> None:
        new = sum(bool(on_row(row)) for row in rows)
        if bar is not None:
            bar.update(new)

    if executor is None:
        for b in batches:
            take(evaluate_batch(spec_json, b, cache_dir))
        return
    futures = [executor.submit(evaluate_batch, spec_json, b, cache_dir) for b in batches]
    try:
        for f in cf.as_completed(futures):
            take(f.result())
    finally:
        for f in futures:
            f.cancel()
