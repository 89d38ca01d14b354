"""`coworld report DIR`: the tables and figures of a sweep directory (written by `coworld sweep`).

A sweep directory holds ``sweep.json``, one ``trials/<id>.json`` per trial and one run directory
``runs/<id>/`` per trial (docs/experiments.md). This module reads them and writes, into
``DIR/report`` (or ``--out``):

- ``results.csv`` (and ``results.parquet`` when pyarrow is installed): the long table, one row per
  trial, evaluation and episode;
- ``table.md`` / ``table.tex``: the paper layout (rows methods, columns tasks, an "Average" over
  tasks), each cell the mean over seeds of the final evaluation with a 95% bootstrap interval;
- ``report.md``: everything below in one page, with the trials that are missing or unfinished;
- ``improvement.png``: the probability that the focus method (CoWorld) beats each other method;
- ``curves.png``: learning curves; ``overestimation.png``: value overestimation (paper Fig. 5b);
- ``transfer.png``: the source x target heatmap of the focus method's gain over the baseline
  (paper Fig. 3), when the sweep has such a grid;
- ``alignment.png``: 2-D embedding of source and target encoder outputs on the same target
  frames, before and after alignment (paper Fig. 11).

The statistics follow :mod:`coworld.eval.stats`: a seed's score is the mean return over the
episodes of its final evaluation (episodes are averaged within a seed first), seeds are the runs
axis, tasks are strata.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from coworld.errors import UserError
from coworld.eval import stats
from coworld.run.plots import eval_tag, is_number, read_metrics

FOCUS = "CoWorld"
BASELINE = "Offline DV2"
COLUMNS = ["trial", "experiment", "group", "method", "algo", "task", "source", "target", "seed", "preset",
           "status", "eval_index", "final", "step", "progress", "episode", "return", "success",
           "value_estimate", "true_return", "overestimation", "wall_s"]
EVAL_SCALARS = ("success", "value_estimate", "true_return", "overestimation")
MIN_SEEDS = stats.MIN_SEEDS  # fewest seeds per task of every method in a comparison before a difference is marked


# -- reading a sweep directory --------------------------------------------------------------------


@dataclass
class Trial:
    info: dict  # the trial's JSON (trials/<id>.json)
    run_dir: Path
    status: str  # "finished", "unfinished" (not finished), "missing" (no metrics yet), "damaged" (unreadable)
    evals: list[dict] = field(default_factory=list)  # {"step", "returns", and EVAL_SCALARS when logged}
    wall_s: float | None = None
    error: str = ""

    @property
    def id(self) -> str:
        return str(self.info["id"])

    def get(self, key, default=None):
        value = self.info.get(key, default)
        return default if value is None else value


@dataclass
class Sweep:
    dir: Path
    experiment: str
    trials: list[Trial]


def read_evaluations(records: list[dict], tag: str) -> list[dict]:
    """Every evaluation of a run, in order: its per-episode returns (the ``{tag}/returns`` record)
    and the scalars logged with it at the same step (success rate, value estimate, true return,
    overestimation; paper Fig. 5b, coworld/run/train.py ``run_evaluation``)."""
    evals, pending = [], {}
    for r in records:
        found = {k: float(r[f"{tag}/{k}"]) for k in EVAL_SCALARS if is_number(r.get(f"{tag}/{k}"))}
        if found:
            if pending.get("step") != r.get("step"):
                pending = {"step": r.get("step")}
            pending.update(found)
        if isinstance(r.get(f"{tag}/returns"), list) and r[f"{tag}/returns"]:
            entry = {"step": r.get("step"), "returns": [float(x) for x in r[f"{tag}/returns"]]}
            if pending.get("step") == r.get("step"):
                entry.update({k: v for k, v in pending.items() if k != "step"})
            pending = {}
            evals.append(entry)
    return evals


def _finished(run_dir: Path) -> bool:
    """done.json (written when a sweep's trial finishes), else the checkpoint's finished mark."""
    if (run_dir / "done.json").exists():
        return True
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return False
    from coworld.run.checkpoint import load_checkpoint

    try:
        return bool(load_checkpoint(ckpt).get("run", {}).get("finished"))
    except Exception:  # noqa: BLE001 (a checkpoint being written right now: not finished as far as we can tell)
        return False


def _wall(run_dir: Path, records: list[dict]) -> float | None:
    done = run_dir / "done.json"
    if done.exists():
        try:
            value = json.loads(done.read_text()).get("wall_s")
            if is_number(value):
                return float(value)
        except (json.JSONDecodeError, AttributeError):
            pass
    times = [r["time"] for r in records if is_number(r.get("time"))]
    return float(times[-1] - times[0]) if times else None


def read_trial(info: dict, run_dir: Path) -> Trial:
    if not (run_dir / "metrics.jsonl").exists():
        return Trial(info, run_dir, "missing")
    try:
        records = read_metrics(run_dir)
    except UserError as exc:  # one damaged run does not stop the report; report.md names it
        return Trial(info, run_dir, "damaged", error=str(exc))
    trial = Trial(info, run_dir, "finished" if _finished(run_dir) else "unfinished")
    trial.evals = read_evaluations(records, eval_tag(records))
    trial.wall_s = _wall(run_dir, records)
    return trial


def load_sweep(path) -> Sweep:
    """Read a sweep directory; one UserError when ``path`` is not one."""
    path = Path(path)
    index = path / "sweep.json"
    if not path.is_dir() or not index.exists():
        raise UserError(f"{path} is not a sweep directory (no sweep.json); give the --out directory of "
                        "`coworld sweep` (docs/experiments.md)")
    try:
        meta = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{index} is not valid JSON ({exc}); the sweep directory is damaged") from None
    infos = {}
    for t in meta.get("trials") or []:  # the plan, then any trial file (which may be newer)
        if isinstance(t, dict) and "id" in t:
            infos[str(t["id"])] = t
    trial_dir = path / "trials"
    for f in sorted(trial_dir.glob("*.json")) if trial_dir.is_dir() else []:
        try:
            t = json.loads(f.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{f} is not valid JSON; the sweep directory is damaged") from None
        infos[str(t.get("id", f.stem))] = {"id": f.stem, **t}
    if not infos:
        raise UserError(f"{path} lists no trials (sweep.json has none and trials/ is empty)")
    for tid, t in infos.items():
        for key in ("method", "task", "seed"):
            if t.get(key) is None:
                raise UserError(f"trial {tid} of {path} has no {key!r}; the sweep directory is damaged")
    # the plan's order (sweep.json), so tables list the methods and tasks as the experiment file does
    trials = [read_trial(info, path / "runs" / tid) for tid, info in infos.items()]
    return Sweep(path, str(meta.get("experiment", path.name)), trials)


# -- the long table -------------------------------------------------------------------------------


def long_rows(sweep: Sweep) -> list[dict]:
    """One row per trial, evaluation and episode (COLUMNS); a trial without an evaluation gets one
    row with its status and empty values, so the table lists every trial."""
    rows = []
    for t in sweep.trials:
        base = {"trial": t.id, "experiment": t.get("experiment", sweep.experiment), "group": t.get("group", ""),
                "method": t.info["method"], "algo": t.get("algo", ""), "task": t.info["task"],
                "source": "+".join(t.get("source", [])) if isinstance(t.get("source"), list) else t.get("source", ""),
                "target": t.get("target", ""), "seed": t.info["seed"], "preset": t.get("preset", ""),
                "status": t.status, "wall_s": t.wall_s}
        if not t.evals:
            rows.append({**base})
            continue
        last_step = t.evals[-1]["step"]
        for i, ev in enumerate(t.evals):
            final = i == len(t.evals) - 1
            progress = ev["step"] / last_step if t.status == "finished" and last_step else None
            for j, ret in enumerate(ev["returns"]):
                rows.append({**base, "eval_index": i, "final": final, "step": ev["step"], "progress": progress,
                             "episode": j, "return": ret, **{k: ev.get(k) for k in EVAL_SCALARS}})
    return rows


def write_long_table(rows: list[dict], out: Path) -> list[Path]:
    """results.csv (stdlib csv; empty cell = not logged), and results.parquet if pyarrow is installed."""
    written = [out / "results.csv"]
    with open(written[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({k: [r.get(k) for r in rows] for k in COLUMNS})
    pq.write_table(table, out / "results.parquet")
    written.append(out / "results.parquet")
    return written


# -- statistics -----------------------------------------------------------------------------------


def included(trial: Trial, partial: bool) -> bool:
    return bool(trial.evals) and (trial.status == "finished" or partial)


def final_scores(sweep: Sweep, partial: bool = False, value: str = "return") -> dict:
    """``{group: {method: {task: [per-seed values]}}}`` from each trial's final evaluation: for
    "return" the seed's mean over the episodes (stats.seed_score), otherwise the logged scalar
    (e.g. "overestimation"). Unfinished trials count only with ``partial``."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for t in sweep.trials:
        if not included(t, partial):
            continue
        ev = t.evals[-1]
        v = stats.seed_score(ev["returns"]) if value == "return" else ev.get(value)
        if v is not None:
            out[t.get("group", "")][t.info["method"]][t.info["task"]].append(float(v))
    return out


def episodes_per_eval(sweep: Sweep, partial: bool = False) -> list[int]:
    return sorted({len(t.evals[-1]["returns"]) for t in sweep.trials if included(t, partial)})


def _entry(fn, scores: dict, reps: int) -> dict:
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    lo, hi = stats.bootstrap_ci(fn, arrays, reps=reps)
    return {"value": fn(arrays), "ci": [lo, hi], "seeds": sum(len(v) for v in arrays.values()),
            "tasks": len(arrays), "min_seeds": min(len(v) for v in arrays.values())}


def cells(by_method: dict, reps: int = 2000) -> dict:
    """Per method: per task the mean over seeds with its 95% bootstrap interval (resampling seeds),
    and "Average" entries over the method's tasks with tasks as strata: "mean" (mean of task means)
    and "iqm" (interquartile mean of the pooled (seed, task) scores), each with its interval."""
    out = {}
    for method, tasks in by_method.items():
        row = {task: _entry(stats.mean, {task: v}, reps) for task, v in tasks.items()}
        row["__mean__"] = _entry(stats.mean, tasks, reps)
        row["__iqm__"] = _entry(stats.iqm, tasks, reps)
        out[method] = row
    return out


def supported_best(column: dict[str, dict | None], higher: bool = True) -> str | None:
    """The method whose entry is best AND whose 95% interval lies entirely above (below, for
    ``higher=False``) every other method's interval; None when the intervals do not support a
    single best, or when any method has fewer than MIN_SEEDS seeds per task (a percentile
    bootstrap over one or two seeds says next to nothing)."""
    present = {m: e for m, e in column.items() if e is not None}
    if len(present) < 2 or any(e.get("min_seeds", e["seeds"]) < MIN_SEEDS for e in present.values()):
        return None
    sign = 1 if higher else -1
    best = max(present, key=lambda m: sign * present[m]["value"])
    lo, hi = present[best]["ci"]
    others = [e["ci"] for m, e in present.items() if m != best]
    if higher and all(lo > o[1] for o in others):
        return best
    if not higher and all(hi < o[0] for o in others):
        return best
    return None


def improvements(by_method: dict, focus: str, reps: int = 2000) -> dict:
    """P(focus > other) with its 95% interval for every other method, over the tasks both have."""
    if focus not in by_method:
        return {}
    out = {}
    for other, tasks in by_method.items():
        shared = sorted(set(tasks) & set(by_method[focus]))
        if other == focus or not shared:
            continue
        x = {t: np.asarray(by_method[focus][t]) for t in shared}
        y = {t: np.asarray(tasks[t]) for t in shared}
        out[other] = {**stats.compare(x, y, reps=reps), "tasks": len(shared),
                      "min_seeds": int(min(min(len(x[t]), len(y[t])) for t in shared))}
    return out


def _mean_band(values: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over seeds and its 95% bootstrap interval over seeds (stats.bootstrap_mean_ci)."""
    return (float(np.mean(values)), *stats.bootstrap_mean_ci(values, reps, rng=rng))


# -- tables ---------------------------------------------------------------------------------------


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def cell_text(e: dict | None, digits: int = 1, seeds: int | None = None) -> tuple[str, str]:
    """(value, interval) strings; an interval only from two or more seeds per task."""
    if e is None:
        return "–", ""
    value = _num(e["value"], digits)
    if e["seeds"] < 2 * e.get("tasks", 1):
        return value, "(1 seed)"
    ci = f"[{_num(e['ci'][0], digits)}, {_num(e['ci'][1], digits)}]"
    if seeds is not None and e["seeds"] != seeds:
        ci += f" (n={e['seeds']})"
    return value, ci


def _md(text) -> str:
    return str(text).replace("|", "\\|")


def latex_escape(text) -> str:
    text = str(text)
    out = []
    for ch in text:
        out.append({"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                    "<": r"\textless{}", ">": r"\textgreater{}"}.get(ch, ch))
    return "".join(out).replace(r"-\textgreater{}", r"$\to$")


AVERAGES = (("__mean__", "Average (mean)"), ("__iqm__", "Average (IQM)"))


def table_columns(table: dict, tasks: list[str]) -> list[tuple[str, str]]:
    """The tasks, then the two averages (left out for a single task, where they repeat its column)."""
    return [(t, t) for t in tasks] + (list(AVERAGES) if len(tasks) > 1 else [])


def paper_table(table: dict, tasks: list[str], digits: int = 1, higher: bool | None = True) -> dict:
    """The layout both renderers draw: header, one row per method of (value, interval, bold) cells.
    ``higher``: whether higher is better (bold per :func:`supported_best`); None marks nothing."""
    columns = table_columns(table, tasks)
    counts = [e["seeds"] for row in table.values() for t, e in row.items() if not t.startswith("__")]
    common = max(set(counts), key=counts.count) if counts else None
    bold = {key: None if higher is None else supported_best({m: row.get(key) for m, row in table.items()}, higher)
            for key, _ in columns}
    rows = []
    for method, row in table.items():
        partial_tasks = [t for t in tasks if t not in row]
        cells_ = []
        for key, _ in columns:
            e = row.get(key)
            value, ci = cell_text(e, digits, None if key.startswith("__") else common)
            if key.startswith("__") and partial_tasks and e is not None:
                ci += f" ({e['tasks']}/{len(tasks)} tasks)"
            cells_.append((value, ci, bold[key] == method))
        rows.append((method, cells_))
    return {"header": [label for _, label in columns], "rows": rows, "seeds": common}


def markdown_table(layout: dict) -> str:
    header = ["method"] + layout["header"]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, row in layout["rows"]:
        texts = []
        for value, ci, bold in row:
            value = f"**{value}**" if bold else value
            texts.append(f"{value} {ci}".strip())
        lines.append("| " + " | ".join([_md(method)] + [_md(t) for t in texts]) + " |")
    return "\n".join(lines)


def latex_table(layout: dict, caption: str, label: str) -> str:
    n = len(layout["header"])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", r"\begin{tabular}{l" + "r" * n + "}", r"\toprule",
             " & ".join(["Method"] + [latex_escape(h) for h in layout["header"]]) + r" \\", r"\midrule"]
    for method, row in layout["rows"]:
        texts = []
        for value, ci, bold in row:
            value = rf"\textbf{{{value}}}" if bold else value
            texts.append(value + (rf" {{\scriptsize {latex_escape(ci)}}}" if ci else ""))
        lines.append(" & ".join([latex_escape(method)] + texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def improvement_markdown(imp: dict, focus: str) -> str:
    lines = ["| comparison | P(X > Y) [95% CI] | tasks | what the interval supports |", "| --- | ---: | ---: | --- |"]
    for other, p in imp.items():
        few = p.get("min_seeds", MIN_SEEDS) < MIN_SEEDS
        verdict = {"x": f"{focus} better", "y": f"{other} better", None: "no difference supported"}[
            stats.improvement_verdict(p, p.get("min_seeds", MIN_SEEDS))]
        if few:
            verdict = f"nothing: fewer than {MIN_SEEDS} seeds per task"
        lines.append(f"| {_md(focus)} > {_md(other)} | {stats.interval_text(p, 2)} | {p['tasks']} | {verdict} |")
    return "\n".join(lines)


def improvement_latex(imp: dict, focus: str, label: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             (rf"\caption{{Probability of improvement of {latex_escape(focus)} over each method, with 95\% "
             r"stratified-bootstrap intervals.}"), rf"\label{{{label}}}", r"\begin{tabular}{lrr}", r"\toprule",
             r"Comparison & $P(X > Y)$ & Tasks \\", r"\midrule"]
    for other, p in imp.items():
        lo, hi = p["ci"]
        lines.append(rf"{latex_escape(focus)} $>$ {latex_escape(other)} & {p['value']:.2f} "
                     rf"{{\scriptsize [{lo:.2f}, {hi:.2f}]}} & {p['tasks']} \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


# -- figures --------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _panels(n: int, width: float = 4.2, height: float = 3.3):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(width * cols + 1.5, 7.5), height * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def curve_data(sweep: Sweep, key: str, partial: bool, reps: int = 1000) -> dict:
    """``{(group, task): {method: (steps, mean, lo, hi, n_seeds)}}``: per evaluation step, the mean
    over seeds of the seed's value (its episodes' mean return for "return", else the logged
    scalar) with a bootstrap band over seeds. Every trial with evaluations counts (unfinished ones
    only with ``partial``)."""
    per: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for t in sweep.trials:
        if not included(t, partial):
            continue
        for ev in t.evals:
            v = stats.seed_score(ev["returns"]) if key == "return" else ev.get(key)
            if v is not None:
                per[(t.get("group", ""), t.info["task"])][t.info["method"]][ev["step"]][t.id] = v
    rng = np.random.default_rng(0)
    out: dict = {}
    for panel, methods in per.items():
        out[panel] = {}
        for method, by_step in methods.items():
            steps = sorted(by_step)
            band = np.array([_mean_band(np.array(list(by_step[s].values())), reps, rng) for s in steps])
            seeds = len({tid for s in steps for tid in by_step[s]})
            out[panel][method] = (np.array(steps, dtype=float), band[:, 0], band[:, 1], band[:, 2], seeds)
    return out


def _colors(methods: list[str]) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_curves(data: dict, path: Path, ylabel: str, title: str, methods: list[str], zero_line: bool = False) -> Path:
    fig, axes = _panels(len(data))
    colors = _colors(methods)
    for ax, ((group, task), by_method) in zip(axes, sorted(data.items())):
        for method in methods:
            if method not in by_method:
                continue
            steps, mean, lo, hi, n = by_method[method]
            ax.plot(steps, mean, marker=".", color=colors[method], label=f"{method} ({n} seeds)")
            ax.fill_between(steps, lo, hi, color=colors[method], alpha=0.2, linewidth=0)
        if zero_line:
            ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_title(f"{task}" + (f" [{group}]" if group else ""), fontsize=9)
        ax.set_xlabel("evaluation step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(textwrap.fill(title, 100), fontsize=9)
    return _save(fig, path)


def plot_improvement(imps: dict, path: Path, focus: str) -> Path:
    """P(focus > other) with 95% intervals, one row per (group, other method)."""
    items = [(f"{other}" + (f" [{g}]" if g else ""), p) for g, imp in imps.items() for other, p in imp.items()]
    fig = Figure(figsize=(6.5, 0.5 * len(items) + 1.4), layout="constrained")
    ax = fig.subplots()
    for i, (name, p) in enumerate(items):
        lo, hi = p["ci"]
        ax.plot([lo, hi], [i, i], color="C0", linewidth=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([p["value"]], [i], "o", color="C0")
    ax.axvline(0.5, color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(f"P({focus} > Y), 95% stratified-bootstrap interval")
    ax.set_title(f"probability of improvement of {focus} over each method Y", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def transfer_grid(sweep: Sweep, focus: str, baseline: str, partial: bool, reps: int = 2000) -> dict:
    """``{group: {(source, target): entry}}``: the focus method's mean final return on ``target``
    trained with ``source`` minus the baseline's mean final return on the same target (same
    group), with a 95% interval from resampling both methods' seeds. Empty when no pair exists.

    Rows: each single source of the focus method; and, as one row named by its method label, every
    multi-source method of the same algorithm (e.g. "CoWorld (multi-source)", the last row of the
    paper's Fig. 3), whose candidate sources differ per target."""
    focus_algos = {t.get("algo") for t in sweep.trials if t.info["method"] == focus}
    focus_runs: dict = defaultdict(lambda: defaultdict(list))
    base_runs: dict = defaultdict(lambda: defaultdict(list))
    for t in sweep.trials:
        if not included(t, partial) or not t.get("target"):
            continue
        score = stats.seed_score(t.evals[-1]["returns"])
        sources = t.get("source", [])
        sources = sources if isinstance(sources, list) else [str(sources)]
        if t.info["method"] == focus and len(sources) == 1:
            focus_runs[t.get("group", "")][(sources[0], t.info["target"])].append(score)
        elif len(sources) > 1 and t.get("algo") in focus_algos:
            focus_runs[t.get("group", "")][(t.info["method"], t.info["target"])].append(score)
        elif t.info["method"] == baseline:
            base_runs[t.get("group", "")][t.info["target"]].append(score)

    def diff(x, y):
        return stats.mean(x) - stats.mean(y)

    out: dict = {}
    for group, pairs in focus_runs.items():
        for (source, target), scores in pairs.items():
            base = base_runs[group].get(target)
            if not base:
                continue
            x, y = {"t": np.asarray(scores)}, {"t": np.asarray(base)}
            lo, hi = stats.bootstrap_ci(diff, x, y, reps=reps)
            out.setdefault(group, {})[(source, target)] = {
                "value": diff(x, y), "ci": [lo, hi], "seeds": [len(scores), len(base)],
                "focus": stats.mean(x), "baseline": stats.mean(y)}
    return out


def transfer_mark(e: dict) -> str:
    """"*" where the difference's 95% interval excludes 0 and both methods have at least MIN_SEEDS
    seeds (as for bold cells and the probability-of-improvement verdicts), else ""."""
    lo, hi = e["ci"]
    return "*" if (lo > 0 or hi < 0) and min(e["seeds"]) >= MIN_SEEDS else ""


def _short(env_id: str) -> str:
    return str(env_id).split(":", 1)[-1]


def plot_transfer(grid: dict, path: Path, focus: str, baseline: str) -> Path:
    fig, axes = _panels(len(grid), width=4.8, height=4.0)
    for ax, (group, pairs) in zip(axes, sorted(grid.items())):
        sources, targets = _rows(pairs), sorted({t for _, t in pairs})
        m = np.full((len(sources), len(targets)), np.nan)
        for (s, t), e in pairs.items():
            m[sources.index(s), targets.index(t)] = e["value"]
        lim = float(np.nanmax(np.abs(m))) or 1.0
        from matplotlib import colormaps

        cmap = colormaps["RdBu"].with_extremes(bad="0.85")  # grey: no such (source, target) pair
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        for (s, t), e in pairs.items():
            mark = transfer_mark(e)
            ax.text(targets.index(t), sources.index(s), f"{e['value']:+.1f}{mark}", ha="center", va="center",
                    fontsize=8, color="white" if abs(e["value"]) > 0.6 * lim else "black")
        ax.set_xticks(range(len(targets)), [_short(t) for t in targets], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(sources)), [_short(s) for s in sources], fontsize=8)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"{focus} - {baseline}" + (f" [{group}]" if group else ""), fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="return difference")
    fig.suptitle(textwrap.fill("transfer: final return gain over the baseline on the same target "
                               f"(* = 95% interval excludes 0, at least {MIN_SEEDS} seeds each; grey = pair not in "
                               "the sweep)", 80), fontsize=9)
    return _save(fig, path)


