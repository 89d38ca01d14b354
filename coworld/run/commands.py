"""`coworld train`, `coworld eval` and `coworld bench`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from coworld.config import load_config, preset_names
from coworld.errors import UserError

ONLINE = ("dreamer",)
OFFLINE = ("offline-dv2",)


def register(sub) -> None:
    p = sub.add_parser("train", help="train an agent (resumes when --logdir holds a run)",
                       description="Train an agent. Re-running the same command with the same --logdir "
                       "resumes; a larger --steps extends a finished run.")
    p.add_argument("--algo", required=True, choices=ONLINE + OFFLINE + ("coworld", "dv2-finetune"))
    p.add_argument("--env", help="environment id (online training, or evaluation for offline algorithms)")
    p.add_argument("--dataset", help="offline dataset directory (offline algorithms)")
    p.add_argument("--source", action="append", help="CoWorld / finetune: source environment id (repeatable)")
    p.add_argument("--target-dataset", help="CoWorld / finetune: offline target dataset directory")
    p.add_argument("--target-env", help="CoWorld / finetune: target environment id, used only for evaluation")
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(preset_names())} or a .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.deter=64 (repeatable)")
    p.add_argument("--steps", type=int, required=True,
                   help="run length: agent steps (dreamer), updates (offline-dv2), see docs for CoWorld")
    p.add_argument("--logdir", required=True, help="run directory (created, or resumed)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--env", help="evaluate on this env instead of the run's")
    p.add_argument("--video", action="store_true", help="also write a GIF of the first episode")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--out", help="output JSON path (default RUN/eval/eval-<updates>.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="time DreamerV2 updates for a preset and batch shape")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, help="B (default: the preset's)")
    p.add_argument("--length", type=int, help="L (default: the preset's)")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_bench)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_agent(algo: str, cfg, action_dim: int, device):
    if algo == "offline-dv2":
        from coworld.algos.offline_dv2 import OfflineDV2Agent

        return OfflineDV2Agent(cfg, action_dim, device=device)
    from coworld.algos.dreamer import DreamerAgent

    return DreamerAgent(cfg, action_dim, device=device)


def recorded_args(args) -> dict:
    """What run.json records of a `train` command (compared on resume)."""
    keys = ("algo", "env", "dataset", "source", "target_dataset", "target_env", "preset", "overrides", "seed",
            "steps", "no_state_align", "no_reward_align", "no_value_constraint", "no_max")
    recorded = {k: getattr(args, k) for k in keys}
    # Not recorded: the Session takes this flag out of the dict (it allows changes, it is not one).
    recorded["continue_with_changes"] = bool(getattr(args, "continue_with_changes", False))
    return recorded


def cmd_train(args) -> int:
    """Train; whatever happens, the envs and the run (its lock) are closed at the end."""
    from coworld.run.session import RunFinished, active_session, close_tracked

    try:
        return _train(args)
    except RunFinished as done:
        print(done, flush=True)
        return 0
    except UserError:
        raise
    except Exception as exc:
        # A crash anywhere in training (e.g. inside a CoWorld update) with NaN/inf weights is a
        # divergence: report it as one, with the way to continue.
        session = active_session()
        what = session.nonfinite_parameter() if session is not None else None
        if what is None:
            raise
        raise session.diverged(f"{what} became NaN/inf (training failed with {type(exc).__name__}: {exc})") from None
    finally:
        close_tracked()


def _train(args) -> int:
    from coworld.run.session import Session
    from coworld.run.train import check_dataset, check_image_size

    overrides = list(args.overrides) + [f"seed={args.seed}"]
    cfg = load_config(args.preset, overrides, algo=args.algo)
    if args.steps <= 0:
        raise UserError("--steps must be positive")
    if args.algo in ONLINE:
        if not args.env:
            raise UserError(f"--algo {args.algo} trains online and needs --env ID (see `coworld envs`)")
        from coworld import envs

        action_dim = envs.spec(args.env).action_dim
        check_image_size(cfg)
        unit = "step"
    elif args.algo in OFFLINE:
        if not args.dataset:
            raise UserError(f"--algo {args.algo} trains from data and needs --dataset DIR")
        action_dim = check_dataset(args.dataset, cfg, args.env)  # before anything is written
        unit = "update"
    else:
        from coworld.algos.cotrain import train_from_args

        return train_from_args(args, cfg)
    session = Session(args.logdir, run_args=recorded_args(args), cfg=cfg, total=args.steps, unit=unit,
                      progress=not args.no_progress)
    seed_everything(session.cfg.seed)
    agent = build_agent(args.algo, session.cfg, action_dim, session.device)
    from coworld.run import train

    if args.algo == "dreamer":
        return train.train_dreamer(session, agent, args.env)
    return train.train_offline(session, agent, args.dataset, args.env)


def load_run(path: str | Path):
    """(run_args, cfg, checkpoint) of a run directory or of a checkpoint inside one."""
    from coworld.config import Config
    from coworld.run.checkpoint import load_checkpoint

    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / "run.json").exists() or not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} is not a coworld run directory (no run.json / config.json)")
    run_args = json.loads((run_dir / "run.json").read_text())
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    return run_dir, run_args, cfg, load_checkpoint(path)


def cmd_eval(args) -> int:
    from coworld.run.session import close_tracked

    try:
        return _eval(args)
    finally:
        close_tracked()  # the env


def _eval(args) -> int:
    from coworld.run.driver import evaluate
    from coworld.run.train import make_env, summarize

    run_dir, run_args, cfg, state = load_run(args.run)
    if run_args["algo"] in ("coworld", "dv2-finetune"):
        from coworld.algos.cotrain import evaluation_agent

        agent, env_id = evaluation_agent(run_args, cfg, state)
    else:
        env_id = run_args.get("env")
        action_dim = state["dims"]["agent"]
        agent = build_agent(run_args["algo"], cfg, action_dim, "cpu")
        agent.load_checkpoint_state(state["agent"])
    env_id = args.env or env_id
    if not env_id:
        raise UserError("this run has no environment to evaluate on; pass --env ID")
    if args.episodes <= 0:
        raise UserError("--episodes must be positive")
    env = make_env(cfg, env_id)
    result = evaluate(agent, env, episodes=args.episodes, seed=args.seed, video=args.video)
    stats = summarize(result["returns"])
    out = {"run": str(run_dir), "env": env_id, "updates": agent.updates, "episodes": args.episodes,
           "seed": args.seed, "returns": result["returns"], "lengths": result["lengths"],
           "return_mean": stats["mean"], "return_std": stats["std"]}
    if "successes" in result:
        out["successes"] = result["successes"]
        out["success_rate"] = float(np.mean(result["successes"]))
    out_path = Path(args.out) if args.out else run_dir / "eval" / f"eval-{agent.updates:09d}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.video:
        import imageio.v2 as imageio

        gif = out_path.with_suffix(".gif")
        imageio.mimsave(gif, list(result["frames"]), duration=50, loop=0)
        out["video"] = str(gif)
    out_path.write_text(json.dumps(out, indent=2))
    line = f"{env_id}: return {stats['mean']:.1f} +- {stats['std']:.1f} over {args.episodes} episodes"
    if "success_rate" in out:
        line += f", success {out['success_rate']:.0%}"
    print(line)
    print(f"wrote {out_path}")
    return 0


def cmd_bench(args) -> int:
    from coworld.run.bench import bench, print_bench

    cfg = load_config(args.preset, args.overrides)
    result = bench(cfg, batch=args.batch or cfg.train.batch, length=args.length or cfg.train.length,
                   updates=args.updates, warmup=args.warmup, device=args.device, amp=args.amp,
                   compile=args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_bench(result)
    return 0
