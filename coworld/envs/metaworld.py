"""Meta-World v3 tasks (docs/algorithms.md#benchmarks-and-data): sources and targets of the paper's Meta-World pairs.

Ids: ``metaworld:door-close``, ``metaworld:button-press``, ``metaworld:window-close``,
``metaworld:handle-press``, ``metaworld:drawer-close``, ``metaworld:button-press-topdown``
(built from Meta-World's ``*-v3`` classes; PyPI's metaworld ships only v3).

- Camera ``corner`` at ``image_size`` pixels. Rendered through gymnasium the frame comes out
  upside down; the rows are flipped so the table is at the bottom of the image.
- 500-step episodes, action repeat 1, 4-D actions (x, y, z hand motion and gripper effort).
- Object and goal positions are drawn anew at every reset from the env's seeded generator
  (deterministic given the seed); the state observation (39-D) includes the goal.
- Raw Meta-World rewards (0-10 per step); ``info["success"]`` is Meta-World's success flag.

Options: ``fast_render`` (see ``rendering.py``), ``action_noise`` and ``obs`` (see
``mujoco_base.py``), ``camera`` (Meta-World camera name) and ``reward``: ``"dense"`` (default,
raw rewards) or ``"sparse"`` (1 on steps where the task is solved, else 0: the sparse-reward
source of Table 5).
"""

from __future__ import annotations

import numpy as np

from coworld.envs.mujoco_base import MujocoEnv, check_task, register_suite
from coworld.envs.rendering import apply_fast_render, setup_gl
from coworld.errors import MissingDependency, UserError

TASKS = {
    "door-close": "close a door by pushing it",
    "button-press": "press a button from the front",
    "window-close": "slide a window closed",
    "handle-press": "press a handle down",
    "drawer-close": "push a drawer closed",
    "button-press-topdown": "press a button from above",
}
EPISODE_STEPS = 500
NO_PATH_LIMIT = 10**9  # the common wrapper enforces the time limit instead of Meta-World


class MetaWorldEnv(MujocoEnv):
    """One Meta-World v3 task as a raw gymnasium env with image and state observations."""

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        seed: int | None = None,
        camera: str = "corner",
        fast_render: bool = False,
        action_noise: float = 0.0,
        reward: str = "dense",
        obs: str = "image",
    ):
        check_task("Meta-World", task, TASKS)
        if reward not in ("dense", "sparse"):
            raise UserError(f"option reward must be 'dense' or 'sparse', got {reward!r}")
        super().__init__(image_size, seed, obs, action_noise)
        setup_gl()
        try:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        except ImportError as exc:
            raise MissingDependency("metaworld", "metaworld", what="the Meta-World benchmarks") from exc
        name = f"{task}-v3"
        self._env = ALL_V3_ENVIRONMENTS[name](
            render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size
        )
        # What Meta-World's set_task() does for a benchmark task, without building the benchmark
        # (which instantiates the env 50 times): goal visible in the state, and the goal left
        # unfrozen so that every reset draws a new one from the env's own seeded generator.
        self._env._partially_observable = False
        self._env.__dict__.pop("sawyer_observation_space", None)  # cached; recomputed on use
        self._env._set_task_called = True
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env.max_path_length = NO_PATH_LIMIT
        self._env.seed(0 if seed is None else seed)
        if fast_render:
            apply_fast_render(self._env.model)
        self.task, self.reward_mode = task, reward
        self.set_spaces(4, self._env.observation_space.shape[0])

    @property
    def goal(self) -> np.ndarray:
        """The goal position of the current episode."""
        return np.array(self._env._target_pos)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        state, _ = self._env.reset()
        return self.observe(state), {"success": False}

    def step(self, action, render: bool = True):
        action = self.noisy_action(action).astype(np.float32)
        state, reward, _, _, info = self._env.step(action)
        success = bool(info["success"])
        if self.reward_mode == "sparse":
            reward = float(success)
        return self.observe(state, render), float(reward), False, False, {"success": success}

    def make_gl_context_current(self) -> None:
        self._env.mujoco_renderer._get_viewer("rgb_array").make_context_current()

    def render_frame(self) -> np.ndarray:
        return np.ascontiguousarray(self._env.render()[::-1])  # upright: flip the rows

    def free(self):
        self._env.close()


register_suite(
    "metaworld", MetaWorldEnv, {task: f"Meta-World v3 {task}: {what}" for task, what in TASKS.items()},
    action_dim=4, action_repeat=1, time_limit=EPISODE_STEPS, has_success=True,
)
