"""Does the world model's latent state know where things are? Probes during world-model training.

Trains only the DreamerV2 world model of a preset, on an offline dataset (``--dataset``) or on episodes
of random actions in ``--env``, and every ``--eval-every`` updates measures, on held-out random-action
episodes of ``--env`` (every built-in task has a low-dimensional ``state``):

- ridge readouts (R^2) of the agent's position, the goal's position and their distance from the
  encoder's embedding and from the latent (posterior mean and deterministic state, no sampling noise);
  the built-in tasks' state layout: agent x, y in columns 0-1, goal x, y in columns 4-5;
- how the decoder redraws the (red) agent, from the posterior and open loop (5 frames observed, the
  rest imagined from the recorded actions): the distance in pixels between the red centroids of
  reconstruction and frame, and the reconstruction's share of the frame's red mass (1 = drawn at full
  strength, near 0 = faded into the background); open loop also with every latent at its mean instead
  of sampled ("openloop_mean"), and for reference the open-loop error of "no motion" (the agent of the
  last observed frame, kept in place);
- whether the imagined agent answers to the actions ("steer"): from the last observed frame, 10 steps
  of one constant full-force action (right, left, up, down; agent steps, the task's action repeat
  applied in the simulator) are imagined (latents at their means) and the decoded agent's displacement
  is set against the one the simulator gives from the same position and velocity: ``steer_gain`` =
  imagined / true displacement along the pushed direction (1 = right, 0 = the model ignores the
  action), ``steer_px_error`` the mean distance between the two displacements (pixels) and
  ``steer_true_px`` the true displacement's mean length; for reference ``track_gain``, the same
  measure for the posterior's agent (every frame seen) over the recorded motion of the window
  (regression slope of decoded on true displacements: near 1 when the decoder follows the agent).
  Positions are centroids of the decoded disc without the decoder's faint haze (:func:`peak`). An
  actor trained in imagination learns from the dynamics' answer to its actions: a gain near 0 leaves
  it nothing to learn from;
- the reward head's correlation with the recorded rewards, and the agent's redrawing, on training windows.

A quantity the latent does not hold is one the actor cannot be trained to act on. Used for the `tiny`
preset's choices (its header and docs/results.md):

    python3 scripts/wm_probe.py --dataset DIR --updates 2000 --set model.depth=16

Prints one JSON line per evaluation and, with --json, writes them all to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld import envs
from coworld.algos.dreamer import DreamerAgent
from coworld.config import load_config
from coworld.data.episodes import list_episode_files, load_episode
from coworld.data.make import make_dataset
from coworld.data.replay import Replay
from coworld.run.diagnostics import offline_diagnostics
from coworld.run.driver import Collector
from coworld.run.openloop import openloop_predict


def r2(pred, y):
    return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def ridge_r2(x_fit, y_fit, x_test, y_test, lam=0.1):
    """R^2 per output column of a ridge regression (features standardised and targets centred on the
    fit split; the intercept is not penalised)."""
    mu, sd = x_fit.mean(0), x_fit.std(0)
    sd = sd + 0.1 * sd.mean() + 1e-8  # a feature nearly constant on the fit split must not blow up on the test split
    a, b = (x_fit - mu) / sd, (x_test - mu) / sd
    ymu = y_fit.mean(0)
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ (y_fit - ymu))
    return r2(b @ w + ymu, y_test)


def random_episodes(env_id, n, seed, directory) -> list[dict]:
    """n episodes of uniformly random actions in ``env_id`` (``make_dataset``'s "random" level, written
    to ``directory``), loaded: wide coverage of the state space, and each keeps its ``state``."""
    make_dataset(env_id, "random", n, directory, seed=seed)
    return [load_episode(f) for f in list_episode_files(directory)]


class HeldRandom:
    """A policy of uniform random actions, each held for ``hold`` steps (for :class:`Collector`): the same
    draws as the ``random`` level's, as larger and longer pushes."""

    def __init__(self, action_dim: int, hold: int, seed: int):
        self.action_dim, self.hold = action_dim, hold
        self.rng = np.random.default_rng(seed)

    def initial_policy_state(self, n: int):
        return (0, None)

    def act(self, obs, state, is_first, explore):
        step, action = state
        if step % self.hold == 0:
            action = self.rng.uniform(-1.0, 1.0, (1, self.action_dim)).astype(np.float32)
        return action, (step + 1, action)


