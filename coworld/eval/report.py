"""Comparing methods over seeds: a results table with confidence intervals, and learning curves.

The protocol (docs/algorithms.md, "Reporting"): each seed's score is the mean return over the
episodes of its FINAL evaluation; seeds are the runs axis of the statistics in
:mod:`coworld.eval.stats` (IQM and mean with 95% stratified-bootstrap intervals, probability of
improvement), so episodes are never pooled across seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from coworld.errors import UserError
from coworld.eval import stats
from coworld.run.plots import eval_tag, is_number, read_metrics, series

TASK = "task"  # one comparison on one task: a single stratum


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _check(results: dict[str, list[dict]]) -> None:
    for method, seeds in results.items():
        if not seeds:
            raise UserError(f"method {method!r} has no seeds to report")
        for s in seeds:
            if not s.get("returns"):
                raise UserError(f"method {method!r}, seed {s.get('seed')}: no final-evaluation returns; "
                                "did the run finish its final evaluation?")


def scores(seeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-seed scores (each seed's mean over its final-evaluation episodes), as one stratum."""
    return {TASK: np.array([stats.seed_score(s["returns"]) for s in seeds])}


def aggregate(results: dict[str, list[dict]], reps: int = 2000, focus: str | None = None) -> dict:
    """Per method: IQM and mean of the final returns with 95% intervals, the value overestimation
    over seeds (mean with interval), the counts; and P(``focus`` > other) for every other method."""
    _check(results)
    out: dict = {"methods": {}, "improvement": {}}
    for method, seeds in results.items():
        summary = stats.summarize(scores(seeds), reps=reps)
        over = [s["overestimation"] for s in seeds if s.get("overestimation") is not None]
        entry = {"seeds": len(seeds), "episodes": sorted({len(s["returns"]) for s in seeds}),
                 "iqm": summary["iqm"], "mean": summary["mean"], "overestimation": None,
                 "overestimation_seeds": len(over)}
        if over:
            o = {TASK: np.array(over, dtype=np.float64)}
            lo, hi = stats.bootstrap_ci(stats.mean, o, reps=reps)
            entry["overestimation"] = {"value": stats.mean(o), "ci": [lo, hi]}
        wall = [s["wall_s"] for s in seeds if s.get("wall_s") is not None]
        entry["wall_s"] = float(np.mean(wall)) if wall else None
        out["methods"][method] = entry
    if focus in results:
        for other in results:
            if other != focus:
                out["improvement"][other] = stats.compare(scores(results[focus]), scores(results[other]), reps=reps)
    return out


def results_table(results: dict[str, list[dict]], reps: int = 2000) -> str:
    """A markdown table, one row per method, from per-seed results.

    ``results[method]`` is a list with one dict per seed: ``{"seed": int, "returns": [the
    per-episode returns of the final evaluation], "overestimation": float | None,
    "wall_s": float}`` (:func:`run_result` reads one from a run directory).
    """
    agg = aggregate(results, reps=reps)
    header = ["method", "IQM [95% CI]", "mean [95% CI]", "seeds", "episodes / eval",
              "value overestimation [95% CI]", "wall time / seed"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, e in agg["methods"].items():
        episodes = "-".join(str(n) for n in (e["episodes"][0], e["episodes"][-1])) if len(e["episodes"]) > 1 \
            else str(e["episodes"][0])
        over = "n/a" if e["overestimation"] is None else stats.interval_text(e["overestimation"])
        if e["overestimation"] is not None and e["overestimation_seeds"] < e["seeds"]:
            over += f" ({e['overestimation_seeds']} seeds)"
        wall = "n/a" if e["wall_s"] is None else _duration(e["wall_s"])
        row = [method, stats.interval_text(e["iqm"]), stats.interval_text(e["mean"]), str(e["seeds"]), episodes,
               over, wall]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Each seed's score is its mean return over the episodes of its final evaluation; IQM and mean "
                 "are over those seed scores, with 95% percentile intervals of a bootstrap over seeds "
                 f"({reps} resamples). Value overestimation: the critic's values minus the discounted returns "
                 "obtained, along evaluation trajectories (paper Fig. 5b), mean over seeds.")
    return "\n".join(lines)


def reading(agg: dict, focus: str, references: dict[str, float] | None = None) -> list[str]:
    """One line per claim that the intervals support (and say so where they support none)."""
    lines = []
    for other, p in agg["improvement"].items():
        seeds = min(agg["methods"][focus]["seeds"], agg["methods"][other]["seeds"])
        verdict = {"x": f"{focus} improves on {other}", "y": f"{other} improves on {focus}",
                   None: f"no difference between {focus} and {other} is supported"}[
            stats.improvement_verdict(p, seeds)]
        if seeds < stats.MIN_SEEDS:
            verdict = f"nothing is claimed with {seeds} seed{'s' if seeds != 1 else ''} (fewer than {stats.MIN_SEEDS})"
        lines.append(f"P({focus} > {other}) = {stats.interval_text(p, 2)}: {verdict}.")
    for name, value in (references or {}).items():
        above = [m for m, e in agg["methods"].items() if e["mean"]["ci"][0] > value]
        below = [m for m, e in agg["methods"].items() if e["mean"]["ci"][1] < value]
        lines.append(f"{name} return {value:.1f}: mean interval above it: {', '.join(above) or 'none'}; "
                     f"below it: {', '.join(below) or 'none'}.")
    return lines


