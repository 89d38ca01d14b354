"""RoboDesk targets (docs/algorithms.md#benchmarks-and-data): a Franka Panda arm at a desk, driven through inverse kinematics.

Ids: ``robodesk:push_green``, ``robodesk:open_slide``, ``robodesk:open_drawer``,
``robodesk:upright_block_off_table``. Dense rewards in [0, 1] per step, 500-step episodes,
5-D actions: end-effector motion (x, y, z), wrist rotation and gripper opening.

The PyPI release (robodesk 1.0.0, 2021) cannot be used as is: it imports the retired ``gym``
package and resizes with ``Image.ANTIALIAS``, which Pillow 10 removed. This module is a
re-implementation on dm_control/MuJoCo that follows the original environment step for step (same
IK control, 10 physics steps per control step, same camera, crop and Lanczos resize, same reset
randomisation and reward formulas). Its model files (``desk.xml``, the Franka meshes and textures)
are vendored unchanged under ``coworld/envs/_vendor/robodesk`` with their Apache-2.0 licence.

Two deliberate differences from robodesk 1.0.0, both documented in docs/benchmarks.md:

- the original keeps the objects' reset positions as live views into MuJoCo's state, so
  "did not move" is always true and the "block pushed" term is always 0. Here the reset
  positions are copied. ``legacy_rewards=True`` restores the original behaviour, for comparing
  with numbers published with robodesk 1.0.0 (the paper's).
- the original reports object velocities under ``qpos_objects``; the state here uses positions.

Options: ``fast_render`` (see ``rendering.py``), ``action_noise``, ``obs`` (see ``mujoco_base.py``),
``legacy_rewards`` (above).
"""

from __future__ import annotations

import os

import numpy as np

from coworld.envs.mujoco_base import MujocoEnv, check_task, register_suite
from coworld.envs.rendering import apply_fast_render, make_dm_control_context_current, setup_gl
from coworld.errors import MissingDependency

ASSETS = os.path.join(os.path.dirname(__file__), "_vendor", "robodesk", "assets")
TASKS = {
    "push_green": "push the green button",
    "open_slide": "slide the cabinet door open",
    "open_drawer": "pull the drawer open",
    "upright_block_off_table": "push the upright block off the desk, leave the others",
}
EPISODE_STEPS = 500
ARM_JOINTS = 9  # 7 arm joints + 2 fingers; the objects' joints follow in qpos
IK_JOINTS = tuple(f"panda0_joint{i}" for i in range(1, 7))
END_EFFECTOR_SCALE, WRIST_SCALE = 0.01, 0.02
PHYSICS_STEPS = 10  # physics steps per control step
OBJECTS = ("flat_block", "upright_block", "ball")
# Camera and crop of the original: render 120x120 from a fixed viewpoint above the desk,
# crop (Pillow rounds the original's fractional box to these pixels), resize to image_size.
CAMERA = dict(distance=1.8, azimuth=90.0, elevation=-60.0, lookat=(0.0, 0.535, 1.1))
RENDER_SIZE = 120
CROP_BOX = (17, 25, 105, 89)  # left, top, right, bottom


def _dm_mujoco():
    setup_gl()
    try:
        from dm_control import mujoco
        from dm_control.utils import inverse_kinematics
    except ImportError as exc:
        raise MissingDependency("dm_control", "robodesk", what="the RoboDesk benchmarks") from exc
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependency("Pillow", "robodesk", what="the RoboDesk benchmarks") from exc
    return mujoco, inverse_kinematics, Image


