"""Helpers shared by the environment tests."""

import importlib

import numpy as np
import pytest

import coworld.envs as envs


def import_suite(module: str, extra: str, *packages: str):
    """``coworld.envs.<module>``; skips the calling tests when one of ``packages`` is missing."""
    for package in packages:
        pytest.importorskip(package, reason=f"{package} not installed: pip install 'coworld[{extra}]'")
    return importlib.import_module(f"coworld.envs.{module}")


def rollout(env, steps: int, seed: int = 0) -> dict:
    """Reset ``env`` with ``seed``, take ``steps`` seeded uniform random actions.

    Returns the stacked observations (``steps + 1``: the reset's first) and the rewards.
    """
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, *env.action_space.shape))
    images, states, rewards = [obs["image"].copy()], [obs["state"]], []
    for action in actions:
        obs, reward, *_ = env.step(action)
        images.append(obs["image"].copy())
        states.append(obs["state"])
        rewards.append(reward)
    return {"image": np.stack(images), "state": np.stack(states), "reward": np.array(rewards)}


def draws_with_and_without_skipping(env_id: str, draw_method: str, steps: int, **options):
    """Roll out ``env_id`` twice with the same seed and actions: drawing every raw step
    (``skip_render=False``) and drawing only the kept frames. Returns, for each, the rollout and
    how often the raw env's ``draw_method`` ran."""
    results = []
    for skip in (False, True):
        env = envs.make(env_id, seed=0, **options)
        env.skip_render = skip
        raw, calls = env.unwrapped, []
        draw = getattr(raw, draw_method)
        setattr(raw, draw_method, lambda: calls.append(1) or draw())
        results.append((rollout(env, steps), len(calls)))
        env.close()
    return results
