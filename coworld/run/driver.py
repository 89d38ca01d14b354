"""Environment interaction: the collector and evaluation.

:class:`Collector` steps one environment with a policy (random actions or an
agent), records each finished episode into a :class:`~coworld.data.replay.Replay`
and can be checkpointed at ANY step, also mid-episode: every episode is reset
with a seed from a fixed stream (``seed``, episode index), and the checkpoint
keeps the actions taken so far in the current episode. Restoring resets the env
with the same seed and replays those actions, which rebuilds the env state and
the partial episode exactly for any deterministic simulator, without pickling
simulator objects.
"""

from __future__ import annotations

import numpy as np
import torch

from coworld.data.episodes import EpisodeBuilder
from coworld.run.checkpoint import forked_rng, generator_state, set_generator_state


def episode_seed(seed: int, index: int) -> int:
    """The env seed of episode ``index`` of a run seeded ``seed`` (a fixed stream)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _batch(obs: dict) -> dict:
    return {k: np.asarray(v)[None] for k, v in obs.items()}


def _nonfinite_parameter(agent) -> str | None:
    from coworld.run.session import nonfinite_parameter

    module = agent if isinstance(agent, torch.nn.Module) else getattr(agent, "agent", None)  # ActionSlice
    return nonfinite_parameter({"agent": module}, prefix=False)


def _looks_nonfinite(exc: Exception) -> bool:
    """Whether an error raised inside ``act`` is what NaN/inf inputs to a distribution give."""
    text = str(exc).lower()
    return any(s in text for s in ("nan", "inf", "std >= 0", "invalid values"))


def act(agent, obs: dict, state, is_first: np.ndarray, explore: bool):
    """``agent.act`` that reports a diverged policy as TrainingDiverged.

    A policy whose weights became NaN/inf (or so large that its outputs overflow) fails deep
    in torch.distributions ("normal expects all elements of std >= 0.0") or returns NaN actions;
    both become the run's clean divergence stop instead of a traceback or a NaN sent to the env.
    """
    from coworld.run.session import diverged

    try:
        action, state = agent.act(obs, state, is_first, explore=explore)
    except (RuntimeError, ValueError) as exc:
        what = _nonfinite_parameter(agent)
        if what is None and not _looks_nonfinite(exc):
            raise
        raise diverged(f"{what} became NaN/inf" if what else f"the policy's output ({exc})") from None
    if not np.isfinite(action).all():
        what = _nonfinite_parameter(agent)
        raise diverged(f"{what} became NaN/inf" if what else "the policy's action became NaN/inf")
    return action, state


class Collector:
    def __init__(self, env, replay, *, seed: int, action_dim: int):
        self.env = env
        self.replay = replay
        self.seed = seed
        self.action_dim = action_dim
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        self.steps = 0  # agent steps taken in total
        self.episodes = 0  # episodes finished
        self.builder = EpisodeBuilder(action_dim)
        self.actions: list[np.ndarray] = []  # actions of the current episode (for restoring)
        self.obs = None
        self.policy_state = None
        self.ep_return = 0.0
        self.last_episode: dict | None = None  # summary of the latest finished episode

    # -- stepping ---------------------------------------------------------------------------
    def _begin(self) -> None:
        self.obs, _ = self.env.reset(seed=episode_seed(self.seed, self.episodes))
        self.builder.reset(self.obs)
        self.actions = []
        self.policy_state = None
        self.ep_return = 0.0

    def step(self, agent=None, explore: bool = True, noise: float = 0.0) -> dict | None:
        """Take one agent step: random actions when ``agent`` is None.

        Returns a summary dict when this step finished an episode, else None.
        """
        if self.obs is None:
            self._begin()
        is_first = not self.actions
        if agent is None:
            action = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        else:
            if self.policy_state is None:
                self.policy_state = agent.initial_policy_state(1)
            actions, self.policy_state = act(agent, _batch(self.obs), self.policy_state, np.array([is_first]),
                                             explore=explore)
            action = actions[0]
            if noise > 0:
                action = action + noise * self.rng.standard_normal(self.action_dim).astype(np.float32)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return self._advance(action)

    def _advance(self, action: np.ndarray, record: bool = True) -> dict | None:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.builder.step(action, obs, reward, terminated, truncated, info)
        self.actions.append(action)
        self.obs = obs
        self.ep_return += float(reward)
        if not record:
            return None
        self.steps += 1
        if not (terminated or truncated):
            return None
        episode = self.builder.episode()
        self.replay.add_episode(episode)
        self.episodes += 1
        summary = {"return": self.ep_return, "length": len(self.actions)}
        if "success" in episode:
            summary["success"] = float(np.any(episode["success"]))
        self.last_episode = summary
        self.obs = None
        return summary

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        actions = np.stack(self.actions) if self.actions else np.zeros((0, self.action_dim), np.float32)
        state = {
            "steps": self.steps,
            "episodes": self.episodes,
            "rng": generator_state(self.rng),
            "in_episode": self.obs is not None,
            "actions": torch.from_numpy(actions),
            "policy_state": self.policy_state,
            "last_episode": self.last_episode,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.episodes = state["episodes"]
        set_generator_state(self.rng, state["rng"])
        self.last_episode = state["last_episode"]
        self.obs = None
        if state["in_episode"]:
            self._begin()
            for action in state["actions"].numpy():
                self._advance(action.astype(np.float32), record=False)
            self.policy_state = state["policy_state"]


def discounted_to_go(rewards: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """G_t = rewards[t] + gamma * G_{t+1}, with G_T = ``bootstrap`` after the last reward;
    rewards[t] follows step t."""
    out = np.zeros(len(rewards))
    acc = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        out[t] = acc
    return out


def value_overestimation(values, rewards, gamma: float, steps: int, bootstrap: float | None = None):
    """The value-overestimation measure of the paper's Fig. 5b on one trajectory of the agent's own.

    values[t] = v(s_t), the critic's prediction at the t-th visited state; rewards[t] the reward
    that followed. Over the first ``steps`` states (N; all of them in a shorter episode) it
    compares the critic's predictions with the discounted sums of the rewards actually obtained
    from those states, G_t = sum_k gamma^k r_{t+k}. The critic estimates an infinite-horizon
    value and a time limit is not the end of the task, so an episode cut by its time limit
    continues G_t past its end with ``bootstrap`` = v(s_T), the critic at the final state (None
    for an episode that terminated). A critic that predicts the true discounted value thus reads 0.

    Returns (estimate, truth): the mean over the N states of v(s_t) and of G_t (the paper's
    sums over N steps, divided by N).
    """
    n = max(1, min(int(steps), len(values)))
    truth = discounted_to_go(np.asarray(rewards, np.float64), gamma, bootstrap or 0.0)
    return float(np.mean(values[:n])), float(np.mean(truth[:n]))


@torch.no_grad()
def evaluate(agent, env, *, episodes: int, seed: int, video: bool = False, gamma: float | None = None,
             value_steps: int = 50) -> dict:
    """Run ``episodes`` episodes with the actor's mean action (the paper's evaluation protocol).

    ``env`` is one environment or a list of them: with K environments the episodes run K at a
    time in lockstep and the agent acts on all K frames in one batched call, which removes most
    of the per-step cost of a small policy (``train.eval_envs``). Episode i is reset with the
    same seed either way; the posterior samples come in another order, so the returns agree in
    distribution, not digit for digit, between different K.

    Uses its own seed stream and a forked torch RNG, so evaluating never changes
    the course of training. Returns per-episode returns/lengths (and success where
    the env reports it) and, with ``video``, the frames of the first episode.

    With ``gamma``, also the value-overestimation measure of the paper's Fig. 5b over the
    first ``value_steps`` states of each episode (:func:`value_overestimation`).
    """
    pool = list(env) if isinstance(env, (list, tuple)) else [env]
    results = [None] * episodes
    frames: list = []
    with forked_rng(getattr(agent, "device", "cpu")):
        torch.manual_seed(seed)
        for first in range(0, episodes, len(pool)):
            wave = range(first, min(first + len(pool), episodes))
            for i, result in zip(wave, _lockstep(agent, pool[:len(wave)], wave, seed, gamma, value_steps,
                                                 frames if video and first == 0 else None)):
                results[i] = result
    out = {"returns": [r["return"] for r in results], "lengths": [r["length"] for r in results]}
    if any(r["success"] is not None for r in results):
        out["successes"] = [float(r["success"]) for r in results if r["success"] is not None]
    if video:
        out["frames"] = np.stack(frames)
    if gamma is not None:
        out["value_estimate"] = [r["estimate"] for r in results]
        out["true_return"] = [r["truth"] for r in results]
    return out


def _lockstep(agent, envs: list, indices, seed: int, gamma: float | None, value_steps: int, frames: list | None):
    """One episode in each of ``envs`` (episode ``indices[j]`` in env j), the policy acting on all
    of them at once; ``frames`` collects env 0's frames. An env whose episode ended keeps feeding
    its last frame (its outputs ignored); with ``gamma`` an episode cut by its time limit gets the
    critic's value of its final state from the next batched call, as its bootstrap."""
    n = len(envs)
    obs = [e.reset(seed=episode_seed(seed, 1_000_000 + i))[0] for e, i in zip(envs, indices)]
    state = agent.initial_policy_state(n)
    is_first = np.ones(n, dtype=bool)
    running, awaiting_value = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    out = [{"return": 0.0, "length": 0, "success": None, "rewards": [], "values": [], "bootstrap": None}
           for _ in range(n)]
    while running.any() or awaiting_value.any():
        if frames is not None and running[0]:
            frames.append(obs[0]["image"])
        batch = {k: np.stack([np.asarray(o[k]) for o in obs]) for k in obs[0]}
        action, state = act(agent, batch, state, is_first, explore=False)
        if gamma is not None:
            values = agent.policy_value(state)
            for j in np.flatnonzero(awaiting_value):
                out[j]["bootstrap"], awaiting_value[j] = float(values[j]), False
            for j in np.flatnonzero(running):
                out[j]["values"].append(float(values[j]))
        is_first[:] = False
        for j in np.flatnonzero(running):
            obs[j], reward, terminated, truncated, info = envs[j].step(action[j])
            r = out[j]
            r["rewards"].append(float(reward))
            r["return"] += float(reward)
            r["length"] += 1
            if "success" in info:
                r["success"] = bool(r["success"]) or bool(info["success"])
            if terminated or truncated:
                running[j] = False
                awaiting_value[j] = gamma is not None and not terminated
                if frames is not None and j == 0:
                    frames.append(obs[0]["image"])
    if gamma is not None:
        for r in out:
            r["estimate"], r["truth"] = value_overestimation(r["values"], r["rewards"], gamma, value_steps,
                                                             r["bootstrap"])
    return out