def held_random_episodes(env_id, n, hold, seed, directory) -> None:
    """n episodes of :class:`HeldRandom` actions in ``env_id``, written to ``directory`` as a replay."""
    env = envs.make(env_id, seed=seed)
    try:
        replay = Replay(directory, seed=seed, readonly=False)
        collector = Collector(env, replay, seed=seed, action_dim=env.action_space.shape[0])
        policy = HeldRandom(env.action_space.shape[0], hold, seed)
        while collector.episodes < n:
            collector.step(policy)
    finally:
        env.close()


@torch.no_grad()
def posterior(agent, batch):
    """(embedding, posterior states) of a batch of windows."""
    embed = agent.wm.encode(batch["image"])
    return embed, agent.wm.observe(embed, batch["action"], batch["is_first"])[0]


def windows(eps, length):
    """Episodes cut into consecutive windows of ``length`` (as the model is trained: each window
    starts from a reset state), batch-major, and their states (W, length, n)."""
    keys = ("image", "action", "reward", "is_first", "state")
    n = (len(eps[0]["reward"]) // length) * length
    out = {k: torch.from_numpy(np.concatenate([e[k][:n].reshape(-1, length, *e[k].shape[1:]) for e in eps]))
           for k in keys}
    out["is_first"][:, 0] = True
    return out, out.pop("state").numpy()


PROBED = {"agent": [0, 1], "goal": [4, 5], "distance": [6]}


def redness(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-0.5, 0.5] -> (..., H, W): how far red exceeds green and blue, which marks
    the built-in agent (red) and nothing else (the goal is green, the background grey-blue)."""
    x = image + 0.5
    return (x[..., 0, :, :] - torch.maximum(x[..., 1, :, :], x[..., 2, :, :])).clamp(min=0)


def centroid(mass: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 2) mass-weighted (row, column), in pixels."""
    rows = torch.arange(mass.shape[-2], dtype=mass.dtype)
    cols = torch.arange(mass.shape[-1], dtype=mass.dtype)
    total = mass.sum((-2, -1)).clamp(min=1e-6)
    return torch.stack([(mass.sum(-1) * rows).sum(-1) / total, (mass.sum(-2) * cols).sum(-1) / total], -1)


def peak(mass: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """(N, H, W) -> the mass where it is at least ``share`` of its image's maximum, zero elsewhere: the
    drawn disc without the faint haze a decoder spreads over the frame, which would pull a centroid
    towards the middle and shrink every displacement."""
    return torch.where(mass >= share * mass.amax((-2, -1), keepdim=True), mass, 0.0)


@contextlib.contextmanager
def latent_means(rssm):
    """Within: every latent the RSSM draws is its distribution's mean (no sampling noise)."""
    rssm.sample = rssm.prediction
    try:
        yield
    finally:
        del rssm.sample


def drawn_agent(wm, state: dict) -> torch.Tensor:
    """(N, 2) (row, column) pixel position of the agent the decoder draws at latent ``state`` ((N, ...)
    tensors): the centroid of its red disc without the haze (:func:`peak`)."""
    return centroid(peak(redness(wm.decoder(wm.feat(state)).float())))


PX_PER_UNIT = 32.0  # the built-in arena [-1, 1]^2 spans the 64 pixels (zoom 1); rows grow downwards


def to_pixels(xy) -> torch.Tensor:
    """World displacements (..., 2) as (x, y) -> image displacements (..., 2) as (row, column) pixels."""
    xy = torch.as_tensor(xy, dtype=torch.float32)
    return torch.stack([-xy[..., 1], xy[..., 0]], -1) * PX_PER_UNIT


def push_gain(moved: torch.Tensor, true: torch.Tensor, direction: torch.Tensor) -> float:
    """Mean displacement along ``direction`` of ``moved`` over that of ``true`` ((N, 2) each)."""
    return float((moved @ direction).mean() / (true @ direction).mean())


def slope(moved: torch.Tensor, true: torch.Tensor) -> float:
    """Least-squares gain g of moved ~ g * true over (N, 2) displacements: sum(m . t) / sum(t . t)."""
    return float((moved * true).sum() / (true * true).sum())


@torch.no_grad()
def probe(agent, fit, test) -> dict:
    """The readouts and the agent's redrawing described in the module docstring."""
    feats, ys = [], []
    for batch, state in (fit, test):
        embed, post = posterior(agent, batch)
        mean = post.get("mean", post["stoch"]).reshape(*post["stoch"].shape[:2], -1)
        flat = lambda t: t.float().reshape(-1, t.shape[-1]).cpu().numpy()
        feats.append({"embed": flat(embed), "latent": flat(torch.cat([mean, post["deter"]], -1))})
        y = state.reshape(-1, state.shape[-1])
        ys.append(np.concatenate([y, np.linalg.norm(y[:, :2] - y[:, 4:6], axis=1, keepdims=True)], 1))
    out = {}
    for name in feats[0]:
        r = ridge_r2(feats[0][name], ys[0], feats[1][name], ys[1])
        out.update({f"{name}/{q}": round(float(r[c].mean()), 2) for q, c in PROBED.items()})
    out.update(redraw(agent, test[0], post))  # ``post``: the test split's
    out.update(steer(agent, *test))
    return out


@torch.no_grad()
def steer(agent, batch, state, context=5, horizon=10, env_id="builtin:reach") -> dict:
    """The imagined agent's answer to constant actions against the simulator's (module docstring).
    ``state`` (W, L, 6): the windows' recorded states (agent position, velocity, goal)."""
    wm, rssm = agent.wm, agent.wm.rssm
    n = len(batch["image"])
    post, _ = wm.observe(wm.encode(batch["image"]), batch["action"].float(), batch["is_first"])
    start = {k: v[:, context - 1] for k, v in post.items()}
    at_start = drawn_agent(wm, start)
    # reference: the posterior's agent (every frame seen) from frame context - 1 to the window's last frame,
    # against the recorded motion: the same measure where the model is told where the agent is
    recorded = to_pixels(state[:, -1, :2] - state[:, context - 1, :2])
    track = slope(drawn_agent(wm, {k: v[:, -1] for k, v in post.items()}) - at_start, recorded)
    env = envs.make(env_id, obs="state").unwrapped  # raw steps: the spec's action repeat applied below
    repeat = envs.spec(env_id).action_repeat
    action_dim = batch["action"].shape[-1]
    gains, errors, true_len = [], [], []
    try:
        for push in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)):
            action = torch.zeros(n, action_dim)
            action[:, :2] = torch.tensor(push)
            s = start
            with latent_means(rssm):
                for _ in range(horizon):
                    s = rssm.img_step(s, action)
            moved = drawn_agent(wm, s) - at_start
            true = np.zeros((n, 2))
            for i in range(n):
                env.reset(seed=i)
                env.pos = [float(v) for v in state[i, context - 1, 0:2]]
                env.vel = [float(v) for v in state[i, context - 1, 2:4]]
                for _ in range(horizon * repeat):
                    env.step(list(push) + [0.0] * (action_dim - 2), render=False)
                true[i] = np.subtract(env.pos, state[i, context - 1, 0:2])
            true = to_pixels(true)
            gains.append(push_gain(moved, true, to_pixels(push) / PX_PER_UNIT))
            errors.append((moved - true).norm(dim=-1).mean().item())
            true_len.append(true.norm(dim=-1).mean().item())
    finally:
        env.close()
    return {"steer_gain": round(float(np.mean(gains)), 2), "steer_px_error": round(float(np.mean(errors)), 2),
            "steer_true_px": round(float(np.mean(true_len)), 2), "track_gain": round(track, 2)}