def results_json(results: dict[str, list[dict]], agg: dict, references: dict[str, float] | None = None) -> dict:
    """Everything needed to recompute the statistics: every seed's final-evaluation returns (per
    episode), its score and overestimation, the aggregates, and the reference returns."""
    return {
        "runs": {m: [{**s, "score": stats.seed_score(s["returns"])} for s in seeds] for m, seeds in results.items()},
        "aggregates": agg,
        "references": references or {},
    }


def run_result(run_dir: str | Path, tag: str | None = None) -> dict:
    """The per-seed dict :func:`results_table` takes, read from a run directory: the returns of
    the last ``{tag}/returns`` record, the last ``{tag}/overestimation`` and the wall time from
    the first to the last metrics line (a pause between a stop and a resume counts too).
    ``tag`` defaults to "target_eval" for CoWorld / DV2 Finetune runs, else "eval"."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    tag = tag or eval_tag(records)
    returns = [r[f"{tag}/returns"] for r in records if isinstance(r.get(f"{tag}/returns"), list)]
    over = series(records, f"{tag}/overestimation")[1]
    times = [r["time"] for r in records if is_number(r.get("time"))]
    run_file = run_dir / "run.json"
    seed = json.loads(run_file.read_text()).get("seed") if run_file.exists() else None
    return {
        "seed": seed,
        "returns": [float(x) for x in returns[-1]] if returns else [],
        "overestimation": float(over[-1]) if len(over) else None,
        "wall_s": float(times[-1] - times[0]) if times else None,
    }


def _over_seeds(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean and std over seeds at every step where at least one seed has a value."""
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    per_step = [[v[s == step][-1] for s, v in curves if np.any(s == step)] for step in steps]
    return steps, np.array([np.mean(p) for p in per_step]), np.array([np.std(p) for p in per_step])


def plot_comparison(runs: dict[str, list[str | Path]], out_path: str | Path, key: str | None = None,
                    references: dict[str, float] | None = None) -> Path:
    """Learning curves (mean ± std over seeds) per method, and a second panel with the value
    estimate (dashed) vs the true discounted return (solid) when the runs logged them.
    ``references`` (e.g. random, dataset, expert returns) are drawn as labelled horizontal lines.

    Each run is read at its own evaluation tag ("target_eval" for CoWorld / DV2 Finetune, "eval"
    otherwise; both are indexed by target updates), unless ``key`` (e.g. "eval/return") is given.
    """
    records = {m: [read_metrics(d) for d in dirs] for m, dirs in runs.items()}

    def keys(r):
        prefix = key.rsplit("/", 1)[0] if key else eval_tag(r)
        return key or f"{prefix}/return", f"{prefix}/value_estimate", f"{prefix}/true_return"

    has_value = any(len(series(r, keys(r)[1])[0]) for rs in records.values() for r in rs)
    fig = Figure(figsize=(13 if has_value else 6.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if has_value else 1, squeeze=False)[0]
    for method, rs in records.items():
        curves = [c for c in (series(r, keys(r)[0]) for r in rs) if len(c[0])]
        if not curves:
            continue
        steps, mean, std = _over_seeds(curves)
        line = axes[0].plot(steps, mean, marker=".", label=f"{method} ({len(curves)} seeds)")[0]
        axes[0].fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        if has_value:
            for i, style, what in ((1, "--", "value estimate"), (2, "-", "true return")):
                vc = [c for c in (series(r, keys(r)[i]) for r in rs) if len(c[0])]
                if vc:
                    vs, vm, _ = _over_seeds(vc)
                    axes[1].plot(vs, vm, style, marker=".", color=line.get_color(), label=f"{method} {what}")
    if not any(ax.get_legend_handles_labels()[0] for ax in axes[:1]):
        raise UserError(f"none of the runs logged {key or 'an evaluation return'}; pass key=")
    for (name, value), style in zip((references or {}).items(), (":", "-.", "--", (0, (1, 4)))):
        axes[0].axhline(value, color="0.4", linestyle=style, linewidth=1, label=f"{name} ({value:.0f})")
    axes[0].set_title("evaluation return (mean ± std over seeds)")
    axes[0].set_ylabel("episode return")
    if has_value:
        axes[1].set_title("value estimate (dashed) vs true discounted return (solid)")
        axes[1].set_ylabel("discounted value per state")
    for ax in axes:
        ax.set_xlabel("target updates" if key is None else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    return out_path
