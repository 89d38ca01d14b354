"""Statistics for comparing methods over seeds (Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice"; the `rliable` package computes the same quantities).

Conventions used everywhere in this project:

- **Seeds are the runs axis.** A run's score on a task is the mean return over the episodes of
  its evaluation; episodes are never pooled across seeds, so an interval reflects the variation
  between independent training runs, not between evaluation episodes of one run.
- **Tasks are strata.** A method's scores are ``{task: (n_seeds,) array}``; seed counts may differ
  between tasks. Aggregates pool every (seed, task) score; the bootstrap resamples seeds with
  replacement *within* each task (stratified bootstrap), and the 95% interval is the 2.5 and 97.5
  percentiles of the resampled aggregate.

Aggregates, as rliable defines them: mean and median of the per-task means (each task's scores
averaged over its seeds first, so every task weighs the same), IQM (interquartile mean: the mean of
the middle 50% of the pooled (seed, task) scores, trimming 25% from each end), optimality gap (mean
over pooled scores of max(threshold - score, 0)), and the probability of improvement P(X > Y) (per
task, the chance that a random run of X beats a random run of Y, ties counting one half; then
averaged over tasks).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from scipy import stats as _stats

Scores = Mapping[str, np.ndarray]  # task -> per-seed scores


def seed_score(episode_returns) -> float:
    """One run's score: the mean return over its evaluation episodes."""
    arr = np.asarray(episode_returns, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("a run needs at least one evaluation episode")
    return float(arr.mean())


def _pooled(scores: Scores) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in scores.values()])


def _task_means(scores: Scores) -> np.ndarray:
    return np.array([np.asarray(v, dtype=np.float64).mean() for v in scores.values()])


def mean(scores: Scores) -> float:
    """Mean over tasks of each task's mean over seeds."""
    return float(_task_means(scores).mean())


def median(scores: Scores) -> float:
    """Median over tasks of each task's mean over seeds."""
    return float(np.median(_task_means(scores)))


def iqm(scores: Scores) -> float:
    """Interquartile mean: the 25%-trimmed mean of the pooled scores (scipy's ``trim_mean``,
    which is what rliable uses: floor(0.25 n) scores are cut from each end)."""
    return float(_stats.trim_mean(_pooled(scores), proportiontocut=0.25))


def optimality_gap(scores: Scores, threshold: float = 1.0) -> float:
    """Mean shortfall below ``threshold`` (1 for normalised scores): mean of max(threshold - x, 0)."""
    return float(np.maximum(threshold - _pooled(scores), 0.0).mean())


AGGREGATES: dict[str, Callable[[Scores], float]] = {"mean": mean, "median": median, "iqm": iqm}


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """P(X > Y): per task, the Mann-Whitney U statistic of X's runs against Y's divided by the
    number of pairs (ties count 1/2), averaged over the tasks both have."""
    tasks = sorted(set(x) & set(y))
    if not tasks:
        raise ValueError("probability of improvement needs at least one task scored by both methods")
    per_task = []
    for task in tasks:
        a = np.asarray(x[task], dtype=np.float64)[:, None]
        b = np.asarray(y[task], dtype=np.float64)[None, :]
        per_task.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(per_task))


def _resample(scores: Scores, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for task, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        out[task] = values[rng.integers(0, len(values), len(values))]
    return out


def bootstrap_ci(statistic: Callable[..., float], *methods: Scores, reps: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(*methods)`` under the stratified bootstrap: every
    method's seeds are resampled with replacement within each task, independently per method."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(_resample(m, rng) for m in methods)) for _ in range(reps)])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean_ci(values, reps: int = 2000, confidence: float = 0.95,
                      rng: np.random.Generator | None = None) -> tuple[float, float]:
    """:func:`bootstrap_ci` of the mean of one stratum's seeds, drawn in one vectorised step (for the
    many points of a learning curve); one seed gives the degenerate interval [x, x]."""
    values = np.asarray(values, dtype=np.float64).ravel()
    rng = rng if rng is not None else np.random.default_rng(0)
    boot = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(scores: Scores, reps: int = 2000, seed: int = 0) -> dict:
    """Each aggregate with its 95% interval, and the counts they rest on."""
    out = {"seeds": {t: int(len(v)) for t, v in scores.items()}, "tasks": len(scores)}
    for name, fn in AGGREGATES.items():
        lo, hi = bootstrap_ci(fn, scores, reps=reps, seed=seed)
        out[name] = {"value": fn(scores), "ci": [lo, hi]}
    return out


def compare(x: Scores, y: Scores, reps: int = 2000, seed: int = 0) -> dict:
    """P(X > Y) with its 95% interval."""
    lo, hi = bootstrap_ci(probability_of_improvement, x, y, reps=reps, seed=seed)
    return {"value": probability_of_improvement(x, y), "ci": [lo, hi]}


MIN_SEEDS = 3  # fewest seeds per task of both methods before a difference is claimed


def improvement_verdict(entry: dict, min_seeds: int) -> str | None:
    """What a ``{"value", "ci"}`` entry of P(X > Y) supports: "x" (X better: the whole interval is
    above 0.5), "y" (Y better: below 0.5), or None (the interval holds 0.5, or either method has
    fewer than MIN_SEEDS seeds in some task, where a percentile bootstrap says next to nothing)."""
    lo, hi = entry["ci"]
    if min_seeds < MIN_SEEDS:
        return None
    return "x" if lo > 0.5 else "y" if hi < 0.5 else None


def interval_text(entry: dict, digits: int = 1) -> str:
    """``"12.3 [10.1, 14.0]"`` for a ``{"value", "ci"}`` entry."""
    lo, hi = entry["ci"]
    return f"{entry['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
