"""The one wrapper every environment gets from :func:`coworld.envs.make`.

It turns a raw environment (one raw step = one control step) into the library's contract:

- actions are float32 of shape (A,) and clipped to [-1, 1];
- one agent step = ``action_repeat`` raw steps; rewards are summed; the repeat stops early when
  the raw environment terminates or truncates;
- an episode is truncated after ``time_limit`` agent steps (``truncated=True``);
- ``info["success"]`` is always present when the task has a success notion: True when any of the
  repeated raw steps reported success;
- observations are checked: ``image (S, S, 3) uint8`` and ``state (n,) float32``.

Rendering only the kept frame. Only the last raw step of a repeat is observed, and drawing the
image is most of a raw step's cost, so a raw env may take a keyword ``step(action, render=True)``:

- ``step(action, render=False)`` advances the env without drawing; its observation has
  ``image=None``;
- ``render()`` returns the frame of the current state, drawing it if the last step did not.

The wrapper passes ``render=False`` to all but the last raw step of a repeat, and calls
``render()`` when a repeat ends early on a step that did not draw, so the observed images are
exactly those of an env that draws every step. Every env of the registry takes the keyword (the
built-in suite and the MuJoCo adapters, via ``mujoco_base.py``); an env without it is stepped
plainly.
"""

from __future__ import annotations

import inspect

import gymnasium
import numpy as np
from gymnasium import spaces


class CommonWrapper(gymnasium.Wrapper):
    def __init__(
        self,
        env: gymnasium.Env,
        *,
        action_repeat: int = 1,
        time_limit: int = 1000,
        has_success: bool = False,
        image_size: int = 64,
        seed: int | None = None,
    ):
        super().__init__(env)
        act, obs = env.action_space, env.observation_space
        if not isinstance(act, spaces.Box) or len(act.shape) != 1:
            raise TypeError(f"{env}: raw action space must be a 1-D Box, got {act}")
        if not isinstance(obs, spaces.Dict) or "image" not in obs.spaces or "state" not in obs.spaces:
            raise TypeError(f"{env}: raw observation space must be Dict(image=..., state=...), got {obs}")
        self.image_shape = (image_size, image_size, 3)
        image = obs["image"]
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise TypeError(f"{env}: image space must be {self.image_shape} uint8, got {image}")
        state_dim = obs["state"].shape[0]
        self.action_space = spaces.Box(-1.0, 1.0, act.shape, np.float32)
        self.observation_space = spaces.Dict(
            image=spaces.Box(0, 255, self.image_shape, np.uint8),
            state=spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
        )
        self.action_repeat = action_repeat
        self.time_limit = time_limit
        self.has_success = has_success
        self._seed = seed  # used by the first reset() that comes without a seed
        # Draw only the last raw step of a repeat (see the module docstring); False draws every step.
        self.skip_render = "render" in inspect.signature(env.step).parameters
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed, self._seed = self._seed, None
        else:
            self._seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        self._t = 0
        if self.has_success:
            info["success"] = bool(info.get("success", False))
        return self._check(obs), info

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} != {self.action_space.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"action has NaN or inf entries: {action}")
        action = np.clip(action, -1.0, 1.0)
        total, success = 0.0, False
        for i in range(self.action_repeat):
            if self.skip_render:
                render = i == self.action_repeat - 1
                obs, reward, terminated, truncated, info = self.env.step(action, render=render)
            else:
                obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            success = success or bool(info.get("success", False))
            if terminated or truncated:
                break
        if obs["image"] is None:  # the repeat ended early on a step that did not draw
            obs = {**obs, "image": self.env.render()}
        self._t += 1
        if self._t >= self.time_limit and not terminated:
            truncated = True
        if self.has_success:
            info["success"] = success
        return self._check(obs), total, bool(terminated), bool(truncated), info

    def _check(self, obs: dict) -> dict:
        image, state = obs["image"], obs["state"]
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise TypeError(f"{self.env}: image {image.shape} {image.dtype}, expected {self.image_shape} uint8")
        if state.dtype != np.float32:
            state = state.astype(np.float32)
        return {"image": image, "state": state}
