"""Design-space search: exhaustive (``grid``) or Optuna's NSGA-II, resumable.

:func:`explore` evaluates points of a spec's space, in parallel over local processes or
on a Dask cluster (:mod:`.executors`), and stores every result in SQLite
(:class:`~.store.Store`) as it arrives, keyed by a canonical hash of the point's
parameters: a killed run resumes where it stopped, and no point is stored twice. See
docs/dse.md.
"""

from __future__ import annotations

import math
import os
import warnings

from .executors import close_executor, make_executor, progress_bar, run_points
from .points import check_spec, grid, point_key
from .spec import Spec
from .store import Store


def explore(
    spec: Spec,
    store: Store,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    method: str | None = None,
    trials: int | None = None,
) -> dict[str, int]:
    """Evaluate the spec's space into ``store`` (resuming whatever it already holds)."""
    check_spec(spec)
    store.bind(spec.fingerprint())
    jobs = jobs or min(os.cpu_count() or 1, 2)
    method = method or spec.search.method
    executor, client = make_executor(jobs, scheduler)
    try:
        if method == "grid":
            stats = _explore_grid(spec, store, executor, cache_dir, progress)
        else:
            stats = _explore_nsga2(
                spec, store, executor, cache_dir, progress, trials or spec.search.trials, jobs
            )
    except BaseException:  # Ctrl-C or an error: stop the workers now, not after their batches
        close_executor(executor, client, abort=True)
        raise
    close_executor(executor, client, abort=False)
    return stats


def _explore_grid(spec, store, executor, cache_dir, progress) -> dict[str, int]:
    points = grid(spec)
    have = store.keys()
    todo = [p for p in points if point_key(p) not in have]
    bar = progress_bar(len(points), len(points) - len(todo), progress, spec.name)
    new = 0

    def on_row(row) -> bool:
        nonlocal new
        new += store.put(row)
        return True

    run_points(spec, todo, executor, cache_dir, on_row, bar)
    bar.close()
    return {"points": len(points), "evaluated": new, "resumed": len(points) - len(todo)}


def _constraints(trial) -> list[float]:
    return trial.user_attrs.get("constraint", [0.0])


def objective_values(spec: Spec, metrics: dict) -> list[float] | None:
    vals = [metrics.get(k) for k in spec.objectives]
    return (
        None if any(v is None or not math.isfinite(v) for v in vals) else [float(v) for v in vals]
    )


def _explore_nsga2(spec, store, executor, cache_dir, progress, trials, jobs) -> dict[str, int]:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: CategoricalDistribution(v) for k, v in sorted(spec.parameters.items())}
    with warnings.catch_warnings():
        # Optuna 5 deprecates constraints_func for Trial.set_constraint (removal planned for
        # 7); the stored trials carry their constraint as a user attribute that resume
        # replays, so keep it, without printing the notice on every run of every user.
        warnings.filterwarnings("ignore", "`constraints_func` has been deprecated", FutureWarning)
        sampler = optuna.samplers.NSGAIISampler(
            population_size=spec.search.population,
            seed=spec.search.seed,
            constraints_func=_constraints,
        )
    study = optuna.create_study(
        directions=["minimize" if d == "min" else "maximize" for d in spec.objectives.values()],
        sampler=sampler,
    )

    def frozen(row: dict, system_attrs: dict):
        vals = objective_values(spec, row["metrics"])
        params = {k: row["params"][k] for k in dists if k in row["params"]}
        if len(params) != len(dists):
            return None
        if vals is None:
            return create_trial(
                params=params, distributions=dists, state=TrialState.FAIL, system_attrs=system_attrs
            )
        return create_trial(
            params=params,
            distributions=dists,
            values=vals,
            system_attrs=system_attrs,
            user_attrs={"constraint": [0.0 if row["status"] == "ok" else 1.0]},
        )

    start = len(store)
    for row in store.rows():  # resume: the sampler sees every stored point, in order
        ft = frozen(row, row["extra"].get("system_attrs", {}))
        if ft is not None:
            study.add_trial(ft)
    bar = progress_bar(trials, min(start, trials), progress, spec.name)
    asks = 0
    while len(store) < trials and asks < 20 * trials:
        want = min(trials - len(store), max(jobs * spec.search.batch, 1))
        pending, todo = [], {}
        for _ in range(want):
            t = study.ask(dists)
            asks += 1
            key = point_key(t.params)
            pending.append((t, key))
            if store.get(key) is None and key not in todo:
                todo[key] = dict(t.params)

        def on_row(row, pending=pending) -> bool:
            return bool(store.put(row, {"system_attrs": _system_attrs(study, pending, row["key"])}))

        run_points(spec, list(todo.values()), executor, cache_dir, on_row, bar)
        for t, key in pending:
            row = store.get(key)
            vals = objective_values(spec, row["metrics"]) if row else None
            if vals is None:
                study.tell(t, state=TrialState.FAIL)
            else:
                t.set_user_attr("constraint", [0.0 if row["status"] == "ok" else 1.0])
                study.tell(t, vals)
    bar.close()
    return {"points": len(store), "evaluated": len(store) - start, "resumed": start}


def _system_attrs(study, pending, key) -> dict:
    for t, k in pending:
        if k == key:
            return dict(study._storage.get_trial_system_attrs(t._trial_id))
    return {}
