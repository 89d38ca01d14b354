"""The programmatic way in: ``coworld.train(...)`` and ``coworld.evaluate(...)``.

    import coworld
    coworld.train("offline-dv2", "runs/odv2", 5000, dataset="data/reach-mr", env="builtin:reach")
    coworld.train("coworld", "runs/cw", 20000, source=["builtin:reach-src"],
                  target_dataset="data/reach-mr", target_env="builtin:reach", overrides=["coworld.alpha=1"])
    result = coworld.evaluate("runs/cw", episodes=10)

The CLI's ``train`` and ``eval`` commands are thin wrappers over these two functions, and so are the
demo's and a sweep's trials. Errors the caller can fix are :class:`coworld.errors.UserError`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from coworld import envs
from coworld.config import Config, load_config
from coworld.errors import UserError
from coworld.run import registry

ABLATIONS = ("no_state_align", "no_reward_align", "no_value_constraint", "no_max")
INPUTS = ("env", "dataset", "source", "target_dataset", "target_env")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_record(algo: str, steps: int, preset: str, overrides, seed: int, inputs: dict, ablations: dict,
               continue_with_changes: bool = False) -> dict:
    """What run.json records of a training call (compared on resume)."""
    record = {k: inputs.get(k) for k in INPUTS}
    record.update(algo=algo, preset=preset, overrides=list(overrides), seed=seed, steps=steps)
    record.update({k: bool(ablations.get(k, False)) for k in ABLATIONS})
    record["continue_with_changes"] = bool(continue_with_changes)  # taken out again by the Session
    return record


def _check_inputs(algo: registry.Algorithm, inputs: dict) -> None:
    given = {k for k, v in inputs.items() if v}
    missing = [k for k in algo.needs if k not in given]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise UserError(f"--algo {algo.name} needs {flags} ({algo.summary})")
    extra = sorted(given - set(algo.needs) - set(algo.optional))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise UserError(f"--algo {algo.name} does not take {flags}")
    if algo.one_source and len(inputs["source"]) > 1:
        raise UserError(f"--algo {algo.name} takes exactly one --source")
    for key in ("env", "target_env"):
        if inputs.get(key):
            envs.spec(inputs[key])  # an unknown id fails here, before anything is written
    for env_id in inputs.get("source") or []:
        envs.spec(env_id)


def train(algo: str, logdir, steps: int, *, preset: str = "tiny", overrides=(), seed: int = 0,
          env: str | None = None, dataset=None, source: list[str] | str | None = None, target_dataset=None,
          target_env: str | None = None, no_state_align: bool = False, no_reward_align: bool = False,
          no_value_constraint: bool = False, no_max: bool = False, progress: bool = False,
          continue_with_changes: bool = False) -> dict:
    """Train ``algo`` (see ``coworld.run.registry``) in ``logdir`` for ``steps`` (the algorithm's unit).

    Re-running with the same arguments resumes; a finished run is left as it is. Returns
    ``{"logdir", "algo", "steps", "finished", "exit_code", "final_returns"}`` (the per-episode
    returns of the last evaluation, if one ran).
    """
    from coworld.run.session import RunFinished, Session, active_session, close_tracked
    from coworld.run.train import check_dataset, check_image_size

    spec = registry.get(algo)
    if isinstance(source, str):
        source = [source]
    inputs = {"env": env, "dataset": str(dataset) if dataset else None, "source": source,
              "target_dataset": str(target_dataset) if target_dataset else None, "target_env": target_env}
    ablations = {"no_state_align": no_state_align, "no_reward_align": no_reward_align,
                 "no_value_constraint": no_value_constraint, "no_max": no_max}
    if steps <= 0:
        raise UserError("--steps must be positive")
    _check_inputs(spec, inputs)
    for key in ("env", "target_env"):
        if key in spec.optional and not inputs[key]:
            print(f"note: no --{key.replace('_', '-')}: the policy is not evaluated in an environment; the run "
                  "reports offline diagnostics on its dataset instead (docs/algorithms.md#diagnostics)", flush=True)
    cfg = load_config(preset, list(overrides) + [f"seed={seed}"], defaults=spec.defaults)
    cfg.coworld.state_align &= not no_state_align
    cfg.coworld.reward_align &= not no_reward_align
    cfg.coworld.value_constraint &= not no_value_constraint
    cfg.coworld.no_max |= no_max
    record = run_record(algo, steps, preset, overrides, seed, inputs, ablations, continue_with_changes)
    try:
        if "env" in spec.needs:
            action_dim = envs.spec(env).action_dim
            check_image_size(cfg)
        elif "dataset" in spec.needs:
            action_dim = check_dataset(inputs["dataset"], cfg, env)  # before anything is written
        session = Session(logdir, run_args=record, cfg=cfg, total=steps, unit=spec.progress_unit,
                          progress=progress, extendable=spec.extendable)
        seed_everything(session.cfg.seed)
        run_inputs = dict(inputs)
        if spec.make_agent is not None:
            run_inputs["agent"] = spec.make_agent(session.cfg, action_dim, session.device)
        code = spec.train(session, run_inputs)
        finished = False
    except RunFinished as done:
        print(done, flush=True)
        code, finished = 0, True
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
    return {"logdir": str(logdir), "algo": algo, "steps": steps, "finished": finished, "exit_code": code,
            "final_returns": final_returns(logdir)}


def final_returns(logdir) -> list[float] | None:
    """The per-episode returns of a run's last evaluation (None if it has not evaluated)."""
    from coworld.run.plots import eval_tag, read_metrics

    path = Path(logdir)
    if not (path / "metrics.jsonl").exists():
        return None
    records = read_metrics(path)
    tag = eval_tag(records)
    found = [r[f"{tag}/returns"] for r in records if isinstance(r.get(f"{tag}/returns"), list)]
    return [float(x) for x in found[-1]] if found else None


def load_run(path):
    """(run directory, run_args, cfg, checkpoint) of a run directory or of a checkpoint inside one."""
    from coworld.run.checkpoint import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint")
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / "run.json").exists() or not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} is not a coworld run directory (no run.json / config.json)")
    run_args = json.loads((run_dir / "run.json").read_text())
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    return run_dir, run_args, cfg, load_checkpoint(path)


