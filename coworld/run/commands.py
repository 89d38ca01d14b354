"""`coworld train`, `coworld eval`, `coworld bench` and `coworld data collect`, over
:mod:`coworld.run.api` and :mod:`coworld.run.registry`."""

from __future__ import annotations

import argparse
import json

from coworld.config import load_config, preset_names
from coworld.errors import UserError
from coworld.run import api, registry
from coworld.run.collect import COLLECT_LEVELS, COLLECTORS


def register(sub, groups=None) -> None:
    p = sub.add_parser("train", help="train an agent (resumes when --logdir holds a run)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train an agent. Re-running the same command with the same --logdir resumes; a "
                       "larger --steps extends a finished run (not for coworld / dv2-finetune, whose schedule "
                       "is scaled to --steps).\n\nalgorithms:\n" + registry.help_text())
    p.add_argument("--algo", required=True, choices=registry.names(), metavar="ALGO",
                   help="one of: " + ", ".join(registry.names()) + " (listed below)")
    p.add_argument("--env", help="environment id (see `coworld envs`): where dreamer trains, or where "
                   "offline-dv2 is evaluated")
    p.add_argument("--dataset", help="offline dataset directory (offline-dv2)")
    p.add_argument("--source", action="append", help="coworld / dv2-finetune: source environment id "
                   "(repeat for multi-source CoWorld)")
    p.add_argument("--target-dataset", help="coworld / dv2-finetune: offline dataset of the target task")
    p.add_argument("--target-env", help="coworld / dv2-finetune: target environment id, used only for "
                   "evaluation (without it, only offline diagnostics are reported)")
    p.add_argument("--preset", default="tiny", help=f"size and budget: one of {', '.join(preset_names())} "
                   "or a .toml path (default tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.deter=64 (repeatable; see coworld/config.py)")
    p.add_argument("--steps", type=int, required=True, help="run length, in the algorithm's unit (listed below)")
    p.add_argument("--logdir", required=True, help="run directory (created, or resumed)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random in the run (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--continue-with-changes", action="store_true",
                   help="resume this run although --set changes optimiser settings (learning rates, eps, "
                   "grad clip, weight decay, amp), e.g. after a divergence; recorded in RUN/history.jsonl")
    for flag, text in [("--no-state-align", "stage A"), ("--no-reward-align", "stage B"),
                       ("--no-value-constraint", "stage C"), ("--no-max", "'w/o max' variant of stage C")]:
        p.add_argument(flag, action="store_true", help=f"CoWorld ablation: without {text}")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--episodes", type=int, default=10, help="episodes with the actor's mean action (default 10)")
    p.add_argument("--env", help="evaluate on this env instead of the run's")
    p.add_argument("--video", action="store_true", help="also write a GIF of the first episode")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes (default 12345)")
    p.add_argument("--out", help="output JSON path (default RUN/eval/eval-<updates>.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="time DreamerV2 updates for a preset and batch shape")
    p.add_argument("--preset", default="tiny", help="model sizes to time (default tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--batch", type=int, help="B (default: the preset's)")
    p.add_argument("--length", type=int, help="L (default: the preset's)")
    p.add_argument("--updates", type=int, default=20, help="timed updates (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first (default 3)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision (default none)")
    p.add_argument("--compile", action="store_true", help="time the compiled update (train.compile)")
    p.add_argument("--kind", help="comma-separated update kinds: source (Dreamer), target (CoWorld, stages A + C), "
                   "align (source with stage B); default all three, or $COWORLD_BENCH_KINDS")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_bench)

    sub = groups["data"]  # `coworld data collect` trains an agent: a loop of this layer
    collect = sub.add_parser("collect", help="train an online agent and keep its replay up to a level")
    collect.add_argument("--env", required=True, help="environment id, e.g. dmc:walker_downhill")
    collect.add_argument("--level", required=True, choices=COLLECT_LEVELS, help="dataset level (docs/collection.md)")
    collect.add_argument("--out", required=True, help="output directory; re-running the command resumes")
    collect.add_argument("--collector", default="sac-state", choices=COLLECTORS,
                         help="sac-state: SAC on low-dimensional states (cheap); dreamer: pixel DreamerV2 (paper)")
    collect.add_argument("--reference-score", type=float, help="return that counts as 1.0 (default: env/table)")
    collect.add_argument("--seed", type=int, default=0, help="seed")
    collect.add_argument("--max-steps", type=int, default=0, help="stop after this many agent steps (0 = none)")
    collect.add_argument("--time-limit", type=int, default=0, help="agent steps per episode (0 = env default)")
    collect.add_argument("--eval-every", type=int, default=0, help="agent steps between evaluations (0 = default)")
    collect.add_argument("--preset", default="dv2-official", help="dreamer collector: config preset")
    collect.add_argument("--device", default="auto", help="dreamer collector: torch device (sac-state runs on the CPU)")
    collect.set_defaults(func=run_collect)


def cmd_train(args) -> int:
    api.train(args.algo, args.logdir, args.steps, preset=args.preset, overrides=args.overrides, seed=args.seed,
              env=args.env, dataset=args.dataset, source=args.source, target_dataset=args.target_dataset,
              target_env=args.target_env, no_state_align=args.no_state_align, no_reward_align=args.no_reward_align,
              no_value_constraint=args.no_value_constraint, no_max=args.no_max, progress=not args.no_progress,
              continue_with_changes=args.continue_with_changes)
    return 0


def cmd_eval(args) -> int:
    out = api.evaluate(args.run, episodes=args.episodes, env=args.env, seed=args.seed, video=args.video,
                       out=args.out)
    line = (f"{out['env']}: return {out['return_mean']:.1f} +- {out['return_std']:.1f} over {out['episodes']} "
            f"episodes of one run (std over episodes)")
    if "success_rate" in out:
        line += f", success {out['success_rate']:.0%}"
    print(line)
    print(f"wrote {out['path']}")
    return 0


def cmd_bench(args) -> int:
    from coworld.run.bench import KINDS, bench, print_bench

    kinds = [k.strip() for k in args.kind.split(",")] if args.kind else None
    unknown = [k for k in kinds or () if k not in KINDS]
    if unknown:
        raise UserError(f"--kind: unknown update kind(s) {unknown}; choose from {', '.join(KINDS)}")
    cfg = load_config(args.preset, args.overrides)
    result = bench(cfg, batch=args.batch or cfg.train.batch, length=args.length or cfg.train.length,
                   updates=args.updates, warmup=args.warmup, device=args.device, amp=args.amp,
                   compile=args.compile, kinds=kinds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_bench(result)
    return 0


def run_collect(args) -> int:
    from coworld.run.collect import collect_dataset

    options = {"time_limit": args.time_limit} if args.time_limit else {}
    side = collect_dataset(
        args.env, args.level, args.out, collector=args.collector, reference_score=args.reference_score,
        seed=args.seed, max_steps=args.max_steps or None, eval_every=args.eval_every or None,
        preset=args.preset, device=args.device, progress=True, **options,
    )
    made = side["collection"]
    print(f"{made['status']}: {side['counts']['episodes']} episodes ({side['counts']['steps']} steps) in {args.out}; "
          f"best evaluation return {made['best_eval_return']} (target {made['target_return']:.1f})")
    return 0
