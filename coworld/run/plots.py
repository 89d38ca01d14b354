"""Plots of one run from its RUN/metrics.jsonl: one summary picture, a panel per quantity present.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas) and never ``pyplot``,
so plotting works headless and never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from coworld.errors import UserError

METRICS = "metrics.jsonl"
EVAL_TAGS = ("eval", "target_eval")
LOSS_KEY = re.compile(r"^(train|target|source\d+)/(model/loss|actor/loss|critic/loss|coworld/align_loss|"
                      r"coworld/value_constraint)$")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of RUN/metrics.jsonl, in order. A half-written last line (a run killed
    while writing) is skipped; a damaged line elsewhere is an error."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        raise UserError(f"{path} does not exist; give a coworld run directory (one `coworld train --logdir` wrote)")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path} line {i + 1} is not valid JSON; the file is damaged") from None
    return records


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every record holding a number under ``key``."""
    pairs = [(r["step"], float(r[key])) for r in records if is_number(r.get(key))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def numeric_keys(records: list[dict], pattern: re.Pattern | str) -> list[str]:
    """Sorted keys matching ``pattern`` that hold a number in some record."""
    pattern = re.compile(pattern)
    return sorted({k for r in records for k, v in r.items() if pattern.search(k) and is_number(v)})


def eval_tag(records: list[dict]) -> str:
    """"target_eval" for CoWorld / DV2 Finetune runs, else "eval"."""
    return "target_eval" if numeric_keys(records, r"^target_eval/return$") else "eval"


# -- panels: each draws on ``ax`` and returns False when the run has nothing for it ---------------


def _band(ax, steps, mean, std, label, color=None):
    (line,) = ax.plot(steps, mean, label=label, color=color)
    if std is not None:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line.get_color()


def panel_return(ax, records) -> bool:
    drawn = False
    for tag in EVAL_TAGS:
        steps, mean = series(records, f"{tag}/return")
        if not len(steps):
            continue
        std_steps, std = series(records, f"{tag}/return_std")
        _band(ax, steps, mean, std if np.array_equal(std_steps, steps) else None, tag)
        drawn = True
    ax.set_title("evaluation return (mean ± std over episodes)")
    return drawn


def panel_success(ax, records) -> bool:
    keys = [f"{tag}/success" for tag in EVAL_TAGS if numeric_keys(records, f"^{tag}/success$")]
    for key in keys:
        ax.plot(*series(records, key), label=key, marker=".")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("evaluation success rate")
    return bool(keys)


def panel_value(ax, records) -> bool:
    drawn = False
    for tag in EVAL_TAGS:
        est, true = series(records, f"{tag}/value_estimate"), series(records, f"{tag}/true_return")
        if not len(est[0]) and not len(true[0]):
            continue
        color = ax.plot(*true, label=f"{tag} true discounted return")[0].get_color()
        ax.plot(*est, "--", color=color, label=f"{tag} value estimate")
        drawn = True
    ax.set_title("value estimate vs true return (overestimation)")
    return drawn


def panel_domain_kl(ax, records) -> bool:
    keys = numeric_keys(records, r"^coworld/domain_kl/source\d+$")
    for key in keys:
        ax.plot(*series(records, key), label=key.rsplit("/", 1)[1], marker=".")
    chosen = [(r["step"], r.get(f"coworld/domain_kl/source{int(r['coworld/selected_source'])}"))
              for r in records if is_number(r.get("coworld/selected_source"))]
    chosen = [(s, v) for s, v in chosen if is_number(v)]
    if chosen:
        ax.scatter(*zip(*chosen), marker="*", s=120, color="black", zorder=3, label="selected")
    ax.set_title("domain KL per source (docs/algorithms.md#multi-source)")
    return bool(keys)


def panel_eta(ax, records) -> bool:
    keys = numeric_keys(records, r"(^|/)coworld/eta$")
    for key in keys:
        ax.plot(*series(records, key), label=key)
    ax.set_title("reward-alignment eta")
    return bool(keys)


def panel_episodes(ax, records) -> bool:
    keys = numeric_keys(records, r"^(source\d+/)?episode/return$")
    for key in keys:
        ax.plot(*series(records, key), label=key, alpha=0.8)
    ax.set_title("training episode returns")
    return bool(keys)


def panel_losses(ax, records) -> bool:
    keys = numeric_keys(records, LOSS_KEY)
    for key in keys:
        ax.plot(*series(records, key), label=key)
    ax.set_yscale("symlog")
    ax.set_title("losses")
    return bool(keys)


PANELS = (panel_return, panel_success, panel_value, panel_domain_kl, panel_eta, panel_episodes, panel_losses)


def _title(run_dir: Path) -> str:
    run_file = run_dir / "run.json"
    if not run_file.exists():
        return run_dir.name
    info = json.loads(run_file.read_text())
    env = info.get("target_env") or info.get("env") or info.get("dataset") or "?"
    return f"{run_dir.name}: {info.get('algo', '?')} on {env}, seed {info.get('seed', '?')}"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/plots/summary.png (or ``out``) with a panel for each quantity the run logged."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    out = Path(out) if out else run_dir / "plots" / "summary.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Figure()
    present = [p for p in PANELS if p(scratch.add_subplot(), records)]  # dry run: which panels have data
    cols = 2 if len(present) > 1 else 1
    rows = max(1, -(-len(present) // cols))
    fig = Figure(figsize=(6.5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, present):
        panel(ax, records)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(present):]:
        ax.axis("off")
    if not present:
        axes[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
    fig.suptitle(_title(run_dir))
    fig.savefig(out, dpi=90)
    return out
