"""DSE outputs: every point as CSV (and Parquet), the Pareto front, PNG plots, one HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from flightforge import isa, progress
from flightforge.files import atomic_writer, prepare_output_dir, write_text

from .power import band_text

UNITS = tuple(u.name for u in isa.Unit)


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Non-dominated rows of ``values`` (n x k) for objectives to ``min`` or ``max``.

    A row is dominated if another is at least as good in every objective and better in
    one. Rows with a non-finite value are never on the front.
    """
    v = np.asarray(values, dtype=float).copy()
    for j, d in enumerate(directions):
        if d == "max":
            v[:, j] = -v[:, j]
    ok = np.all(np.isfinite(v), axis=1)
    mask = ok.copy()
    idx = np.flatnonzero(ok)
    for i in idx:
        if not mask[i]:
            continue
        others = v[idx]
        dom = np.all(others <= v[i], axis=1) & np.any(others < v[i], axis=1)
        if dom.any():
            mask[i] = False
    return mask


def frame(rows: list[dict]):
    """A pandas DataFrame: one row per point, parameters prefixed ``p_``."""
    import pandas as pd

    recs = []
    for r in rows:
        rec: dict[str, Any] = {"key": r["key"], "status": r["status"], "reason": r["reason"]}
        rec.update({f"p_{k}": v for k, v in r["params"].items()})
        rec.update(r["metrics"])
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def pareto_front(spec, df):
    """The feasible points no other feasible point dominates, best first objective first."""
    objs = list(spec.objectives)
    dirs = [spec.objectives[k] for k in objs]
    feasible = df[df["status"] == "ok"] if len(df) else df
    if not (len(feasible) and all(k in feasible for k in objs)):
        return feasible.iloc[0:0]
    front = feasible[pareto_mask(feasible[objs].to_numpy(dtype=float), dirs)]
    return front.sort_values(objs[0], ascending=dirs[0] == "min")


#: Banded figures: (column shown, central metric); its band is ``METRIC_lo``..``METRIC_hi``.
BANDED = (("power W [band]", "power_w"), ("J/token [band]", "energy_per_token_j"))


def with_bands(front):
    """``front`` with each banded metric also as text ``value [lo-hi]`` (dse/power.py)."""
    out = front.copy()
    for label, k in BANDED:
        if all(c in out for c in (k, f"{k}_lo", f"{k}_hi")):
            out[label] = [
                band_text(v, lo, hi)
                for v, lo, hi in zip(out[k], out[f"{k}_lo"], out[f"{k}_hi"], strict=True)
            ]
    return out


def summary_table(spec, rows: list[dict], limit: int = 5) -> str:
    """The first ``limit`` Pareto points as a text table, power and energy with their band."""
    front = with_bands(pareto_front(spec, frame(rows))).head(limit)
    if not len(front):
        return "no feasible point"
    cols = [c for c in front.columns if c.startswith("p_")]
    cols += [c for c in ("decode_tokens_per_s", "max_utilisation") if c in front]
    cols += [label for label, _ in BANDED if label in front]
    text = front[cols].rename(columns=lambda c: c.removeprefix("p_"))
    return text.to_string(index=False, float_format=lambda v: f"{v:.4g}")


#: The steps write_outputs reports: tables, three plots, the timeline, the page.
REPORT_STEPS = 6


def write_outputs(
    spec, rows: list[dict], out_dir: str | Path, cache_dir: str | None = None
) -> dict[str, Path]:
    """Write points.csv (+ .parquet), pareto.csv, the plots and report.html."""
    import matplotlib

    matplotlib.use("Agg")
    out = prepare_output_dir(Path(out_dir))
    bar = progress.bar(REPORT_STEPS, "report", unit="file")
    df = frame(rows)
    files = {"points_csv": out / "points.csv"}
    with atomic_writer(files["points_csv"], "w") as f:
        df.to_csv(f, index=False)
    try:
        import pyarrow  # noqa: F401

        files["points_parquet"] = out / "points.parquet"
        with atomic_writer(files["points_parquet"]) as f:
            df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(
                f, index=False
            )
    except ImportError:
        pass
    objs = list(spec.objectives)
    dirs = [spec.objectives[k] for k in objs]
    front = pareto_front(spec, df)
    files["pareto_csv"] = out / "pareto.csv"
    with atomic_writer(files["pareto_csv"], "w") as f:
        front.to_csv(f, index=False)
    bar.update(1)
    files["pareto_png"] = plot_pareto(df, front, objs, dirs, out / "pareto.png")
    bar.update(1)
    files["roofline_png"] = plot_roofline(df, front, out / "roofline.png")
    bar.update(1)
    files["utilisation_png"] = plot_utilisation(front, out / "utilisation.png")
    bar.update(1)
    best = front.iloc[0] if len(front) else None
    if best is not None:  # the best point's timeline: compiled and timed again
        bar.set_description_str("report: timeline of the best point")
        with progress.quiet():
            files["timeline_png"] = plot_timeline(
                spec,
                {c[2:]: best[c] for c in front.columns if c.startswith("p_")},
                out / "timeline.png",
                cache_dir,
            )
    bar.update(1)
    files["report_html"] = write_html(spec, df, front, files, out / "report.html")
    bar.update(1)
    bar.close()
    return files