def evaluate(run, *, episodes: int = 10, env: str | None = None, seed: int = 12345, video: bool = False,
             out=None) -> dict:
    """Evaluate a saved run (its latest checkpoint, or a given checkpoint file) with the actor's mean
    action for ``episodes`` episodes; writes RUN/eval/eval-<updates>.json (or ``out``) and returns it."""
    from coworld.run.driver import evaluate as run_episodes
    from coworld.run.session import close_tracked
    from coworld.run.train import make_eval_envs, summarize

    if episodes <= 0:
        raise UserError("--episodes must be positive")
    run_dir, run_args, cfg, state = load_run(run)
    try:
        agent, env_id = registry.get(run_args["algo"]).policy(run_args, cfg, state)
        env_id = env or env_id
        if not env_id:
            raise UserError(f"{run_dir} was trained without an environment to evaluate on; pass --env ID")
        result = run_episodes(agent, make_eval_envs(cfg, env_id, episodes), episodes=episodes, seed=seed, video=video)
    finally:
        close_tracked()
    stats = summarize(result["returns"])
    out_data = {"run": str(run_dir), "env": env_id, "updates": agent.updates, "episodes": episodes, "seed": seed,
                "returns": result["returns"], "lengths": result["lengths"], "return_mean": stats["mean"],
                "return_std": stats["std"]}
    if "successes" in result:
        out_data["successes"] = result["successes"]
        out_data["success_rate"] = float(np.mean(result["successes"]))
    out_path = Path(out) if out else run_dir / "eval" / f"eval-{agent.updates:09d}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if video:
        import imageio.v2 as imageio

        gif = out_path.with_suffix(".gif")
        imageio.mimsave(gif, list(result["frames"]), duration=50, loop=0)
        out_data["video"] = str(gif)
    out_path.write_text(json.dumps(out_data, indent=2))
    out_data["path"] = str(out_path)
    return out_data