def _rows(pairs: dict) -> list[str]:
    """Single sources (env ids, sorted), then the multi-source rows (method labels)."""
    return sorted({s for s, _ in pairs}, key=lambda s: (":" not in s, s))


def transfer_markdown(pairs: dict) -> str:
    sources = _rows(pairs)
    targets = sorted({t for _, t in pairs})
    lines = ["| source \\ target | " + " | ".join(_md(_short(t)) for t in targets) + " |",
             "| --- |" + " ---: |" * len(targets)]
    for s in sources:
        texts = []
        for t in targets:
            e = pairs.get((s, t))
            texts.append("–" if e is None else f"{e['value']:+.1f} [{e['ci'][0]:+.1f}, {e['ci'][1]:+.1f}]")
        lines.append(f"| {_md(_short(s))} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


# -- the alignment picture (paper Fig. 11) ----------------------------------------------------------


def target_frames(dataset, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` frames (uint8 (n, 64, 64, 3)) of a dataset: episodes in a seeded random order, a
    few random frames from each, so the sample covers many episodes without loading them all."""
    from coworld.data.episodes import list_episode_files, load_episode

    files = list_episode_files(dataset)
    if not files:
        raise UserError(f"{dataset} holds no episodes; the alignment picture needs the target dataset")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    per = max(1, math.ceil(n / min(len(files), 20)))
    frames = []
    for i in order:
        images = load_episode(files[i])["image"]
        take = rng.choice(len(images), size=min(per, len(images)), replace=False)
        frames.append(images[np.sort(take)])
        if sum(len(f) for f in frames) >= n:
            break
    return np.concatenate(frames)[:n]


def embed_2d(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D embedding: t-SNE (scikit-learn) when installed, else PCA (with the method named)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        centred = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T, "PCA (scikit-learn is not installed: no t-SNE)"
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points), "t-SNE"


def alignment_embeddings(run_dir: Path, frames: int = 300, seed: int = 0) -> dict:
    """Encoder outputs of a CoWorld run on the same target frames: the selected source agent's
    encoder and the target agent's encoder from the final checkpoint ("after"), and a freshly
    initialised target encoder built from the run's config with the run's seed ("before": the
    target model before any training, hence before state alignment). The encoder outputs are
    the embeddings that stage A aligns (docs/algorithms.md#stage-a)."""
    import torch

    from coworld.algos.coworld import embedding_kl
    from coworld.algos.dreamer import DreamerAgent
    from coworld.run.api import load_run
    from coworld.run.cotrain import target_agent

    run_dir, run_args, cfg, state = load_run(run_dir)
    if run_args.get("algo") != "coworld" or "target_agent" not in state:
        raise UserError(f"{run_dir} is not a CoWorld run; the alignment picture needs one")
    selected = int(state.get("counters", {}).get("selected", 0))
    dims = state["dims"]
    images = torch.from_numpy(target_frames(run_args["target_dataset"], frames, seed))

    def encoder(name: str | None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            make = target_agent if name in (None, "target_agent") else DreamerAgent
            agent = make(cfg, dims["target_agent" if name is None else name])
        if name is not None:
            agent.load_checkpoint_state(state[name])
        agent.wm.eval()
        with torch.no_grad():
            return torch.cat([agent.wm.encode(images[i:i + 100]).float() for i in range(0, len(images), 100)])

    source = encoder(f"source{selected}_agent")
    after, before = encoder("target_agent"), encoder(None)
    return {"source": source.numpy(), "before": before.numpy(), "after": after.numpy(),
            "kl_before": float(embedding_kl(source, before).mean()),
            "kl_after": float(embedding_kl(source, after).mean()),
            "source_env": (run_args.get("source") or ["?"])[selected], "frames": len(images),
            "target_updates": int(state["target_agent"]["updates"])}


def plot_alignment(results: list[tuple[str, dict]], path: Path) -> tuple[Path, str]:
    fig = Figure(figsize=(9.5, 4.2 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    method = ""
    for row, (trial_id, e) in zip(axes, results):
        for ax, when in zip(row, ("before", "after")):
            pts, method = embed_2d(np.concatenate([e["source"], e[when]]))
            n = len(e["source"])
            ax.scatter(pts[:n, 0], pts[:n, 1], s=6, alpha=0.6, label=f"source encoder ({_short(e['source_env'])})")
            ax.scatter(pts[n:, 0], pts[n:, 1], s=6, alpha=0.6, label="target encoder")
            what = "initial target encoder" if when == "before" else f"after {e['target_updates']} target updates"
            ax.set_title(f"{trial_id}: {when} alignment ({what})\nembedding KL(S || T) = {e['kl_' + when]:.3f}",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(f"{method} of encoder outputs on the same {results[0][1]['frames']} target frames", fontsize=10)
    return _save(fig, path), method


# -- the whole report -----------------------------------------------------------------------------


def _group_title(group: str) -> str:
    return f" ({group})" if group else ""


def _methods_order(sweep: Sweep, focus: str) -> list[str]:
    seen = []
    for t in sweep.trials:
        if t.info["method"] not in seen:
            seen.append(t.info["method"])
    return sorted(seen, key=lambda m: (m != focus, seen.index(m)))


def _tasks_order(sweep: Sweep, group: str) -> list[str]:
    seen = []
    for t in sweep.trials:
        if t.get("group", "") == group and t.info["task"] not in seen:
            seen.append(t.info["task"])
    return seen


def build_report(sweep_dir, out=None, *, focus: str = FOCUS, baseline: str = BASELINE, reps: int = 2000,
                 partial: bool = False, alignment_trials: int = 1, alignment_frames: int = 300,
                 digits: int = 1) -> dict:
    """Write every table and figure of the report into ``out`` (default SWEEP/report); returns
    ``{"out", "files", "notes", "summary"}``."""
    sweep = load_sweep(sweep_dir)
    out = Path(out) if out else sweep.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = write_long_table(long_rows(sweep), out)
    notes: list[str] = []
    methods = _methods_order(sweep, focus)
    scores = final_scores(sweep, partial)
    counts = defaultdict(list)
    for t in sweep.trials:
        counts[t.status].append(t)
    no_eval = [t for t in sweep.trials if t.status != "missing" and not t.evals]
    summary: dict = {"experiment": sweep.experiment, "trials": len(sweep.trials),
                     "status": {k: [t.id for t in v] for k, v in counts.items()}, "groups": {}}
    md = [f"# Report: {sweep.experiment}", "",
          (f"Sweep directory `{sweep.dir}`: {len(sweep.trials)} trials, {len(counts['finished'])} finished, "
          f"{len(counts['unfinished'])} unfinished, {len(counts['missing'])} not started.")]
    for label, trials in (("Not started (no metrics yet)", counts["missing"]),
                          ("Unfinished" + ("" if partial else " (left out of the tables; --partial uses "
                                           "their latest evaluation)"), counts["unfinished"]),
                          ("Without any evaluation", [t for t in no_eval if t.status != "damaged"]),
                          ("Unreadable (left out)", counts["damaged"])):
        if trials:
            md.append(f"{label}: " + ", ".join(f"`{t.id}`" for t in trials) + ".")
    episodes = episodes_per_eval(sweep, partial)
    ep_text = "-".join(str(e) for e in (episodes[0], episodes[-1])) if len(set(episodes)) > 1 else \
        (str(episodes[0]) if episodes else "0")
    ep_text += " episode" if ep_text == "1" else " episodes"
    md += ["", (f"Each seed's score is the mean return over the {ep_text} of its final evaluation "
           "(episodes are averaged within a seed first); a cell is the mean over seeds with the 95% percentile "
           f"interval of a bootstrap over seeds ({reps} resamples); the averages pool the tasks as strata "
           "(mean of task means; IQM of the pooled (seed, task) scores) with stratified-bootstrap intervals; "
           "the scores are raw returns, not normalised per task, so a task with larger returns weighs more "
           "in both averages. "
           "A value is in bold only where its interval lies entirely above every other method's in that column "
           f"and every method has at least {MIN_SEEDS} seeds per task."),
           ""]
    fewest = min((len(v) for g in scores.values() for m in g.values() for v in m.values()), default=0)
    if 0 < fewest < 5:
        md[-2] += (f" With as few as {fewest} seed{'s' if fewest > 1 else ''} per cell a percentile bootstrap "
                   "understates the uncertainty (it cannot see beyond the seeds it has): read these intervals "
                   "as descriptive, not as tests.")
    tex, imps, tables_md = [], {}, [md[-2], ""]
    if not any(scores.values()):
        notes.append("no trial has a final evaluation yet" + ("" if partial else
                                                               " (unfinished trials count with --partial)"))
    for gi, group in enumerate(sorted(scores)):
        by_method = {m: dict(scores[group][m]) for m in methods if m in scores[group]}
        tasks = [t for t in _tasks_order(sweep, group) if any(t in v for v in by_method.values())]
        table = cells(by_method, reps)
        layout = paper_table(table, tasks, digits)
        seeds = layout["seeds"]
        caption = (f"Final evaluation return{_group_title(group)}: mean over {seeds} seeds"
                   f" ({ep_text} per evaluation, averaged within a seed) with 95% bootstrap intervals; "
                   "averages over tasks as strata. Bold: interval above every other method's.")
        section = [f"## Final return{_group_title(group)}", "", markdown_table(layout), "",
                   (f"{seeds} seed{'s' if seeds != 1 else ''} per cell (a cell with another count says n=), "
                   f"{ep_text} per evaluation."), ""]
        tex.append(latex_table(layout, caption, f"tab:{sweep.experiment}-{gi}"))
        imp = improvements(by_method, focus, reps)
        if imp:
            imps[group] = imp
            section += [f"### Probability of improvement{_group_title(group)}", "", improvement_markdown(imp, focus), ""]
            tex.append(improvement_latex(imp, focus, f"tab:{sweep.experiment}-poi-{gi}"))
        md += section
        tables_md += section
        over = final_scores(sweep, partial, "overestimation").get(group, {})
        if over:
            ot = cells({m: dict(over[m]) for m in methods if m in over}, reps)
            otasks = [t for t in tasks if any(t in v for v in over.values())]
            md += [f"### Value overestimation at the final evaluation{_group_title(group)}", "",
                   ("The critic's value minus the discounted return obtained from the same states along the "
                   "evaluation episodes (paper Fig. 5b; 0 = calibrated); mean over seeds, 95% intervals; "
                   "nothing is marked best."), "",
                   markdown_table(paper_table(ot, otasks, digits=2, higher=None)), ""]
        summary["groups"][group] = {
            "cells": {m: {("Average (mean)" if k == "__mean__" else "Average (IQM)" if k == "__iqm__" else k): v
                          for k, v in row.items()} for m, row in table.items()},
            "improvement": imp}
    (out / "table.md").write_text("\n".join(tables_md) + "\n")
    (out / "table.tex").write_text("% written by `coworld report`; needs \\usepackage{booktabs}\n"
                                   + "\n\n".join(tex) + "\n")
    files += [out / "table.md", out / "table.tex"]
    if imps:
        files.append(plot_improvement(imps, out / "improvement.png", focus))
        md += ["![probability of improvement](improvement.png)", ""]
    else:
        notes.append(f"no probability of improvement: no method {focus!r} with results (--focus names it)")

    curves = curve_data(sweep, "return", partial)
    if curves:
        files.append(plot_curves(curves, out / "curves.png", "evaluation return",
                                 "learning curves: mean over seeds of each seed's mean episode return, 95% bootstrap "
                                 "band over seeds", methods))
        md += ["## Learning curves", "", ("Evaluation step: target gradient updates (offline and co-training "
               "methods), environment steps (online methods)."), "", "![learning curves](curves.png)", ""]
    over_curves = curve_data(sweep, "overestimation", partial)
    if over_curves:
        files.append(plot_curves(over_curves, out / "overestimation.png", "value - true discounted return",
                                 "value overestimation over training (paper Fig. 5b): mean over seeds, 95% "
                                 "bootstrap band", methods, zero_line=True))
        md += ["## Value overestimation (Fig. 5b)", "", "![value overestimation](overestimation.png)", ""]
    else:
        notes.append("no value overestimation logged (only agents with a critic evaluated in an env log it)")

    grid = transfer_grid(sweep, focus, baseline, partial, reps)
    if grid:
        files.append(plot_transfer(grid, out / "transfer.png", focus, baseline))
        md += [f"## Transfer (Fig. 3): {focus} minus {baseline} on the same target", ""]
        for group, pairs in sorted(grid.items()):
            md += [(f"Mean final return of {focus} with each source minus {baseline}'s on the same target"
                   f"{_group_title(group)}, 95% interval from resampling both methods' seeds:"), "",
                   transfer_markdown(pairs), ""]
        md += ["![transfer heatmap](transfer.png)", ""]
        summary["transfer"] = {g: {f"{s} -> {t}": e for (s, t), e in p.items()} for g, p in grid.items()}
    else:
        notes.append(f"no transfer heatmap: the sweep has no {focus} trial with a source and a target whose "
                     f"target also has a finished {baseline} trial")

    if alignment_trials > 0:
        candidates = [t for t in sweep.trials if t.get("algo") == "coworld" and t.status == "finished"
                      and (t.run_dir / "checkpoint.pt").exists()]
        if candidates:
            results = []
            for t in candidates[:alignment_trials]:
                try:
                    results.append((t.id, alignment_embeddings(t.run_dir, alignment_frames, seed=0)))
                except UserError as exc:  # e.g. the target dataset is not on this machine
                    notes.append(f"no alignment picture for {t.id}: {exc}")
        if candidates and results:
            path, how = plot_alignment(results, out / "alignment.png")
            files.append(path)
            if not how.startswith("t-SNE"):
                notes.append(f"alignment picture drawn with {how}")
            md += ["## Latent alignment (Fig. 11)", "",
                   (f"{how} of encoder outputs (the embeddings stage A aligns) on the same target-dataset frames: "
                   "the selected source agent's encoder and the target agent's encoder from the final checkpoint "
                   "(after), and a freshly initialised target encoder with the run's seed (before). Embedding "
                   "KL(S || T) is stage A's distance, per frame, averaged:"), ""]
            for tid, e in results:
                md.append(f"- `{tid}`: {e['kl_before']:.3f} before, {e['kl_after']:.3f} after "
                          f"({e['frames']} frames, source {e['source_env']}).")
            md += ["", "![latent alignment](alignment.png)", ""]
            summary["alignment"] = {tid: {k: e[k] for k in ("kl_before", "kl_after", "frames", "source_env")}
                                    for tid, e in results}
        elif not candidates:
            notes.append("no alignment picture: no finished CoWorld trial with a checkpoint")
    if notes:
        md += ["## Notes", ""] + [f"- {n}." for n in notes] + [""]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    files += [out / "report.md", out / "summary.json"]
    return {"out": out, "files": files, "notes": notes, "summary": summary}


def main(args) -> int:
    import torch

    if args.reps < 1 or args.alignment_frames < 2 or args.alignment_trials < 0:
        raise UserError("--reps must be at least 1, --alignment-frames at least 2 and --alignment-trials at least 0")
    torch.set_num_threads(max(1, args.threads))
    result = build_report(args.dir, args.out, focus=args.focus, baseline=args.baseline, reps=args.reps,
                          partial=args.partial, alignment_trials=args.alignment_trials,
                          alignment_frames=args.alignment_frames)
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {len(result['files'])} files to {result['out']}:")
    for f in result["files"]:
        print(f"  {f}")
    return 0


def register(sub, groups=None) -> None:
    p = sub.add_parser("report", help="tables and figures of a sweep directory (coworld sweep --out)",
                       description="Gather every trial's evaluations of a sweep directory into one table file "
                                   "and write the paper-layout tables (Markdown, LaTeX), the probability of "
                                   "improvement, learning curves, the transfer heatmap, the value-overestimation "
                                   "figure and the latent-alignment picture. docs/experiments.md#reports.")
    p.add_argument("dir", help="the sweep directory (the --out of `coworld sweep`)")
    p.add_argument("--out", default=None, help="where to write the report (default DIR/report)")
    p.add_argument("--focus", default=FOCUS, help="the method compared with every other (default %(default)s)")
    p.add_argument("--baseline", default=BASELINE,
                   help="the method the transfer heatmap subtracts on the same target (default %(default)s)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--partial", action="store_true",
                   help="count unfinished trials too, at their latest evaluation (default: finished trials only)")
    p.add_argument("--alignment-trials", type=int, default=1,
                   help="CoWorld trials drawn in the alignment picture; 0 skips it (default %(default)s)")
    p.add_argument("--alignment-frames", type=int, default=300,
                   help="target frames embedded per trial in the alignment picture (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the alignment encoders (default 1)")
    p.set_defaults(func=main)
