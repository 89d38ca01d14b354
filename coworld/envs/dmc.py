"""DeepMind Control tasks with the paper's target variants (docs/algorithms.md#benchmarks-and-data).

Ids: ``dmc:walker_walk``, ``dmc:walker_run``, ``dmc:cheetah_run`` (sources) and the targets
``dmc:{walker,cheetah}_{downhill,uphill}``, ``dmc:walker_nofoot``, ``dmc:cheetah_nopaw``.
Camera 0, action repeat 2, 1000 control steps (500 agent steps).

The variants are built in memory from the stock dm_control models; installed files are never
touched. The model XML string is edited before ``Physics`` is built:

- downhill / uphill: gravity tilted by 15 degrees along the walking axis (+x), i.e.
  ``9.81 * (+-sin 15, 0, -cos 15) = (+-2.54, 0, -9.47)``; the floor itself stays flat and is
  lengthened, and the tracking camera is rolled by 15 degrees about its viewing axis so that
  gravity points straight down in the image and the floor appears as a slope.
- walker_nofoot / cheetah_nopaw: the right foot / front paw geom is shrunk to about 1 mm while
  its body, joint and motor stay, so the action space is unchanged.

Options (passed through ``coworld.envs.make``):

- ``fast_render`` (bool): smaller shadow maps and no multisampling (see ``rendering.py``).
- ``background``: ``None``, ``"procedural"`` (moving coloured waves) or ``"video:DIR"`` (frames
  or videos read from DIR) composited behind the agent wherever the segmentation render shows
  the sky or the floor (Table 10).
- ``action_noise`` (float) and ``obs`` (``"image"`` or ``"state"``: the flattened proprioceptive
  observation, no rendering), as for every MuJoCo suite: see ``mujoco_base.py``.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import numpy as np

from coworld.envs.mujoco_base import MujocoEnv, check_task, register_suite
from coworld.envs.rendering import apply_fast_render, make_dm_control_context_current, setup_gl
from coworld.errors import MissingDependency, UserError

TILT_DEGREES = 15.0
GRAVITY = 9.81
TINY_SIZE = "0.0005 0.0005"  # capsule radius and half-length: about 1 mm long
FLOOR_HALF_LENGTH = 2000.0  # metres each way for the tilted variants (stock: 100-250)

# task name -> (domain, base task, variant). Walker targets use the walk task.
TASKS = {
    "walker_walk": ("walker", "walk", None),
    "walker_run": ("walker", "run", None),
    "cheetah_run": ("cheetah", "run", None),
    "walker_downhill": ("walker", "walk", "downhill"),
    "walker_uphill": ("walker", "walk", "uphill"),
    "walker_nofoot": ("walker", "walk", "nofoot"),
    "cheetah_downhill": ("cheetah", "run", "downhill"),
    "cheetah_uphill": ("cheetah", "run", "uphill"),
    "cheetah_nopaw": ("cheetah", "run", "nopaw"),
}
DESCRIPTIONS = {
    None: "stock task",
    "downhill": "gravity tilted 15 deg forward (runs downhill), camera rolled to match",
    "uphill": "gravity tilted 15 deg backward (runs uphill), camera rolled to match",
    "nofoot": "right foot geom shrunk to ~1 mm (joint and motor kept)",
    "nopaw": "front paw geom shrunk to ~1 mm (joint and motor kept)",
}
FLOOR_GEOM = {"walker": "floor", "cheetah": "ground"}
SHRUNK_GEOM = {"nofoot": "right_foot", "nopaw": "ffoot"}


def tilted_gravity(variant: str) -> np.ndarray:
    """Gravity of the downhill (+x component) or uphill (-x component) variant."""
    sign = 1.0 if variant == "downhill" else -1.0
    angle = math.radians(TILT_DEGREES)
    return np.array([sign * GRAVITY * math.sin(angle), 0.0, -GRAVITY * math.cos(angle)])


def variant_xml(xml: str, domain: str, variant: str | None) -> str:
    """The stock model XML of ``domain`` edited for ``variant`` (None: unchanged)."""
    if variant is None:
        return xml
    import mujoco

    root = ET.fromstring(xml)
    if variant in SHRUNK_GEOM:
        geom = root.find(f".//geom[@name='{SHRUNK_GEOM[variant]}']")
        geom.set("size", TINY_SIZE)
    else:
        gravity = tilted_gravity(variant)
        option = root.find("option")
        option.set("gravity", " ".join(f"{g:.6f}" for g in gravity))
        floor = root.find(f".//geom[@name='{FLOOR_GEOM[domain]}']")
        half_width, thickness = floor.get("size").split()[1:]
        floor.set("pos", "0 0 0")
        floor.set("size", f"{FLOOR_HALF_LENGTH} {half_width} {thickness}")
        camera = root.find(".//camera")  # camera 0: the side-view tracking camera
        camera.set("quat", " ".join(f"{q:.8f}" for q in _rolled_camera_quat(camera, gravity, mujoco)))
        camera.attrib.pop("euler", None)
    return ET.tostring(root, encoding="unicode")


def _rolled_camera_quat(camera: ET.Element, gravity: np.ndarray, mujoco) -> np.ndarray:
    """The camera's orientation rolled by TILT_DEGREES about its viewing axis (its local z).

    The sign is chosen so that gravity moves towards the image's vertical axis: the camera's
    x axis (image right) turns away from the gravity direction.
    """
    quat = np.zeros(4)
    if camera.get("euler") is not None:  # MJCF default: degrees, intrinsic xyz
        euler = np.radians([float(v) for v in camera.get("euler").split()])
        mujoco.mju_euler2Quat(quat, euler, "xyz")
    else:
        quat[:] = [float(v) for v in camera.get("quat").split()]
        quat /= np.linalg.norm(quat)
    axes = np.zeros(9)
    mujoco.mju_quat2Mat(axes, quat)
    x_axis, y_axis = axes.reshape(3, 3).T[0], axes.reshape(3, 3).T[1]
    # Rolling by +theta turns x towards y: x' = cos(theta) x + sin(theta) y. Choose the sign
    # that reduces |g . x'|, the horizontal image component of gravity.
    sign = -np.sign(gravity @ x_axis) * np.sign(gravity @ y_axis)
    roll = np.zeros(4)
    mujoco.mju_axisAngle2Quat(roll, np.array([0.0, 0.0, 1.0]), sign * math.radians(TILT_DEGREES))
    rolled = np.zeros(4)
    mujoco.mju_mulQuat(rolled, quat, roll)
    return rolled


def build_dm_env(domain: str, task: str, variant: str | None, seed: int | None):
    """The dm_control ``control.Environment`` of a task or variant, without a time limit."""
    setup_gl()
    try:
        from dm_control.rl import control
        from dm_control.suite import cheetah, walker
    except ImportError as exc:
        raise MissingDependency("dm_control", "dmc", what="the DeepMind Control benchmarks") from exc
    module = {"walker": walker, "cheetah": cheetah}[domain]
    xml, assets = module.get_model_and_assets()
    physics = module.Physics.from_xml_string(variant_xml(xml, domain, variant), assets)
    random = np.random.RandomState(seed)
    if domain == "walker":
        speed = walker._WALK_SPEED if task == "walk" else walker._RUN_SPEED
        task_obj = walker.PlanarWalker(move_speed=speed, random=random)
        control_timestep = walker._CONTROL_TIMESTEP
    else:
        task_obj = cheetah.Cheetah(random=random)
        control_timestep = None  # cheetah: one physics step per control step
    return control.Environment(
        physics, task_obj, time_limit=float("inf"), control_timestep=control_timestep
    )


class DMCEnv(MujocoEnv):
    """One dm_control task as a raw gymnasium env (one step = one control step)."""

    def __init__(
        self,
        name: str,
        image_size: int = 64,
        seed: int | None = None,
        camera: int = 0,
        fast_render: bool = False,
        action_noise: float = 0.0,
        background: str | None = None,
        obs: str = "image",
    ):
        check_task("DMC", name, TASKS)
        super().__init__(image_size, seed, obs, action_noise)
        domain, task, self.variant = TASKS[name]
        self.name, self.camera = name, camera
        self._env = build_dm_env(domain, task, self.variant, seed)
        self.physics = self._env.physics
        if fast_render:
            apply_fast_render(self.physics.model.ptr)
        self.background = make_background(background, image_size) if background else None
        self._background_geoms = {self.physics.model.name2id(FLOOR_GEOM[domain], "geom")}

        action_spec = self._env.action_spec()
        self._action_low, self._action_high = action_spec.minimum, action_spec.maximum
        state_dim = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        self.set_spaces(action_spec.shape[0], state_dim)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task._random = np.random.RandomState(seed)
        if self.background is not None:
            self.background.reset(self.rng)
        time_step = self._env.reset()
        return self.observe(flat_state(time_step)), {}

    def step(self, action, render: bool = True):
        action = self.noisy_action(action)
        # Map [-1, 1] onto the task's own bounds (both stock tasks already use [-1, 1]).
        action = self._action_low + (action + 1.0) / 2.0 * (self._action_high - self._action_low)
        time_step = self._env.step(action)
        if self.background is not None:
            self.background.advance()
        reward = float(time_step.reward or 0.0)
        return self.observe(flat_state(time_step), render), reward, False, False, {}

    def make_gl_context_current(self) -> None:
        make_dm_control_context_current(self.physics)

    def render_frame(self) -> np.ndarray:
        size = self.image_size
        # dm_control returns the frame as a row-flipped view (negative stride), which torch cannot take
        image = np.ascontiguousarray(self.physics.render(size, size, camera_id=self.camera))
        if self.background is None:
            return image
        # Segmentation channels: (object id, object type); id -1 is the sky / empty space.
        seg = self.physics.render(size, size, camera_id=self.camera, segmentation=True)
        geom_type = 5  # mujoco.mjtObj.mjOBJ_GEOM
        behind = (seg[..., 0] == -1) | (
            (seg[..., 1] == geom_type) & np.isin(seg[..., 0], list(self._background_geoms))
        )
        image = image.copy()
        image[behind] = self.background.frame()[behind]
        return image

    def free(self):
        self._env.close()
        self.physics.free()  # its rendering contexts: dm_env's close leaves them to an exit hook


def flat_state(time_step) -> np.ndarray:
    """The task's observation dict flattened into one float32 vector."""
    return np.concatenate([np.asarray(v, np.float32).ravel() for v in time_step.observation.values()])