def _save(fig, path: Path) -> Path:
    """Write a report figure and free it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, dpi=110, format=path.suffix.lstrip("."))
    plt.close(fig)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_pareto(df, front, objs, dirs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    if len(objs) >= 2 and len(df) and all(k in df for k in objs[:2]):
        x, y = objs[0], objs[1]
        bad = df[df["status"] != "ok"]
        good = df[df["status"] == "ok"]
        ax.scatter(bad[x], bad[y], c="lightgrey", marker="x", s=12, label="infeasible")
        c = good[objs[2]] if len(objs) > 2 and objs[2] in good else None
        sc = ax.scatter(good[x], good[y], c=c, s=14, cmap="viridis", label="feasible")
        if c is not None:
            fig.colorbar(sc, ax=ax, label=objs[2])
        f = front.sort_values(x)
        if len(objs) == 2:
            ax.plot(f[x], f[y], "r-o", ms=5, mfc="none", label="Pareto front")
        else:  # a front over more objectives is not a curve in this plane: mark its points
            ax.plot(
                f[x],
                f[y],
                "ro",
                ms=6,
                mfc="none",
                label=f"Pareto front (all {len(objs)} objectives)",
            )
        ax.set_xlabel(f"{x} ({dirs[0]})")
        ax.set_ylabel(f"{y} ({dirs[1]})")
        ax.legend(loc="best", fontsize=8)
    else:
        _empty(ax, "no objective pair to plot")
    ax.set_title("Design points and Pareto front")
    return _save(fig, path)


def plot_roofline(df, front, path: Path) -> Path:
    """Decode step: attained GOP/s against operational intensity (ops per external byte)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    need = ("macs_per_step", "bytes_per_step", "decode_step_s")
    d = (
        df.dropna(subset=[c for c in need if c in df])
        if all(c in df for c in need)
        else df.iloc[0:0]
    )
    if len(d):
        oi = 2 * d["macs_per_step"] / d["bytes_per_step"]
        perf = 2 * d["macs_per_step"] / d["decode_step_s"] / 1e9
        ok = d["status"] == "ok"
        ax.scatter(oi[~ok], perf[~ok], c="lightgrey", marker="x", s=12, label="infeasible")
        ax.scatter(oi[ok], perf[ok], s=14, label="feasible")
        if len(front) and all(c in front for c in ("bw_gbs", "peak_gops")):
            best = front.iloc[0]
            xs = np.logspace(np.log10(max(oi.min() / 4, 1e-3)), np.log10(oi.max() * 4), 100)
            ax.plot(
                xs,
                np.minimum(best["peak_gops"], best["bw_gbs"] * xs),
                "r-",
                label="roof of the first Pareto point",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("operational intensity (ops / external byte)")
        ax.set_ylabel("attained GOP/s (decode step)")
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no timed points")
    ax.set_title("Roofline of the decode step")
    return _save(fig, path)


def plot_utilisation(front, path: Path, limit: int = 16) -> Path:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    f = front.head(limit)
    if len(f):
        x = np.arange(len(f))
        w = 0.8 / len(UNITS)
        for j, u in enumerate(UNITS):
            a1.bar(x + j * w, f.get(f"busy_{u}", 0), w, label=u)
        a1.set_ylabel("busy share (decode)")
        a1.legend(fontsize=8, ncol=4)
        kinds = ("dsp", "lut", "ff", "bram", "uram")
        w = 0.8 / len(kinds)
        for j, k in enumerate(kinds):
            a2.bar(x + j * w, f.get(f"{k}_util", 0), w, label=k.upper())
        a2.axhline(1.0, color="r", lw=0.8)
        a2.set_ylabel("device budget share")
        a2.legend(fontsize=8, ncol=5)
        a2.set_xticks(x + 0.4, [f"#{i}" for i in range(len(f))])
        a2.set_xlabel("Pareto points (pareto.csv order)")
    else:
        _empty(a1, "no feasible points")
    a1.set_title("Per-unit utilisation and resources of Pareto points")
    return _save(fig, path)


def plot_timeline(
    spec, params: dict, path: Path, cache_dir: str | None = None, max_instrs: int = 600
) -> Path:
    """Unit occupancy over the start of one decode step of a point (cycle model schedule)."""
    import matplotlib.pyplot as plt

    from flightforge.sim.cycle_model import CycleModel

    from .points import build_point, decode_positions, evaluate_point, program_cache

    fig, ax = plt.subplots(figsize=(9, 3.2))
    try:
        params = {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in params.items()
            if not (isinstance(v, float) and np.isnan(v))
        }
        arch, _, _, tparams = build_point(spec, params)
        # Loads the point's program from the DSE's program cache (or compiles it).
        row = evaluate_point(spec, params, cache_dir)
        prog = program_cache(cache_dir).programs[row["metrics"]["stream_key"]]
        _, samples = decode_positions(spec.workload)
        sec = prog.section_for("decode", samples[0])
        run = CycleModel(arch, tparams).execute(
            sec.instructions, name=sec.name, d=samples[0] - sec.len_lo
        )
        s, e = run.schedule.start, run.schedule.end
        colors = {"LD": "tab:blue", "ST": "tab:orange", "MPE": "tab:green", "SFU": "tab:red"}
        for i, ins in enumerate(run.instrs[:max_instrs]):
            if ins.UNIT is None or s[i] < 0:
                continue
            u = ins.UNIT.name
            ax.broken_barh(
                [(int(s[i]), int(e[i] - s[i]))], (UNITS.index(u) - 0.4, 0.8), color=colors[u]
            )
        ax.set_yticks(range(len(UNITS)), UNITS)
        ax.set_xlabel(f"cycle ({sec.name}, first {max_instrs} instructions)")
    except Exception as exc:  # the timeline is illustrative; say why it is missing
        _empty(ax, f"timeline unavailable: {exc}")
    ax.set_title("Timeline of the first Pareto point's decode step")
    return _save(fig, path)


def write_html(spec, df, front, files: dict[str, Path], path: Path) -> Path:
    n = len(df)
    ok = int((df["status"] == "ok").sum()) if n else 0
    reasons = (
        df[df["status"] != "ok"]["reason"].str.split(":").str[0].value_counts().to_dict()
        if n
        else {}
    )
    front = with_bands(front)
    cols = [c for c in front.columns if c.startswith("p_")] + [
        c
        for c in (*spec.objectives, *(label for label, _ in BANDED), "dsp", "lut", "bram", "uram")
        if c in front
    ]
    table = (
        front[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}")
        if len(front)
        else "<p>none</p>"
    )
    imgs = "".join(
        f'<h2>{html.escape(k[:-4])}</h2><img src="{p.name}" alt="{k}">'
        for k, p in files.items()
        if k.endswith("_png")
    )
    name, model, target = (html.escape(x) for x in (spec.name, spec.model, spec.target))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>DSE: {name}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px}}img{{max-width:900px}}</style></head><body>
<h1>Design-space exploration: {name}</h1>
<p>Model <code>{model}</code> on base target <code>{target}</code>;
workload: prompt {spec.workload.prompt_len}, decode {spec.workload.decode_len} tokens.
Objectives: {html.escape(json.dumps(spec.objectives))}.</p>
<p>{n} points: {ok} feasible, {n - ok} infeasible ({html.escape(json.dumps(reasons))}).
All points: <a href="points.csv">points.csv</a>; front: <a href="pareto.csv">pareto.csv</a>.</p>
<h2>Pareto front ({len(front)} points)</h2>{table}
<p>Power and energy per token are printed as <i>value [low-high]</i>: the power model's
uncertainty band, every component at the low or high end of its range (static x0.5-1.5,
logic x0.5-2, memory x0.75-1.3; sources in docs/dse.md). Comparisons of energy between
points share most of the band's error; absolute figures do not.</p>{imgs}</body></html>"""
    write_text(path, page)
    return path
