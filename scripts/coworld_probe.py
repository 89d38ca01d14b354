"""What CoWorld's source agent gives the target, read from finished CoWorld runs.

For each CoWorld run directory (its checkpoint holds the source and the target agent; of a
multi-source run it reads the first source) it prints one JSON line with:

- source competence: the mean return of the source agent's last ``--last`` training episodes in the
  source simulator (from metrics.jsonl), with the source task's expert score where one is known;
- stage A: the alignment loss (the KL between the target's and the source's posteriors on target
  frames, docs/algorithms.md#stage-a) averaged over the first and over the last 3 logged updates;
- stage C as logged: the share of imagined states where the target critic exceeded the frozen source
  critic (the states where the max term acts), first and last 3 logs;
- stage C on real data: every episode of the run's target dataset, filtered by the target world model;
  the target critic v_T and the frozen source critic v_S on those posterior states (v_S reads the
  target's features, as stage C evaluates it), and the discounted return the data obtained after
  each state; the Spearman rank correlation of v_T and of v_S with that return, the share of states
  with v_T > v_S, and the three means. Only states in the first half of each episode count: the return
  after a later state is cut short by the time limit.

    python3 scripts/coworld_probe.py runs/sweep-long/runs/coworld__*

With several runs (the seeds of one method) it ends with a summary line: every number's mean over
the runs with a 95% bootstrap interval over them.

A source critic that ranks target states no better than chance cannot tell the target critic where
it overestimates; its cap then only lowers every value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld import envs
from coworld.algos.dreamer import DreamerAgent
from coworld.data.episodes import list_episode_files, load_episode
from coworld.errors import UserError
from coworld.eval.stats import bootstrap_mean_ci
from coworld.run.api import load_run
from coworld.run.cotrain import target_agent
from coworld.run.driver import discounted_to_go
from coworld.run.plots import read_metrics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 0 .. n-1 of ``x``, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    return ((end - counts + end - 1) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation of two 1-D arrays (0 when either is constant)."""
    a, b = rankdata(x) - (len(x) - 1) / 2.0, rankdata(y) - (len(y) - 1) / 2.0
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def returns_after(reward: np.ndarray, gamma: float) -> np.ndarray:
    """(T,) rewards of one episode -> (T,) discounted return obtained after each state:
    sum_k gamma^(k-1) r[t+k], where reward[t] arrives with state t (the last state gets 0).
    The evaluation's :func:`discounted_to_go` over the rewards that follow each state."""
    return np.append(discounted_to_go(reward[1:], gamma), 0.0)


def first_last(series: list[float], n: int = 3) -> list[float] | None:
    return [float(np.mean(series[:n])), float(np.mean(series[-n:]))] if series else None


@torch.no_grad()
def probe(run_dir: Path, last: int = 10) -> dict:
    torch.manual_seed(0)  # the posterior samples its latents: the same numbers on every call
    run_dir, run_args, cfg, state = load_run(run_dir)
    if run_args.get("algo") != "coworld" or "source0_agent" not in state:
        raise UserError(f"{run_dir} is not a CoWorld run (algo {run_args.get('algo')!r})")
    dims = state["dims"]
    target, source = target_agent(cfg, dims["target_agent"]), DreamerAgent(cfg, dims["source0_agent"], "cpu")
    target.load_checkpoint_state(state["target_agent"])
    source.load_checkpoint_state(state["source0_agent"])

    records = read_metrics(run_dir)

    def logged(key: str) -> list[float]:
        return [float(r[key]) for r in records if key in r]

    src_returns = logged("source0/episode/return")
    source_env = run_args["source"][0]
    gamma = cfg.behaviour.gamma
    v_t, v_s, togo = [], [], []
    for path in list_episode_files(run_args["target_dataset"]):
        ep = load_episode(path)
        batch = {"image": torch.from_numpy(ep["image"])[None], "action": torch.from_numpy(ep["action"]).float()[None],
                 "is_first": torch.from_numpy(ep["is_first"])[None]}
        feat = target.wm.feat(target.posterior(batch))[0]
        half = len(ep["reward"]) // 2
        v_t.append(target.value(feat).float().numpy()[:half])
        v_s.append(source.value(feat).float().numpy()[:half])
        togo.append(returns_after(ep["reward"].astype(np.float64), gamma)[:half])
    v_t, v_s, togo = np.concatenate(v_t), np.concatenate(v_s), np.concatenate(togo)
    return {
        "run": run_dir.name,
        "target_full_updates": target.updates,  # world model + behaviour (the world-model-only warm-up not counted)
        "source_env": source_env,
        "source_return_last": float(np.mean(src_returns[-last:])) if src_returns else None,
        "source_expert": envs.spec(source_env).expert_score,
        "align_loss_first_last": first_last(logged("target/coworld/align_loss")),
        "capped_frac_first_last": first_last(logged("target/coworld/capped_frac")),
        "states": int(len(togo)),
        "spearman_target_critic": spearman(v_t, togo),
        "spearman_source_critic": spearman(v_s, togo),
        "share_target_above_source": float((v_t > v_s).mean()),
        "mean_target_value": float(v_t.mean()),
        "mean_source_value": float(v_s.mean()),
        "mean_return_after": float(togo.mean()),
    }


def summary(rows: list[dict]) -> dict:
    """Mean over runs [95% bootstrap interval over runs] of every number of the rows (a pair
    such as ``align_loss_first_last`` gives a ``_first`` and a ``_last`` entry)."""
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, list) and key.endswith("_first_last"):
                columns.setdefault(key[:-5], []).append(value[0])
                columns.setdefault(key[:-11] + "_last", []).append(value[1])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                columns.setdefault(key, []).append(float(value))
    return {key: [float(np.mean(v)), *bootstrap_mean_ci(v)] for key, v in columns.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="CoWorld run directories")
    p.add_argument("--last", type=int, default=10, help="source training episodes averaged (default 10)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        try:
            rows.append(probe(Path(run), args.last))
        except UserError as exc:
            print(f"coworld_probe: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(json.dumps({"summary": summary(rows), "runs": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
