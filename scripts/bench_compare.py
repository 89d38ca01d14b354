"""Compare the update speed of two git revisions, old and new interleaved, one process per run.

    python3 scripts/bench_compare.py OLD_REV NEW_REV --kind target --preset tiny --batch 8 --length 16 \
        --threads 1 --runs 3 [--amp bf16] [--compile-new] [--set KEY=VALUE ...]

Each revision is checked out into its own worktree (``git worktree add --detach``, under
``--workdir``, default /tmp/coworld-bench); the runs alternate OLD NEW OLD NEW ... (``--runs``
processes of each), every process imports the package from its revision's worktree
(``PYTHONPATH``) and times ``--updates`` updates after ``--warmup`` untimed ones with the driver
below, which only uses the API both sides have (``DreamerAgent.world_model_step`` /
``behaviour_step`` / ``finish_update`` and the CoWorld hook builders). It prints each process's
median time per update and the median over processes of OLD / NEW.

Update kinds (``--kind``): ``source`` (a Dreamer update), ``target`` (CoWorld target update:
world model with stage A, behaviour with stage C), ``align`` (source update with stage B reward
alignment on a target batch).

``--driver`` runs one timing process (what the comparison starts); it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def driver(args) -> None:
    import torch

    from coworld.algos import coworld as cw
    from coworld.algos.dreamer import DreamerAgent
    from coworld.config import load_config

    torch.set_num_threads(args.threads)
    sets = [f"train.batch={args.batch}", f"train.length={args.length}", f"train.amp={args.amp}",
            f"train.compile={str(args.compile).lower()}", *args.set]
    cfg = load_config(args.preset, sets)
    try:  # train.malloc, as a run applies it (revisions before it have neither)
        from coworld.run.session import keep_freed_memory
        keep_freed_memory(cfg.train.malloc)
    except ImportError:
        pass
    torch.manual_seed(0)
    A = 6
    src, tgt = DreamerAgent(cfg, A), DreamerAgent(cfg, A)
    try:
        adapter = cw.ActionAdapter(A, A, "pad")
    except TypeError:  # older revisions: (source_dim, target_dim)
        adapter = cw.ActionAdapter(A, A)

    def batch():
        B, L = args.batch, args.length
        is_first = torch.zeros(B, L, dtype=torch.bool)
        is_first[:, 0] = True
        return {"image": torch.randint(0, 256, (B, L, 64, 64, 3), dtype=torch.uint8),
                "action": torch.rand(B, L, A) * 2 - 1, "reward": torch.randn(B, L),
                "discount": torch.ones(B, L), "is_first": is_first,
                "is_terminal": torch.zeros(B, L, dtype=torch.bool)}

    data, target_data = batch(), batch()

    def update():
        if args.kind == "source":
            agent, wm_hook, critic_hook = src, None, None
        elif args.kind == "target":
            agent, wm_hook, critic_hook = tgt, cw.state_alignment_hook(src, cfg), cw.value_constraint_hook(src, cfg)
        else:
            agent, critic_hook = src, None
            wm_hook = cw.reward_alignment_hook(src, target_data, 0.975, cfg, adapter)
        t0 = time.perf_counter()
        post, _ = agent.world_model_step(data, extra_loss=wm_hook)
        t1 = time.perf_counter()
        agent.behaviour_step(post, critic_extra=critic_hook)
        agent.finish_update()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    t0 = time.perf_counter()
    first = update()
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        update()
    times = [update() for _ in range(args.updates)]
    totals = [w + b for w, b in times]
    print(json.dumps({
        "kind": args.kind, "ms_total": 1e3 * statistics.median(totals),
        "ms_world_model": 1e3 * statistics.median(w for w, _ in times),
        "ms_behaviour": 1e3 * statistics.median(b for _, b in times),
        "first_update_s": first_s, "first_split_s": list(first), "threads": torch.get_num_threads(),
    }))


def worktree(rev: str, workdir: Path) -> Path:
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    path = workdir / sha[:12]
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha],
                       check=True, capture_output=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", nargs="?")
    p.add_argument("new", nargs="?")
    p.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("source", "target", "align"), default="source")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--compile", action="store_true", help="(driver) train.compile=true")
    p.add_argument("--compile-old", action="store_true", help="run OLD with train.compile=true")
    p.add_argument("--compile-new", action="store_true", help="run NEW with train.compile=true")
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=3, help="processes of each revision (>= 3 recommended)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workdir", default="/tmp/coworld-bench")
    args = p.parse_args()
    if args.driver:
        driver(args)
        return 0
    if not (args.old and args.new):
        p.error("give two revisions: OLD NEW")
    trees = {"old": worktree(args.old, Path(args.workdir)), "new": worktree(args.new, Path(args.workdir))}
    common = ["--kind", args.kind, "--preset", args.preset, "--batch", str(args.batch), "--length", str(args.length),
              "--threads", str(args.threads), "--amp", args.amp, "--updates", str(args.updates),
              "--warmup", str(args.warmup)]
    for item in args.set:
        common += ["--set", item]
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.runs):
        for side in ("old", "new"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", *common]
            if (side == "old" and args.compile_old) or (side == "new" and args.compile_new):
                cmd.append("--compile")
            env = {**os.environ, "PYTHONPATH": str(trees[side])}
            out = subprocess.run(cmd, cwd=trees[side], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[side].append(r)
            print(f"run {i + 1} {side:3s} ({getattr(args, side)}): {r['ms_total']:.1f} ms/update "
                  f"(world model {r['ms_world_model']:.1f}, behaviour {r['ms_behaviour']:.1f}; "
                  f"first update {r['first_update_s']:.1f} s)", flush=True)
    ratios = [o["ms_total"] / n["ms_total"] for o, n in zip(results["old"], results["new"])]
    med = {s: statistics.median(r["ms_total"] for r in results[s]) for s in results}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.kind} {args.preset} {args.batch}x{args.length} amp={args.amp} threads={args.threads}: "
          f"old {med['old']:.1f} ms, new {med['new']:.1f} ms; old/new median {statistics.median(ratios):.2f} "
          f"(pairs {', '.join(f'{r:.2f}' for r in ratios)}; {args.runs} processes each; load {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
