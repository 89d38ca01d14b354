"""Comparing methods over seeds: a results table and learning curves.

The protocol (SPEC 11): each seed's score is the mean return over the episodes of its
FINAL evaluation; a method's score is the mean of its seeds' scores, and the spread shown
is the standard deviation of those per-seed means (population std, ddof = 0), never the
spread over pooled episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from coworld.errors import UserError
from coworld.eval.plots import eval_tag, is_number, read_metrics, series


def _mean_std(values) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def results_table(results: dict[str, list[dict]]) -> str:
    """A markdown table, one row per method, from per-seed results.

    ``results[method]`` is a list with one dict per seed: ``{"seed": int, "returns": [the
    per-episode returns of the final evaluation], "overestimation": float | None,
    "wall_s": float}`` (:func:`run_result` reads one from a run directory).
    """
    header = ["method", "final return", "seeds", "episodes / eval", "value overestimation", "wall time / seed"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, seeds in results.items():
        if not seeds:
            raise UserError(f"method {method!r} has no seeds to report")
        for s in seeds:
            if not s.get("returns"):
                raise UserError(f"method {method!r}, seed {s.get('seed')}: no final-evaluation returns; "
                                "did the run finish its final evaluation?")
        mean, std = _mean_std([np.mean(s["returns"]) for s in seeds])
        counts = sorted({len(s["returns"]) for s in seeds})
        episodes = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        over = [s["overestimation"] for s in seeds if s.get("overestimation") is not None]
        over_text = "n/a" if not over else "{:.1f} ± {:.1f}".format(*_mean_std(over))
        if over and len(over) < len(seeds):
            over_text += f" ({len(over)} seeds)"
        wall = [s["wall_s"] for s in seeds if s.get("wall_s") is not None]
        wall_text = _duration(float(np.mean(wall))) if wall else "n/a"
        row = [method, f"{mean:.1f} ± {std:.1f}", str(len(seeds)), episodes, over_text, wall_text]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Final return: mean over seeds of each seed's mean return over the episodes of its final "
                 "evaluation; ± is the std (ddof=0) over those seed means, not over episodes. Value "
                 "overestimation: critic value estimate minus the true discounted return along evaluation "
                 "trajectories (paper Fig. 5b), mean ± std over seeds.")
    return "\n".join(lines)


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


def plot_comparison(runs: dict[str, list[str | Path]], out_path: str | Path, key: str | None = None) -> Path:
    """Learning curves (mean ± std over seeds) per method, and a second panel with the value
    estimate (dashed) vs the true discounted return (solid) when the runs logged them.

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
    axes[0].set_title("evaluation return (mean ± std over seeds)")
    if has_value:
        axes[1].set_title("value estimate (dashed) vs true discounted return (solid)")
    for ax in axes:
        ax.set_xlabel("target updates" if key is None else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    return out_path