class RoboDeskEnv(MujocoEnv):
    """One RoboDesk task as a raw gymnasium env (one step = one control step)."""

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        seed: int | None = None,
        fast_render: bool = False,
        action_noise: float = 0.0,
        obs: str = "image",
        legacy_rewards: bool = False,
    ):
        check_task("RoboDesk", task, TASKS)
        super().__init__(image_size, seed, obs, action_noise)
        mujoco, self._ik, self._Image = _dm_mujoco()
        self.physics = mujoco.Physics.from_xml_path(os.path.join(ASSETS, "desk.xml"))
        self._ik_physics = self.physics.copy(share_model=True)  # scratch copy the IK solver edits
        if fast_render:
            apply_fast_render(self.physics.model.ptr)
        self._camera = mujoco.Camera(self.physics, RENDER_SIZE, RENDER_SIZE, camera_id=-1)
        free = self._camera._render_camera  # the free camera: set its fixed viewpoint once
        free.distance, free.azimuth, free.elevation = CAMERA["distance"], CAMERA["azimuth"], CAMERA["elevation"]
        free.lookat[:] = CAMERA["lookat"]

        self.task, self.legacy_rewards = task, legacy_rewards
        self.joint_bounds = self.physics.model.actuator_ctrlrange.copy()  # (9, 2)
        self._reset_rng = np.random.RandomState(seed)  # reset randomisation (the original's)
        self._start: dict[str, np.ndarray] = {}
        m = self.physics.model
        self.set_spaces(5, 2 * ARM_JOINTS + 3 + (m.nq - ARM_JOINTS) + (m.nv - ARM_JOINTS))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._reset_rng = np.random.RandomState(seed)
        physics, u = self.physics, self._reset_rng.random_sample
        physics.reset()
        qpos = physics.named.data.qpos
        qpos["drawer_joint"] -= 0.10 * u()
        qpos["slide_joint"] += 0.20 * u()
        qpos["flat_block"][:2] += [0.3 * u(), 0.07 * u()]
        qpos["ball"][:2] += [0.48 * u(), 0.08 * u()]
        qpos["upright_block"][:2] += [0.3 * u() + 0.05, 0.05 * u()]
        low, high = self.joint_bounds[:, 0], self.joint_bounds[:, 1]
        home = np.array([-0.30, -0.4, 0.28, -2.5, 0.13, 1.87, 0.91, 0.01, 0.01])
        physics.data.qpos[:ARM_JOINTS] = home + 0.15 * self._reset_rng.uniform(low, high)
        physics.data.qvel[:ARM_JOINTS] = 0.0
        physics.forward()
        self._ik_physics.data.qpos[:] = physics.data.qpos
        xpos = physics.named.data.xpos
        # robodesk 1.0.0 kept live views here (see the module docstring); legacy_rewards does too.
        self._start = {n: xpos[n] if self.legacy_rewards else xpos[n].copy() for n in OBJECTS}
        return self.observe(self._state()), {"success": False}

    def step(self, action, render: bool = True):
        action = self.noisy_action(action)
        target = self._joint_targets(action)
        data = self.physics.data
        for _ in range(PHYSICS_STEPS):
            data.ctrl[:ARM_JOINTS] = target
            data.qfrc_applied[:ARM_JOINTS] = data.qfrc_bias[:ARM_JOINTS]  # gravity compensation
            self.physics.step()
        self._ik_physics.data.qpos[:] = data.qpos
        reward, success = self._reward()
        return self.observe(self._state(), render), reward, False, False, {"success": success}

    def free(self):
        self._camera._scene.free()
        self.physics.free()  # its rendering contexts (the IK copy renders nothing)

    def _joint_targets(self, action: np.ndarray) -> np.ndarray:
        """Action in [-1, 1]^5 -> target positions of the 9 arm joints (position actuators)."""
        site = self.physics.named.data.site_xpos["end_effector"] + END_EFFECTOR_SCALE * action[:3]
        joints = self._ik.qpos_from_site_pose(
            self._ik_physics, "end_effector", site, joint_names=IK_JOINTS, inplace=True
        ).qpos[:ARM_JOINTS].copy()
        wrist_low, wrist_high = self.joint_bounds[6]
        wrist = wrist_low + (action[3] + 1.0) / 2.0 * (wrist_high - wrist_low)
        joints[6] = np.clip(self.physics.data.qpos[6] + WRIST_SCALE * wrist, wrist_low, wrist_high)
        grip_low, grip_high = self.joint_bounds[7]
        joints[7] = joints[8] = grip_low + (action[4] + 1.0) / 2.0 * (grip_high - grip_low)
        return joints

    def _state(self) -> np.ndarray:
        data = self.physics.data
        return np.concatenate([
            data.qpos[:ARM_JOINTS], data.qvel[:ARM_JOINTS],
            self.physics.named.data.site_xpos["end_effector"],
            data.qpos[ARM_JOINTS:], data.qvel[ARM_JOINTS:],
        ]).astype(np.float32)

    def make_gl_context_current(self) -> None:
        make_dm_control_context_current(self.physics)

    def render_frame(self) -> np.ndarray:
        frame = self._camera.render()[CROP_BOX[1]:CROP_BOX[3], CROP_BOX[0]:CROP_BOX[2]]
        size = (self.image_size, self.image_size)
        return np.asarray(self._Image.fromarray(frame).resize(size, self._Image.LANCZOS))

    # Rewards: the formulas of robodesk 1.0.0 for the four tasks, clipped to [0, 1].

    def _reach(self, position) -> float:
        """1 at the end effector, falling linearly to 0 at 1 m."""
        distance = np.linalg.norm(self.physics.named.data.site_xpos["end_effector"] - position)
        return float(np.clip(1.0 - distance, 0.0, 1.0))

    def _still(self, name: str) -> bool:
        return bool(np.linalg.norm(self.physics.named.data.xpos[name] - self._start[name]) < 0.01)

    def _reward(self) -> tuple[float, bool]:
        d = self.physics.named.data
        if self.task == "push_green":
            pressed = bool(d.qpos["green_light"][0] < -0.00453)
            reward, success = 0.25 * pressed + 0.75 * self._reach(d.xpos["green_button"]), pressed
        elif self.task == "open_slide":
            opening = d.qpos["slide_joint"][0] / 0.6
            handle = self._reach(d.site_xpos["slide_handle"] - np.array([0.15, 0.0, 0.0]))
            untouched = 0.33 * self._still(OBJECTS[0]) + 0.33 * self._still(OBJECTS[1]) + 0.34 * self._still(OBJECTS[2])
            reward = 0.9 * (0.75 * opening + 0.25 * handle) + 0.1 * untouched
            success = bool(d.qpos["slide_joint"][0] > 0.55)
        elif self.task == "open_drawer":
            opening = abs(d.qpos["drawer_joint"][0]) / 0.3
            reward = 0.75 * opening + 0.25 * self._reach(d.geom_xpos["drawer_handle"])
            success = bool(d.qpos["drawer_joint"][0] < -0.2)
        else:  # upright_block_off_table
            block, others = "upright_block", ("flat_block", "ball")
            fallen = 1.0 - d.xpos[block][2] / self._start[block][2]
            stayed = [1.0 - np.linalg.norm(d.xpos[n] - self._start[n]) / 5.0 for n in others]
            pushing = np.clip(0.8 * fallen + 0.1 * stayed[0] + 0.1 * stayed[1], 0.0, 1.0)
            reward = 0.75 * pushing + 0.25 * self._reach(d.xpos[block])
            success = bool(d.qpos[block][2] < 0.6 and all(self._still(n) for n in others))
        return float(np.clip(reward, 0.0, 1.0)), success


register_suite(
    "robodesk", RoboDeskEnv, {task: f"RoboDesk {task}: {what}" for task, what in TASKS.items()},
    action_dim=5, action_repeat=1, time_limit=EPISODE_STEPS, has_success=True,
)