class ProceduralBackground:
    """Moving coloured interference waves, a stand-in for natural video behind the agent."""

    def __init__(self, size: int):
        self.size = size
        ys, xs = np.mgrid[0:size, 0:size] / size
        self._coords = np.stack([xs, ys], -1)  # (S, S, 2) in [0, 1)
        self.t = 0

    def reset(self, rng: np.random.Generator) -> None:
        self.t = 0
        self._directions = rng.normal(size=(3, 2, 2)) * 6.0  # per channel, two waves, (x, y)
        self._speeds = rng.uniform(0.05, 0.3, size=(3, 2))
        self._phases = rng.uniform(0, 2 * np.pi, size=(3, 2))

    def advance(self) -> None:
        self.t += 1

    def frame(self) -> np.ndarray:
        angles = np.einsum("hwd,ckd->hwck", self._coords, self._directions)
        waves = np.sin(angles + self._speeds * self.t + self._phases).mean(-1)  # (S, S, 3)
        return ((waves + 1.0) * 127.5).astype(np.uint8)


class VideoBackground:
    """Frames from a directory: image files form one clip, each video file is a clip.

    At reset a clip and a start frame are drawn; every step advances one frame (looping).
    """

    IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
    VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
    MAX_FRAMES = 1000  # frames read per clip

    def __init__(self, directory: str, size: int):
        if not os.path.isdir(directory):
            raise UserError(f"background video directory '{directory}' does not exist")
        names = sorted(os.listdir(directory))
        self.images = [os.path.join(directory, n) for n in names if n.lower().endswith(self.IMAGE_SUFFIXES)]
        self.videos = [os.path.join(directory, n) for n in names if n.lower().endswith(self.VIDEO_SUFFIXES)]
        if not self.images and not self.videos:
            raise UserError(
                f"background directory '{directory}' holds no frames ({', '.join(self.IMAGE_SUFFIXES)}) "
                f"or videos ({', '.join(self.VIDEO_SUFFIXES)})"
            )
        self.size = size
        self._clip: np.ndarray | None = None
        self.t = 0

    def reset(self, rng: np.random.Generator) -> None:
        clips = (["frames"] if self.images else []) + self.videos
        choice = clips[rng.integers(len(clips))]
        self._clip = self._load(choice)
        self.t = int(rng.integers(len(self._clip)))

    def advance(self) -> None:
        self.t += 1

    def frame(self) -> np.ndarray:
        return self._clip[self.t % len(self._clip)]

    def _load(self, choice: str) -> np.ndarray:
        import imageio.v2 as imageio

        if choice == "frames":
            frames = (imageio.imread(p) for p in self.images[: self.MAX_FRAMES])
        else:
            try:
                reader = imageio.get_reader(choice)
            except Exception as exc:  # missing ffmpeg plugin or unreadable file
                raise UserError(
                    f"cannot read background video '{choice}' ({exc}); install imageio-ffmpeg "
                    "(pip install imageio-ffmpeg) or convert the video to a folder of PNG frames"
                ) from exc
            frames = (f for i, f in zip(range(self.MAX_FRAMES), reader))
        return np.stack([self._resize(f) for f in frames])

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        from PIL import Image

        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, -1)
        image = Image.fromarray(frame[..., :3].astype(np.uint8))
        return np.asarray(image.resize((self.size, self.size), Image.BILINEAR))


def make_background(spec: str, size: int):
    """``"procedural"`` or ``"video:DIR"`` -> a background source."""
    if spec == "procedural":
        return ProceduralBackground(size)
    if spec.startswith("video:") and len(spec) > len("video:"):
        return VideoBackground(os.path.expanduser(spec[len("video:"):]), size)
    raise UserError(f"option background must be 'procedural' or 'video:DIR', got {spec!r}")


register_suite(
    "dmc", DMCEnv,
    {name: f"DeepMind Control {domain} {task}: {DESCRIPTIONS[variant]}"
     for name, (domain, task, variant) in TASKS.items()},
    task_option="name", action_dim=6, action_repeat=2, time_limit=500,
)
