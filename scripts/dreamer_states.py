"""Online DreamerV2 with a state-input world model: is it the pixels or the reinforcement learning?

Trains the agent of a CoWorld state-input source (an MLP encoder of the low-dimensional ``state``
observation and a state decoder, with the image agent's RSSM, heads, actor and critic:
docs/algorithms.md#state-input-source) online in ``--env`` with ``obs="state"``, through the same
pieces as ``coworld train --algo dreamer`` (the collector, the replay on disk, the update schedule and
the evaluation protocol), for a wall-clock budget. ``--pixels`` runs the image agent through the same
loop instead, for a like-for-like comparison. When the state agent learns the task within the budget
and the image agent does not, what limits the image agent is its world model's view of the frames, not
the actor-critic or the task. ``--pixels --aux-state W`` also makes the image world model decode the recorded
state from its latent (privileged information, a diagnostic: if the image agent then learns, what it lacked
was a latent that knows the positions). Used for docs/results.md ("Dreamer from states", "Keypoints").

    python3 scripts/dreamer_states.py --seed 0 --minutes 10

Prints one JSON line per evaluation (``--eval-every`` env steps; ``train.eval_episodes`` episodes with
the actor's mean action) and, with --json, writes them all to a file. One torch thread unless --threads
says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld import envs
from coworld.algos.coworld import StateSourceAgent
from coworld.algos.dreamer import DreamerAgent
from coworld.config import load_config
from coworld.data.replay import Replay
from coworld.nets.world_model import StateDecoder, gaussian_nll
from coworld.run.driver import Collector, evaluate
from coworld.run.train import updates_due


class HideVelocity(gymnasium.ObservationWrapper):
    """Zeroes columns 2-3 of ``obs["state"]`` (a built-in task's agent velocity)."""

    def observation(self, obs):
        state = obs["state"].copy()
        state[2:4] = 0.0
        return {**obs, "state": state}


class StateAux:
    """An image agent's update whose world-model loss also has ``weight`` times the unit-variance NLL of the
    recorded state decoded from the latent by a :class:`StateDecoder` (its own Adam at the model's rate)."""

    def __init__(self, agent, state_dim: int, weight: float):
        m = agent.cfg.model
        self.agent, self.weight = agent, weight
        self.head = StateDecoder(agent.wm.feat_dim, state_dim, m.units)
        self.opt = torch.optim.Adam(self.head.parameters(), m.lr)

    def __call__(self, batch: dict) -> dict:
        def hook(out):
            nll = gaussian_nll(self.head(out["feat"]), batch["state"].float(), event_dims=1).mean()
            return self.weight * nll, {"model/aux_state_nll": nll.detach()}

        self.opt.zero_grad()
        metrics = self.agent.update(batch, wm_hook=hook)
        self.opt.step()
        return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="builtin:reach")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget (evaluations included)")
    p.add_argument("--steps", type=int, default=0, help="also stop after this many env steps (0: the budget alone)")
    p.add_argument("--eval-every", type=int, default=2000, help="env (agent) steps between evaluations "
                   "(train.eval_episodes episodes each)")
    p.add_argument("--pixels", action="store_true", help="the image agent instead (the same loop)")
    p.add_argument("--hide-velocity", action="store_true",
                   help="zero the agent's velocity in the state (columns 2-3 of every built-in task's state), so "
                        "that the model must infer it from positions over time, as an image model must")
    p.add_argument("--aux-state", type=float, default=0.0,
                   help="with --pixels: the image world model also decodes the recorded state, this weight times "
                        "its unit-variance NLL (privileged information: does a latent that knows the positions "
                        "exactly make the image agent learn?)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(args.preset, args.overrides + [f"seed={args.seed}"])
    obs = "image" if args.pixels else "state"
    env = envs.make(args.env, obs=obs, seed=args.seed)
    eval_env = envs.make(args.env, obs=obs)
    if args.hide_velocity:
        env, eval_env = HideVelocity(env), HideVelocity(eval_env)
    action_dim = env.action_space.shape[0]
    if args.pixels:
        agent = DreamerAgent(cfg, action_dim)
    else:
        agent = StateSourceAgent(cfg, action_dim, env.observation_space["state"].shape[0])
    tmp = Path(tempfile.mkdtemp(prefix="dreamer-states-"))
    rows, t0 = [], time.time()
    try:
        replay = Replay(tmp / "replay", seed=args.seed, readonly=False,
                        extra_keys=("state",) if args.aux_state or not args.pixels else ())
        update = agent.update
        if args.pixels and args.aux_state:
            update = StateAux(agent, env.observation_space["state"].shape[0], args.aux_state)
        collector = Collector(env, replay, seed=args.seed, action_dim=action_dim)
        pretrained, next_eval, t = False, args.eval_every, cfg.train
        while time.time() - t0 < args.minutes * 60 and not (args.steps and collector.steps >= args.steps):
            collector.step(agent if collector.steps >= t.prefill else None, noise=t.expl_noise)
            ready = collector.steps >= t.prefill and replay.num_episodes > 0
            n, pretrained = updates_due(t, collector.steps, ready, pretrained)
            for _ in range(n):
                update(replay.sample(t.batch, t.length, mode=t.sampling))
            if collector.steps >= next_eval:
                next_eval += args.eval_every
                result = evaluate(agent, eval_env, episodes=t.eval_episodes, seed=12345)
                row = {"minutes": round((time.time() - t0) / 60, 2), "env_steps": collector.steps,
                       "updates": agent.updates, "eval_return": round(float(np.mean(result["returns"])), 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        env.close()
        eval_env.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
