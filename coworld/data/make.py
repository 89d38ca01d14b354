"""Datasets of chosen quality for environments with a scripted expert (the built-in suite).

Quality is measured by the normalised score, return / expert score (the env spec's ``expert_score``, or
the measured return of the scripted expert when the spec has none or the episode length is changed).
The scripted policy ``coworld.envs.scripted_policy(env, competence, seed)`` acts as the expert with
probability ``competence`` at each step and at random otherwise. The levels (docs/datasets.md):

- ``random``: competence 0 (uniform random actions);
- ``medium``: the competence whose mean normalised score is MEDIUM_SCORE (found by bisection on
  calibration episodes, see :func:`calibrate_competence`);
- ``expert``: competence 1;
- ``medium-expert``: alternating medium and expert episodes (half each, as in D4RL);
- ``medium-replay``: competence rising linearly from 0 to the medium competence across the episodes,
  like the replay of an agent learning until it first reaches a medium score (docs/algorithms.md#benchmarks-and-data).
"""

from __future__ import annotations

import numpy as np

from coworld.data.episodes import (
    EpisodeBuilder,
    check_new_output,
    episode_name,
    save_episode,
    staged_output,
    space_info,
    update_sidecar,
)
from coworld.errors import UserError

LEVELS = ("random", "medium-replay", "medium", "medium-expert", "expert")
MEDIUM_SCORE = 0.5  # normalised score that defines "medium"
CALIBRATION_EPISODES = 100  # episodes per competence evaluation (per-episode scores vary a lot)
CALIBRATION_STEPS = 7  # bisection steps (resolution 1/128 in competence)


def run_episode(env, policy, seed: int, builder: EpisodeBuilder | None = None) -> float:
    """Play one episode from ``env.reset(seed=seed)``; return its return (recording it if a builder is given)."""
    obs, _ = env.reset(seed=seed)
    if builder is not None:
        builder.reset(obs)
    total, done = 0.0, False
    while not done:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        done = terminated or truncated
        if builder is not None:
            builder.step(action, obs, reward, terminated, truncated, info)
    return total


def mean_return(env, competence: float, seeds) -> float:
    """Mean return of the scripted policy at ``competence`` over episodes seeded by ``seeds``
    (the same seeds for every competence: common random numbers keep bisection smooth)."""
    from coworld.envs import scripted_policy

    return float(np.mean([run_episode(env, scripted_policy(env, competence, seed=s), s) for s in seeds]))


def calibrate_competence(env, target: float, expert_score: float, seeds) -> float:
    """The smallest competence whose mean normalised score reaches ``target`` (bisection; the mean
    score rises with competence)."""
    low, high = 0.0, 1.0
    if mean_return(env, low, seeds) / expert_score >= target:
        return 0.0
    for _ in range(CALIBRATION_STEPS):
        mid = (low + high) / 2
        if mean_return(env, mid, seeds) / expert_score >= target:
            high = mid
        else:
            low = mid
    return high


def competence_schedule(level: str, episodes: int, medium: float) -> list[float]:
    """The competence of each episode of a dataset of ``level``."""
    if level == "random":
        return [0.0] * episodes
    if level == "medium":
        return [medium] * episodes
    if level == "expert":
        return [1.0] * episodes
    if level == "medium-expert":
        return [medium if i % 2 == 0 else 1.0 for i in range(episodes)]
    if level == "medium-replay":
        return [medium * i / max(episodes - 1, 1) for i in range(episodes)]
    raise UserError(f"unknown dataset level '{level}'; choose one of: {', '.join(LEVELS)}")


def make_dataset(env_id: str, level: str, episodes: int, out_dir, seed: int = 0, progress: bool = False, **env_options):
    """Collect ``episodes`` episodes of ``level`` quality in ``env_id`` into ``out_dir`` (episodes and
    dataset.json; a new or empty directory, which appears only once complete). Deterministic given
    ``seed``. Returns the sidecar written."""
    import coworld.envs as envs

    if level not in LEVELS:
        raise UserError(f"unknown dataset level '{level}'; choose one of: {', '.join(LEVELS)}")
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1 (got {episodes})")
    out_dir = check_new_output(out_dir)
    spec = envs.spec(env_id)
    env = envs.make(env_id, **env_options)
    calib_seeds, collect_seed = np.random.SeedSequence(seed).spawn(2)
    seeds = [int(s) for s in calib_seeds.generate_state(CALIBRATION_EPISODES)]

    expert_score = spec.expert_score
    if expert_score is None or "time_limit" in env_options or "action_repeat" in env_options:
        expert_score = mean_return(env, 1.0, seeds)
    if expert_score <= 0:
        raise UserError(f"{env_id}: the scripted expert's return is {expert_score:.3g}; cannot normalise scores")
    medium = 0.0
    if level in ("medium", "medium-expert", "medium-replay"):
        medium = calibrate_competence(env, MEDIUM_SCORE, expert_score, seeds)
    schedule = competence_schedule(level, episodes, medium)

    try:
        with staged_output(out_dir) as staged:
            return _collect(env, env_id, spec, level, schedule, medium, expert_score, seed, collect_seed, episodes,
                            staged, progress, env_options)
    finally:
        env.close()


def _collect(env, env_id, spec, level, schedule, medium, expert_score, seed, collect_seed, episodes, out_dir,
             progress, env_options) -> dict:
    import coworld.envs as envs

    episode_seeds = [int(s) for s in collect_seed.generate_state(2 * episodes)]
    builder = EpisodeBuilder(env.action_space.shape[0])
    returns, paths = [], []
    steps = range(episodes)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{env_id} {level}", unit="ep")
    for i in steps:
        policy = envs.scripted_policy(env, schedule[i], seed=episode_seeds[2 * i])
        returns.append(run_episode(env, policy, episode_seeds[2 * i + 1], builder))
        ep = builder.episode()
        paths.append(save_episode(out_dir, ep, name=episode_name(len(ep["reward"]) - 1, seq=i)))

    scores = np.asarray(returns) / expert_score
    collection = {
        "method": "scripted",
        "level": level,
        "seed": seed,
        "competence": {"medium": medium, "per_episode": schedule},
        "expert_score": expert_score,
        "medium_target_score": MEDIUM_SCORE,
        "normalised_score": {"mean": float(scores.mean()), "min": float(scores.min()), "max": float(scores.max())},
    }
    return update_sidecar(
        out_dir,
        paths,
        env=env_id,
        env_options=env_options,
        observation_space=space_info(env.observation_space),
        action_space=space_info(env.action_space),
        action_repeat=env_options.get("action_repeat") or spec.action_repeat,
        collection=collection,
    )
