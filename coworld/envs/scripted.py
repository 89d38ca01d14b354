"""Scripted policies with a quality knob, for making datasets of chosen quality.

A raw environment offers an expert by defining ``expert_action(obs) -> action`` (it may read
``obs["state"]`` or its own simulator state). ``scripted_policy`` mixes that expert with uniform
random actions: at every agent step it acts as the expert with probability ``competence`` and
uniformly at random otherwise, so competence 1.0 is the expert, 0.0 is uniform random, and the
expected return grows with competence in between.
"""

from __future__ import annotations

from typing import Callable

import gymnasium
import numpy as np

from coworld.errors import UserError


def scripted_policy(env: gymnasium.Env, competence: float = 1.0, seed: int = 0) -> Callable[[dict], np.ndarray]:
    """A callable ``obs -> action`` (float32, shape (A,), in [-1, 1]) for ``env``."""
    if not 0.0 <= competence <= 1.0:
        raise UserError(f"competence must be in [0, 1], got {competence}")
    expert = getattr(env.unwrapped, "expert_action", None)
    if expert is None:
        raise UserError(f"{env.unwrapped} has no scripted expert (no expert_action method)")
    action_dim = env.action_space.shape[0]
    rng = np.random.default_rng(seed)

    def act(obs: dict) -> np.ndarray:
        if rng.random() < competence:
            action = np.asarray(expert(obs), dtype=np.float32)
        else:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        return np.clip(action, -1.0, 1.0)

    return act
