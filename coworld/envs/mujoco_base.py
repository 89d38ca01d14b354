"""What the three MuJoCo adapters (``dmc.py``, ``metaworld.py``, ``robodesk.py``) have in common.

:class:`MujocoEnv` is a raw env (one step = one control step) holding the pieces that do not depend
on the simulator:

- the spaces: ``action_space = Box(-1, 1, (A,))``, ``observation_space = Dict(image (S, S, 3)
  uint8, state (n,) float32)``;
- option ``obs``: ``"image"`` (default) renders a frame per observation; ``"state"`` renders
  nothing, ``image`` is then an all-zero frame kept for the contract and an agent reads
  ``obs["state"]`` instead (low-dimensional source, Table 4);
- option ``action_noise``: std of Gaussian noise added to every action before clipping to
  [-1, 1] (the paper's "sim2real" action noise, Table 10). The noise comes from a generator
  seeded with the env's seed and re-seeded by ``reset(seed=...)``;
- rendering on demand, the raw-env protocol of ``wrappers.py``: ``step(action, render=False)``
  returns ``image=None`` without drawing, and ``render()`` draws the frame of the current state
  when the last step skipped it. The common wrapper renders only the last raw step of an action
  repeat this way; the frames it observes are the same as when every step renders.

A subclass builds its simulator, calls :meth:`set_spaces`, implements ``reset``/``step`` (calling
``super().reset(seed=seed)`` first, :meth:`noisy_action` on the incoming action and
:meth:`observe` for the returned observation), :meth:`render_frame`, :meth:`make_gl_context_current`
and :meth:`free` (release the simulator and its renderer; :meth:`close` calls it once).
"""

from __future__ import annotations

import atexit
import weakref

import gymnasium
import numpy as np

from coworld.envs.registry import EnvSpec, register
from coworld.errors import UserError


def register_suite(suite: str, env_class: type, descriptions: dict, task_option: str = "task", **fields):
    """Register ``<suite>:<task>`` for every task of ``descriptions`` (task -> one-line description),
    built by ``env_class(<task_option>=task, ...)``; the pip extra is named after the suite.
    ``fields``: the EnvSpec fields all its tasks share (action_dim, action_repeat, time_limit, ...)."""
    for task, description in descriptions.items():
        register(EnvSpec(
            id=f"{suite}:{task}", suite=suite, description=description,
            entry_point=f"{env_class.__module__}:{env_class.__name__}", extra=suite,
            kwargs={task_option: task}, **fields,
        ))


def check_task(suite: str, task: str, known) -> None:
    """UserError naming the known tasks when ``task`` is not one of them."""
    if task not in known:
        raise UserError(f"unknown {suite} task '{task}'; known: {', '.join(known)}")


# Envs that have drawn a frame and are not closed. One left open was freed by its finalizer during
# interpreter shutdown, after the renderers' own exit hooks had terminated the EGL display, and
# printed an EGLError traceback at exit (every Meta-World env did, and a DMC env beside one). Exit
# hooks run last-registered first and the renderers register theirs when they make a context, so
# close_open_envs is moved to the top after each env's first frame and frees them all in time.
_open_envs: weakref.WeakSet = weakref.WeakSet()


def close_open_envs() -> None:
    for env in list(_open_envs):
        env.close()


class MujocoEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, image_size: int, seed: int | None, obs: str, action_noise: float):
        if obs not in ("image", "state"):
            raise UserError(f"option obs must be 'image' or 'state', got {obs!r}")
        if action_noise < 0:
            raise UserError(f"option action_noise must be >= 0, got {action_noise}")
        self.image_size, self.obs_mode, self.action_noise = image_size, obs, float(action_noise)
        self.rng = np.random.default_rng(seed)  # action noise (and DMC's background)
        # The frame of the current state; None when the last step did not render it.
        # With obs="state" it stays the all-zero frame.
        self._image: np.ndarray | None = np.zeros((image_size, image_size, 3), np.uint8)
        self._closed = self._exit_hook = False

    def set_spaces(self, action_dim: int, state_dim: int) -> None:
        size = self.image_size
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.observation_space = gymnasium.spaces.Dict(
            image=gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8),
            state=gymnasium.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Re-seed ``np_random`` and the action noise; subclasses then reset the simulator."""
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def noisy_action(self, action) -> np.ndarray:
        """``action`` (float64) plus the action noise, clipped to [-1, 1]."""
        action = np.asarray(action, np.float64)
        if self.action_noise:
            action = action + self.rng.normal(0.0, self.action_noise, action.shape)
        return np.clip(action, -1.0, 1.0)

    def observe(self, state: np.ndarray, render: bool = True) -> dict:
        """The observation of the current state; the frame is drawn only when ``render``."""
        if self.obs_mode == "image":
            self._image = self._draw() if render else None
        return {"image": self._image, "state": np.asarray(state, np.float32)}

    def render(self) -> np.ndarray:
        """The frame of the current state (all zeros with ``obs="state"``)."""
        if self._image is None:
            self._image = self._draw()
        return self._image

    def _draw(self) -> np.ndarray:
        """``render_frame`` with this env's OpenGL context made current first.

        Each env renders through its own context, but neither renderer makes its context current
        before every frame: gymnasium's (Meta-World) only does so when one env has several render
        modes, and dm_control (DMC, RoboDesk) skips the switch when its own bookkeeping says its
        context is already current, which a gymnasium renderer can have changed behind its back. With
        two envs in one process (CoWorld's source and target, the evaluation's lockstep envs) a frame
        was then drawn with the other env's context: a Meta-World button-press frame drawn beside a
        drawer-close env differed from the same frame drawn alone by up to 211 of 255, and a DMC frame
        drawn after a Meta-World one came out black. Switching before every frame, rather than only
        when another env drew last, also covers contexts made current by creating an env.
        """
        self.make_gl_context_current()
        frame = self.render_frame()
        if not self._exit_hook:
            self._exit_hook = True
            _open_envs.add(self)
            atexit.unregister(close_open_envs)  # to the top of the exit hooks, above the renderer's
            atexit.register(close_open_envs)
        return frame

    def render_frame(self) -> np.ndarray:
        """Draw the current state: (S, S, 3) uint8."""
        raise NotImplementedError

    def make_gl_context_current(self) -> None:
        """Make the OpenGL context this env renders with current on this thread (each suite's own)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the simulator and its renderer; later calls do nothing."""
        if not self._closed:
            self._closed = True
            _open_envs.discard(self)
            self.free()

    def free(self) -> None:
        raise NotImplementedError