@torch.no_grad()
def redraw(agent, batch, post=None, prefix="agent", context=5) -> dict:
    """Centroid distance (pixels) and red-mass share of the agent in the decoder's reconstructions of a
    batch of windows: from the posterior (every frame), and open loop (the first ``context`` frames
    observed, the rest imagined from the recorded actions: the dynamics the actor's gradient runs through).
    ``post``: the batch's posterior states when the caller has them."""
    post = posterior(agent, batch)[1] if post is None else post
    red_t = redness(agent.wm.prepare(batch["image"]))
    red_r = redness(agent.wm.decoder(agent.wm.feat(post)).float())
    _, model = openloop_predict(agent, batch, context=context, rows=len(batch["image"]))
    red_o = redness(agent.wm.prepare(torch.from_numpy(model)))[:, context:]
    with latent_means(agent.wm.rssm):  # open loop again without sampling noise
        _, model = openloop_predict(agent, batch, context=context, rows=len(batch["image"]))
    red_m = redness(agent.wm.prepare(torch.from_numpy(model)))[:, context:]
    out = {}
    for name, red, true in ((prefix, red_r, red_t), (prefix + "_openloop", red_o, red_t[:, context:]),
                            (prefix + "_openloop_mean", red_m, red_t[:, context:])):
        red, true = red.flatten(0, 1), true.flatten(0, 1)
        out[f"{name}_px_error"] = round(float((centroid(red) - centroid(true)).norm(dim=-1).mean()), 2)
        out[f"{name}_red_share"] = round(float(red.sum() / true.sum()), 2)
    # the open-loop error of a model that imagines no motion: the last observed frame's agent, repeated
    still = centroid(red_t[:, context - 1 : context]) - centroid(red_t[:, context:])
    out[f"{prefix}_openloop_still_px_error"] = round(float(still.norm(dim=-1).mean()), 2)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="train on this dataset (default: on --train-episodes random-action episodes of --env)")
    p.add_argument("--train-episodes", type=int, default=300)
    p.add_argument("--hold", type=int, default=1,
                   help="without --dataset: hold each random action for this many steps (larger, longer pushes)")
    p.add_argument("--env", default="builtin:reach", help="where the probe's episodes come from (random actions)")
    p.add_argument("--probe-episodes", type=int, default=90, help="two thirds fit the probe, one third tests it")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(args.preset, args.overrides)
    tmp = Path(tempfile.mkdtemp(prefix="wm-probe-"))
    try:
        eps = random_episodes(args.env, args.probe_episodes, 10_000 + args.seed, tmp / "probe")
        cut = (2 * len(eps)) // 3
        fit, test = windows(eps[:cut], cfg.train.length), windows(eps[cut:], cfg.train.length)
        data = args.dataset
        if not data:
            data = tmp / "train"
            if args.hold > 1:
                held_random_episodes(args.env, args.train_episodes, args.hold, args.seed, data)
            else:
                make_dataset(args.env, "random", args.train_episodes, data, seed=args.seed)
        replay = Replay(data, seed=args.seed, cache_dir=tmp / "cache")
        fit_and_probe(args, cfg, replay, fit, test)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fit_and_probe(args, cfg, replay, fit, test) -> None:
    """World-model updates on ``replay``, probed every ``--eval-every`` updates; one JSON line per probe."""
    agent = DreamerAgent(cfg, replay.action_dim)
    diag_rng = np.random.default_rng(1234)
    rows, t0, spent = [], time.time(), 0.0
    for u in range(args.updates + 1):
        if u % args.eval_every == 0:
            with torch.random.fork_rng(devices=[]):  # the probes' sampling leaves training's random stream alone
                found = probe(agent, fit, test)
                seen = replay.sample(32, cfg.train.length, rng=diag_rng)
                diag = offline_diagnostics(agent, seen, cfg.behaviour.gamma)
                row = {"updates": u, "train_s": round(spent, 1), "reward_corr": round(diag["reward_corr"], 3)}
                row.update(found)
                row.update(redraw(agent, seen, prefix="train_agent"))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if u == args.updates:
            break
        t = time.time()
        batch = replay.sample(cfg.train.batch, cfg.train.length)
        agent.world_model_step(batch)
        spent += time.time() - t
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": args.overrides, "seed": args.seed, "rows": rows,
                                               "wall_s": time.time() - t0}, indent=1))


if __name__ == "__main__":
    main()
