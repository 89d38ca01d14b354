"""`coworld demo`: the embedded default job, with no argument and no download.

It makes (once, then caches) a small offline dataset of the built-in ``reach`` task,
then trains, on the same data and with the same number of target updates,

- CoWorld, with the built-in source ``reach-src`` (other colours and background, a
  mirrored camera, heavier and drifting dynamics, a third action dimension),
- Offline DV2 (the offline-only baseline, docs/algorithms.md#offline-dv2),
- DV2 Finetune (pretrain in the source, finetune on the target data, docs/algorithms.md#dv2-finetune),

for a few seeds, two runs at a time (one per core), and prints a results table
(final evaluation return, mean +- std over seeds, episodes per evaluation stated,
value overestimation, wall time) and writes a comparison plot. Re-running the same
command reuses finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from coworld.config import cache_root, load_config
from coworld.errors import UserError
from coworld.run import registry
from coworld.run.experiment import algo_kind, target_updates, trial_cost
from coworld.run.session import free_cores

TARGET_ENV = "builtin:reach"
SOURCE_ENV = "builtin:reach-src"

# The budget: every method learns at it; at 0.4 times it only Offline DV2 did (5 seeds; docs/results.md, "Can the
# demo run 5 seeds").
# The 2-seed job takes about 16 min on 2 idle AVX-512 cores (estimated), 20-23 min on 2 AVX2 cores (measured).
DEFAULTS = {
    "episodes": 30,  # target dataset size: 30 episodes x 100 steps of medium-replay data
    "level": "medium-replay",
    "source_steps": 3600,  # CoWorld / DV2 Finetune: source environment steps (sets the schedule)
    "seeds": 2,
}
COMMON = ["train.threads=1", "train.log_every=200", "train.checkpoint_every=500"]
COWORLD = ["coworld.outer_iters=2", "coworld.target_blocks=3", "coworld.source_blocks=1",
           "coworld.warmup_blocks=2", "coworld.wm_warmup_rounds=1", "coworld.wm_warmup_updates=2000"]
OFFLINE_DV2 = ["model.ensemble=5", "train.offline_penalty=1.0"]


def target_dataset(episodes: int, level: str, seed: int = 0) -> Path:
    """The built-in target dataset, made on first use and validated on every use."""
    from coworld.data.make import make_dataset
    from coworld.data.validate import validate_directory

    out = cache_root() / "datasets" / f"reach-{level}-{episodes}ep-seed{seed}"
    if out.exists() and not validate_directory(out):
        return out
    if out.exists():
        raise UserError(f"the cached demo dataset {out} is damaged; delete that directory and re-run")
    print(f"making the target dataset ({episodes} episodes of {TARGET_ENV}, level {level}) in {out}", flush=True)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    make_dataset(TARGET_ENV, level, episodes, tmp, seed=seed, progress=True)
    tmp.rename(out)
    return out




# The demo's methods: every registered algorithm with a demo name, and the "w/o max" ablation of
# CoWorld (paper Fig. 5b), as (algorithm, extra flags).
METHODS = {**{a.demo: (a.name, []) for a in registry.ALGORITHMS.values() if a.demo},
           "CoWorld w/o max": ("coworld", ["--no-max"])}
# Every algorithm that trains in the source runs CoWorld's (shortened) schedule, so all methods make
# the same number of target updates; Offline DV2 gets the demo's ensemble and penalty.
EXTRA = {"offline-dv2": OFFLINE_DV2}


def extra_settings(algo: registry.Algorithm) -> list[str]:
    return COWORLD if "source" in algo.needs else EXTRA.get(algo.name, [])


def jobs(out: Path, data: Path, seeds: int, source_steps: int, updates: int, preset: str,
         methods: list[str]) -> list[dict]:
    inputs = {"env": TARGET_ENV, "dataset": str(data), "source": SOURCE_ENV, "target_dataset": str(data),
              "target_env": TARGET_ENV}
    todo, train_every = [], load_config(preset).train.train_every
    for seed in range(seeds):
        base = ["--preset", preset, "--seed", str(seed), "--no-progress"]
        for method in methods:
            name, flags = METHODS[method]
            algo = registry.get(name)
            args = ["--algo", name, *flags]
            for key in algo.needs + algo.optional:
                args += ["--" + key.replace("_", "-"), inputs[key]]
            # offline algorithms count updates: the same number of target updates as CoWorld makes
            kind = algo_kind(algo)
            offline = kind == "offline"
            args += ["--steps", str(updates if offline else source_steps)]
            # about 6 evaluations per run: offline runs count updates, co-training runs progress units
            # (a target update is train_every units); rounded up, so that the last periodic evaluation
            # is not a few updates before the final one
            every = -(-updates // 6) * (1 if offline else train_every)
            extra = extra_settings(algo) + [f"train.eval_every={every}"]
            logdir = out / method.lower().replace(" ", "-").replace("/", "") / f"seed{seed}"
            sets = sum((["--set", s] for s in COMMON + extra), [])
            cmd = [sys.executable, "-m", "coworld", "train", *args, *base, "--logdir", str(logdir), *sets]
            cost = trial_cost(kind, updates if offline else source_steps, train_every, updates)
            todo.append({"method": method, "seed": seed, "logdir": logdir, "cmd": cmd, "cost": cost})
    return todo


def _finished(logdir: Path) -> bool:
    return (logdir / "done.json").exists()


def run_jobs(todo: list[dict], parallel: int) -> None:
    """Run the training commands, ``parallel`` at a time, with a one-line status every 20 s."""
    # longest runs first (stable: seed-major within a cost), so that the job does not end with one long
    # run alone on a core (the default job on a 2-core AVX2 CPU: 23 min, ~27 in seed-major order)
    pending, running = sorted((j for j in todo if not _finished(j["logdir"])), key=lambda j: -j["cost"]), []
    try:
        _loop(pending, running, parallel, time.time())
    finally:  # interrupted: the runs save a checkpoint on SIGTERM, so `coworld demo` resumes them
        for job in running:
            if job["proc"].poll() is None:
                job["proc"].terminate()
        for job in running:
            job["proc"].wait()
            _add_partial_wall(job["logdir"], time.time() - job["start"])


def _add_partial_wall(logdir: Path, seconds: float) -> float:
    """Wall time of a run accumulated over interrupted segments (kept in wall_partial.json)."""
    path = logdir / "wall_partial.json"
    total = (json.loads(path.read_text())["wall_s"] if path.exists() else 0.0) + seconds
    path.write_text(json.dumps({"wall_s": total}))
    return total


def _loop(pending: list, running: list, parallel: int, start: float) -> None:
    done, total, last, finished = 0, len(pending), 0.0, []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job["logdir"].mkdir(parents=True, exist_ok=True)
            job["log"] = open(job["logdir"] / "stdout.log", "a")
            job["start"] = time.time()
            job["proc"] = subprocess.Popen(job["cmd"], stdout=job["log"], stderr=subprocess.STDOUT)
            running.append(job)
        time.sleep(1.0)
        for job in list(running):
            code = job["proc"].poll()
            if code is None:
                continue
            running.remove(job)
            job["log"].close()
            if code != 0:
                raise UserError(f"{job['method']} seed {job['seed']} failed (exit {code}); see "
                                f"{job['logdir'] / 'stdout.log'}. Re-run `coworld demo` to resume.")
            wall = _add_partial_wall(job["logdir"], time.time() - job["start"])
            (job["logdir"] / "done.json").write_text(json.dumps({"wall_s": wall}))
            done += 1
            finished.append((time.time() - job["start"], job["cost"]))
            print(f"[{time.time() - start:6.0f}s] done {done}/{total}: {job['method']} seed {job['seed']} "
                  f"({wall:.0f}s)", flush=True)
        if time.time() - last > 20 and running:
            last = time.time()
            print(f"[{time.time() - start:6.0f}s] {_progress(done, total, running, pending, finished, parallel)}",
                  flush=True)


def _progress(done: int, total: int, running: list, pending: list, finished: list, parallel: int) -> str:
    """One status line: runs done (share of the job), running, and an ETA for the whole job. ``finished``
    holds (wall seconds, cost) of the runs ended so far; their seconds per unit of cost (a job's "cost",
    its gradient updates) times the cost still to do, spread over ``parallel`` slots (no ETA before the
    first run ends)."""
    now = time.time()
    line = f"done {done}/{total} ({100 * done / max(total, 1):.0f}%), running {len(running)}"
    if finished:
        rate = sum(w for w, _ in finished) / max(sum(c for _, c in finished), 1)
        left = sum(max(rate * j["cost"] - (now - j["start"]), 0.0) for j in running)
        left += rate * sum(j["cost"] for j in pending)
        line += f"; ETA ~{left / max(parallel, 1) / 60:.0f} min"
    else:
        line += "; ETA after the first run ends"
    return line


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args) -> int:
    import signal

    signal.signal(signal.SIGTERM, _raise_interrupt)
    from coworld.eval.report import aggregate, plot_comparison, reading, results_json, results_table, run_result

    t0 = time.time()
    out = Path(args.out)
    data = target_dataset(args.episodes, DEFAULTS["level"])
    cfg = load_config(args.preset, COMMON + COWORLD)
    updates = target_updates(cfg, args.source_steps)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    todo = jobs(out, data, args.seeds, args.source_steps, updates, args.preset, methods)
    print(f"demo: target {TARGET_ENV} ({args.episodes} episodes, {DEFAULTS['level']}), source {SOURCE_ENV}; "
          f"{args.seeds} seeds x {len(methods)} methods; {args.source_steps} source steps and {updates} target updates "
          f"per run; runs in {out}", flush=True)
    parallel = args.parallel
    if parallel is None:
        parallel, cores, load = free_cores()
        print(f"demo: {parallel} runs at a time ({cores} cores, {load:.1f} busy with other jobs); --parallel to choose",
              flush=True)
    run_jobs(todo, parallel)
    runs: dict[str, list[Path]] = {}
    for job in todo:
        runs.setdefault(job["method"], []).append(job["logdir"])
    results = {}
    for method, dirs in runs.items():
        rows = []
        for d in dirs:
            row = run_result(d)
            row["wall_s"] = json.loads((d / "done.json").read_text())["wall_s"]
            rows.append(row)
        results[method] = rows
    refs = reference_returns(data)
    agg = aggregate(results, focus="CoWorld")
    table = results_table(results)
    lines = reading(agg, "CoWorld", refs)
    plot = plot_comparison(runs, out / "comparison.png", references=refs)
    header = (f"Target {TARGET_ENV}: {args.episodes}-episode {DEFAULTS['level']} dataset; source {SOURCE_ENV}. "
              f"Preset {args.preset}; {updates} target updates per method; final evaluation with the "
              f"actor's mean action. Total wall time {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores.")
    ref_text = "Reference returns: " + ", ".join(f"{k} {v:.1f}" for k, v in refs.items()) + "."
    body = "\n".join([header, "", table, "", ref_text, "", *(f"- {line}" for line in lines)])
    (out / "results.md").write_text(body + "\n")
    (out / "results.json").write_text(json.dumps(results_json(results, agg, refs), indent=1))
    print()
    print(body)
    print(f"plot: {plot}\nresults: {out / 'results.md'}, {out / 'results.json'}")
    return 0


def reference_returns(data: Path, episodes: int = 100) -> dict[str, float]:
    """The returns a reader needs to judge the table: the uniform-random policy's (measured here,
    ``episodes`` seeded episodes), the dataset's mean episode return, and the scripted expert's."""
    import numpy as np

    from coworld import envs
    from coworld.data import load_episode
    from coworld.data.episodes import list_episode_files
    from coworld.data.make import run_episode

    env = envs.make(TARGET_ENV)
    rng = np.random.default_rng(0)
    dim = envs.spec(TARGET_ENV).action_dim
    random = [run_episode(env, lambda obs: rng.uniform(-1, 1, dim).astype(np.float32), seed=10_000 + i)
              for i in range(episodes)]
    env.close()
    dataset = [float(load_episode(f)["reward"][1:].sum()) for f in list_episode_files(data)]
    refs = {"random": float(np.mean(random)), "dataset": float(np.mean(dataset))}
    expert = envs.spec(TARGET_ENV).expert_score
    if expert is not None:
        refs["expert"] = float(expert)
    return refs


def register(sub, groups=None) -> None:
    p = sub.add_parser("demo", help="the embedded default job: CoWorld vs Offline DV2 vs DV2 Finetune "
                       "on the built-in suite (no download; 16-23 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="where the runs and results go")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"])
    p.add_argument("--episodes", type=int, default=DEFAULTS["episodes"], help="target dataset episodes")
    p.add_argument("--source-steps", type=int, default=DEFAULTS["source_steps"])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--methods", default="CoWorld,Offline DV2,DV2 Finetune",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at a time, one thread each (default: the cores not busy with other jobs when it starts)")
    p.set_defaults(func=main)
