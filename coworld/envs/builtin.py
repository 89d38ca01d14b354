"""The built-in visual suite: a point mass in a 2-D arena, rendered top-down with NumPy.

No simulator and no download: this is the library's embedded default for tests, demos and quick
experiments. Three related tasks share one world, so any of them can serve as a CoWorld source for
another:

- ``reach``: move the agent (a disc) onto a goal disc.
- ``push``:  push a puck onto a goal disc.
- ``wall``:  reach a goal on the other side of a wall, through a gap.

Every discrepancy CoWorld is meant to bridge is a constructor option (and so an option of
``coworld.envs.make``): appearance (colours, background texture, camera flip / rotation / zoom),
dynamics (mass, friction, a constant drift force), action space (optional boost and brake
dimensions), reward (dense or sparse, scaled). See docs/builtin_suite.md.

World: the square [-1, 1]^2, y up. One raw step integrates DT seconds:

    v <- (v + DT * (gain * a_xy + drift) / mass) / (1 + DT * (friction + brake) / mass)
    p <- p + DT * v

(semi-implicit damping, stable for any friction). ``gain`` is FORCE, scaled by 1 + 0.5 * a_boost
when the boost dimension exists; ``brake`` adds BRAKE * max(0, a_brake) friction when that
dimension exists. Extra dimensions come after the two force dimensions, so zero-padding a 2-D
action gives the nominal behaviour.

Dense reward per raw step, in [0, 1]: ``shaped(d) = exp(-max(0, d - radius) / MARGIN)`` of the
task's distance ``d``; sparse reward: 1 inside the goal radius, else 0. Both times
``reward_scale``. Episodes never terminate; the registry's time limit truncates them.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
from gymnasium import spaces

from coworld.envs.registry import EnvSpec, register
from coworld.errors import UserError

DT = 0.05  # seconds per raw step
FORCE = 5.0  # force per unit of action
BRAKE = 20.0  # extra friction at full brake
MARGIN = 0.5  # length scale of the dense reward's decay
AGENT_RADIUS = 0.08  # physical radius (collisions)
AGENT_DRAW_RADIUS = 0.13  # drawn radius: a larger marker is easier to learn from pixels
TEXTURES = ("none", "checker", "stripes", "noise")

Color = tuple[int, int, int]


def shaped(distance: float, radius: float) -> float:
    """Dense reward: 1 within ``radius``, decaying exponentially outside (MARGIN length scale)."""
    return math.exp(-max(0.0, distance - radius) / MARGIN)


class PointMassEnv(gymnasium.Env):
    """Shared world, physics, rendering and options; subclasses define the task.

    Task hooks: ``_reset_task()``, ``_move_objects()`` (after the agent moved),
    ``_measure() -> (distance, success)``, ``_dense_reward(distance)``, ``_task_state() -> list``,
    ``_draw_static(img)``, ``_draw_objects(img)``, ``expert_action(obs)``. The defaults are reach's.
    """

    metadata = {"render_modes": ["rgb_array"]}
    goal_radius = 0.18
    puck_radius = 0.12
    state_dim = 6

    def __init__(
        self,
        image_size: int = 64,
        seed: int | None = None,
        *,
        # appearance
        agent_color: Color = (235, 70, 60),
        goal_color: Color = (70, 200, 90),
        puck_color: Color = (70, 130, 235),  # push only
        wall_color: Color = (200, 200, 200),  # wall only
        background_color: Color = (30, 30, 40),
        texture: str = "none",  # "none" | "checker" | "stripes" | "noise"
        flip: bool = False,  # mirror the camera left-right
        rotate: int = 0,  # camera quarter-turns, counter-clockwise (0..3)
        zoom: float = 1.0,  # 1: the arena fills the image; < 1 shows a border, > 1 crops
        # dynamics
        mass: float = 1.0,
        friction: float = 5.0,
        drift: tuple[float, float] = (0.0, 0.0),  # constant force on the agent
        # action space: A = 2 + boost + brake
        boost: bool = False,
        brake: bool = False,
        # reward
        reward: str = "dense",  # "dense" | "sparse"
        reward_scale: float = 1.0,
        # observation: "image" draws a frame per step; "state" draws none (image stays the all-zero
        # frame, as for the MuJoCo suites) and an agent reads obs["state"] (state-input source, Table 4)
        obs: str = "image",
        render_mode: str | None = "rgb_array",
    ):
        self.colors = {
            name: _color(name, value)
            for name, value in dict(
                agent_color=agent_color, goal_color=goal_color, puck_color=puck_color,
                wall_color=wall_color, background_color=background_color,
            ).items()
        }
        if texture not in TEXTURES:
            raise UserError(f"texture must be one of {', '.join(TEXTURES)}; got {texture!r}")
        if rotate not in (0, 1, 2, 3):
            raise UserError(f"rotate must be 0, 1, 2 or 3 quarter-turns; got {rotate!r}")
        if not 0.5 <= zoom <= 2.0:
            raise UserError(f"zoom must be in [0.5, 2]; got {zoom}")
        if mass <= 0 or friction < 0:
            raise UserError(f"mass must be > 0 and friction >= 0; got mass={mass}, friction={friction}")
        if len(drift) != 2 or max(abs(d) for d in drift) > FORCE / 2:
            raise UserError(f"drift must be two numbers of magnitude <= {FORCE / 2}; got {drift}")
        if obs not in ("image", "state"):
            raise UserError(f"obs must be 'image' or 'state'; got {obs!r}")
        if reward not in ("dense", "sparse"):
            raise UserError(f"reward must be 'dense' or 'sparse'; got {reward!r}")
        self.size = image_size
        self.texture, self.flip, self.rotate, self.zoom = texture, bool(flip), rotate, float(zoom)
        self.mass, self.friction = float(mass), float(friction)
        self.drift = (float(drift[0]), float(drift[1]))
        self.boost, self.brake = bool(boost), bool(brake)
        self.reward_mode, self.reward_scale = reward, float(reward_scale)
        self.render_mode = render_mode
        self.obs_mode = obs
        self._seed = seed

        action_dim = 2 + self.boost + self.brake
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.observation_space = spaces.Dict(
            image=spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            state=spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
        )

        # Camera: world (x, y) -> view (x', y') = R @ (x, y) (flip, then rotate), and
        # view -> continuous pixel coordinates (row, col) with the arena spanning zoom * S.
        c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][rotate]
        f = -1.0 if self.flip else 1.0
        self._cam = ((c * f, -s), (s * f, c))  # rotation times diag(f, 1)
        self._half = image_size / 2
        # World coordinates of every pixel centre (inverse camera: R^T), for static drawing.
        view = (np.arange(image_size) + 0.5) / self._half - 1.0
        vx, vy = np.meshgrid(view / self.zoom, -view / self.zoom)  # [row, col]
        (a, b), (d, e) = self._cam
        self._wx = (a * vx + d * vy).astype(np.float32)
        self._wy = (b * vx + e * vy).astype(np.float32)
        self._background = self._render_background()
        self._agent_mask = _disc_mask(AGENT_DRAW_RADIUS * self._half * self.zoom)
        self._puck_mask = _disc_mask(self.puck_radius * self._half * self.zoom)
        self._static = self._background
        self._image = self._background
        self.pos = [0.0, 0.0]
        self.vel = [0.0, 0.0]
        self.goal = [0.0, 0.0]

    # --- gymnasium API ------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed, self._seed = self._seed, None
        super().reset(seed=seed)
        self.vel = [0.0, 0.0]
        self._reset_task()
        self._static = self._background.copy()
        self._draw_static(self._static)
        _, success = self._measure()
        return self._observation(), {"success": success}

    def step(self, action, render: bool = True):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0).tolist()
        gain = FORCE * (1.0 + 0.5 * a[2]) if self.boost else FORCE
        damping = self.friction + (BRAKE * max(0.0, a[-1]) if self.brake else 0.0)
        scale = 1.0 / (1.0 + DT * damping / self.mass)
        for i in (0, 1):
            self.vel[i] = (self.vel[i] + DT * (gain * a[i] + self.drift[i]) / self.mass) * scale
        old = list(self.pos)
        self.pos = [self.pos[0] + DT * self.vel[0], self.pos[1] + DT * self.vel[1]]
        self._collide(old)
        self._move_objects()
        distance, success = self._measure()
        value = self._dense_reward(distance) if self.reward_mode == "dense" else float(success)
        obs = self._observation(render)
        return obs, self.reward_scale * value, False, False, {"success": success}

    def render(self):
        if self._image is None:  # the last step did not draw (render=False)
            self._image = self._draw()
        return self._image.copy()

    # --- shared pieces ------------------------------------------------------------------------

    def _collide(self, old: list[float]) -> None:
        """Keep the agent inside the arena, stopping the velocity into a wall."""
        limit = 1.0 - AGENT_RADIUS
        for i in (0, 1):
            if abs(self.pos[i]) > limit:
                self.pos[i] = math.copysign(limit, self.pos[i])
                self.vel[i] = 0.0

    def _observation(self, render: bool = True) -> dict:
        """State and, when ``render``, the image (else ``image=None``: see wrappers.py); with
        ``obs="state"`` the image is always the all-zero frame."""
        if self.obs_mode == "state":
            self._image = np.zeros((self.size, self.size, 3), np.uint8)
        else:
            self._image = self._draw() if render else None
        state = np.array(self.pos + self.vel + self._task_state(), dtype=np.float32)
        return {"image": self._image, "state": state}

    def _draw(self) -> np.ndarray:
        image = self._static.copy()
        self._draw_objects(image)
        self._blit(image, self._agent_mask, self.colors["agent_color"], self.pos)
        return image

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the pixel containing world point (x, y); may lie outside the image."""
        (a, b), (d, e) = self._cam
        vx, vy = a * x + b * y, d * x + e * y
        col = self._half * (1.0 + self.zoom * vx)
        row = self._half * (1.0 - self.zoom * vy)
        return math.floor(row), math.floor(col)

    def _blit(self, image: np.ndarray, mask: np.ndarray, color: np.ndarray, xy) -> None:
        """Paint ``mask`` centred on world point ``xy``, clipped to the image."""
        row, col = self.to_pixel(xy[0], xy[1])
        k, n = mask.shape[0] // 2, self.size
        r0, c0 = row - k, col - k
        r1, c1 = r0 + mask.shape[0], c0 + mask.shape[1]
        if r1 <= 0 or c1 <= 0 or r0 >= n or c0 >= n:
            return
        sub = mask[max(0, -r0) : mask.shape[0] - max(0, r1 - n), max(0, -c0) : mask.shape[1] - max(0, c1 - n)]
        image[max(0, r0) : min(n, r1), max(0, c0) : min(n, c1)][sub] = color

    def _disc(self, xy, radius: float) -> np.ndarray:
        """Pixels whose centre lies within ``radius`` of world point ``xy``."""
        return (self._wx - xy[0]) ** 2 + (self._wy - xy[1]) ** 2 <= radius**2

    def _render_background(self) -> np.ndarray:
        bg = self.colors["background_color"].astype(np.float32)
        shade = np.ones((self.size, self.size), np.float32)
        if self.texture == "checker":  # squares of 0.25 world units
            parity = (np.floor(self._wx * 4) + np.floor(self._wy * 4)) % 2
            shade = 1.0 - 0.25 * parity
        elif self.texture == "stripes":  # diagonal stripes
            shade = 0.8 + 0.2 * np.sin((self._wx + self._wy) * 4 * np.pi)
        elif self.texture == "noise":  # fixed per-pixel grain, the same every episode
            shade = np.random.default_rng(0).uniform(0.75, 1.0, shade.shape).astype(np.float32)
        image = shade[..., None] * bg
        outside = (np.abs(self._wx) > 1.0) | (np.abs(self._wy) > 1.0)
        image[outside] = 0.5 * bg
        return np.clip(image, 0, 255).astype(np.uint8)

    def _uniform(self, low: float, high: float) -> list[float]:
        return self.np_random.uniform(low, high, 2).tolist()

    def _steer(self, target, gain: float = 4.0) -> list[float]:
        """PD action towards world point ``target`` that also cancels the drift."""
        damp = 0.6 * math.sqrt(self.mass)
        force = [
            gain * (target[i] - self.pos[i]) - damp * self.vel[i] * self.mass - self.drift[i] / FORCE
            for i in (0, 1)
        ]
        norm = max(1.0, math.hypot(*force))
        action = [force[0] / norm, force[1] / norm]
        if self.boost:
            action.append(0.0)
        if self.brake:
            action.append(-1.0)
        return action

    # --- task hooks (defaults: reach) -------------------------------------------------------------------

    def _reset_task(self) -> None:
        raise NotImplementedError

    def _move_objects(self) -> None:
        pass

    def _measure(self) -> tuple[float, bool]:
        distance = math.dist(self.pos, self.goal)
        return distance, distance <= self.goal_radius

    def _dense_reward(self, distance: float) -> float:
        return shaped(distance, self.goal_radius)

    def _task_state(self) -> list[float]:
        return list(self.goal)

    def _draw_static(self, image: np.ndarray) -> None:
        image[self._disc(self.goal, self.goal_radius)] = self.colors["goal_color"]

    def _draw_objects(self, image: np.ndarray) -> None:
        pass


class ReachEnv(PointMassEnv):
    """Move the agent onto the goal. State: agent x, y, vx, vy, goal x, y."""

    def _reset_task(self) -> None:
        self.pos = self._uniform(-0.8, 0.8)
        self.goal = self._uniform(-0.8, 0.8)
        while math.dist(self.pos, self.goal) < 0.5:
            self.goal = self._uniform(-0.8, 0.8)

    def expert_action(self, obs: dict) -> np.ndarray:
        return np.array(self._steer(self.goal), np.float32)


class PushEnv(PointMassEnv):
    """Push the puck onto the goal. State: agent x, y, vx, vy, puck x, y, vx, vy, goal x, y.

    Dense reward: 0.2 * shaped(agent-puck gap) + 0.8 * shaped(puck-goal distance).
    """

    goal_radius = 0.15
    puck_friction = 8.0
    state_dim = 10

    def _reset_task(self) -> None:
        self.goal = self._uniform(-0.7, 0.7)
        self.puck = self._uniform(-0.6, 0.6)
        while math.dist(self.puck, self.goal) < 0.5:
            self.puck = self._uniform(-0.6, 0.6)
        self.pos = self._uniform(-0.8, 0.8)
        while math.dist(self.pos, self.puck) < 0.4:
            self.pos = self._uniform(-0.8, 0.8)
        self.puck_vel = [0.0, 0.0]

    def _move_objects(self) -> None:
        scale = 1.0 / (1.0 + DT * self.puck_friction)
        self.puck_vel = [v * scale for v in self.puck_vel]
        self.puck = [self.puck[i] + DT * self.puck_vel[i] for i in (0, 1)]
        # The agent pushes the puck out along the contact normal and lends it its normal speed.
        reach = AGENT_RADIUS + self.puck_radius
        dx, dy = self.puck[0] - self.pos[0], self.puck[1] - self.pos[1]
        dist = math.hypot(dx, dy)
        if dist < reach:
            nx, ny = (dx / dist, dy / dist) if dist > 1e-9 else (1.0, 0.0)
            self.puck = [self.pos[0] + nx * reach, self.pos[1] + ny * reach]
            gap = (self.vel[0] - self.puck_vel[0]) * nx + (self.vel[1] - self.puck_vel[1]) * ny
            if gap > 0:
                self.puck_vel = [self.puck_vel[0] + gap * nx, self.puck_vel[1] + gap * ny]
        # The arena stops the puck; an agent pinning it against the side is pushed back.
        limit = 1.0 - self.puck_radius
        for i in (0, 1):
            if abs(self.puck[i]) > limit:
                self.puck[i] = math.copysign(limit, self.puck[i])
                self.puck_vel[i] = 0.0
        dx, dy = self.puck[0] - self.pos[0], self.puck[1] - self.pos[1]
        dist = math.hypot(dx, dy)
        if 1e-9 < dist < reach:
            self.pos = [self.puck[0] - dx / dist * reach, self.puck[1] - dy / dist * reach]

    def _measure(self) -> tuple[float, bool]:
        distance = math.dist(self.puck, self.goal)
        return distance, distance <= self.goal_radius

    def _dense_reward(self, distance: float) -> float:
        gap = math.dist(self.pos, self.puck) - AGENT_RADIUS - self.puck_radius
        return 0.2 * shaped(gap, 0.02) + 0.8 * shaped(distance, self.goal_radius)

    def _task_state(self) -> list[float]:
        return self.puck + self.puck_vel + self.goal

    def _draw_objects(self, image: np.ndarray) -> None:
        self._blit(image, self._puck_mask, self.colors["puck_color"], self.puck)

    def expert_action(self, obs: dict) -> np.ndarray:
        reach = AGENT_RADIUS + self.puck_radius
        ux, uy = self.goal[0] - self.puck[0], self.goal[1] - self.puck[1]
        norm = math.hypot(ux, uy) or 1.0
        ux, uy = ux / norm, uy / norm
        rel = (self.pos[0] - self.puck[0], self.pos[1] - self.puck[1])
        along = rel[0] * ux + rel[1] * uy  # < 0: agent is behind the puck
        across = -rel[0] * uy + rel[1] * ux
        if along > -0.5 * reach and math.hypot(*rel) < reach + 0.12:
            # On the wrong side and close: walk around the puck.
            side = 1.0 if across >= 0 else -1.0
            target = (self.puck[0] - uy * side * (reach + 0.1) - 0.5 * reach * ux,
                      self.puck[1] + ux * side * (reach + 0.1) - 0.5 * reach * uy)
        elif along < -0.7 * reach and abs(across) < 0.04:
            target = (self.puck[0] + ux * 0.3, self.puck[1] + uy * 0.3)  # aligned: push through
        else:
            target = (self.puck[0] - ux * (reach + 0.03), self.puck[1] - uy * (reach + 0.03))
        return np.array(self._steer(target), np.float32)


class WallEnv(PointMassEnv):
    """Reach a goal behind a wall through a gap. State: agent x, y, vx, vy, goal x, y, gap y.

    The wall is the band |x| <= WALL with a gap of half-height GAP around ``gap_y``. The dense
    reward uses the path length: straight when the agent is on the goal's side, else via the gap.
    """

    wall, gap = 0.05, 0.18
    state_dim = 7

    def _reset_task(self) -> None:
        side = 1.0 if self.np_random.random() < 0.5 else -1.0
        self.gap_y = float(self.np_random.uniform(-0.5, 0.5))
        self.pos = [-side * self.np_random.uniform(0.35, 0.85), self.np_random.uniform(-0.8, 0.8)]
        self.goal = [side * self.np_random.uniform(0.35, 0.85), self.np_random.uniform(-0.8, 0.8)]

    def _collide(self, old: list[float]) -> None:
        super()._collide(old)
        band = self.wall + AGENT_RADIUS
        low, high = self.gap_y - self.gap + AGENT_RADIUS, self.gap_y + self.gap - AGENT_RADIUS
        if abs(self.pos[0]) < band and not low <= old[1] <= high:
            self.pos[0] = math.copysign(band, old[0])  # blocked by the wall
            self.vel[0] = 0.0
        if abs(self.pos[0]) < band and not low <= self.pos[1] <= high:
            self.pos[1] = min(max(self.pos[1], low), high)  # inside the gap: its sides stop us
            self.vel[1] = 0.0

    def _measure(self) -> tuple[float, bool]:
        if self.pos[0] * self.goal[0] > 0:
            distance = math.dist(self.pos, self.goal)
        else:
            door = (0.0, self.gap_y)
            distance = math.dist(self.pos, door) + math.dist(door, self.goal)
        return distance, math.dist(self.pos, self.goal) <= self.goal_radius

    def _task_state(self) -> list[float]:
        return self.goal + [self.gap_y]

    def _draw_static(self, image: np.ndarray) -> None:
        solid = (np.abs(self._wx) <= self.wall) & (np.abs(self._wy - self.gap_y) > self.gap)
        image[solid & (np.abs(self._wy) <= 1.0)] = self.colors["wall_color"]
        super()._draw_static(image)

    def expert_action(self, obs: dict) -> np.ndarray:
        x, y = self.pos
        if x * self.goal[0] > 0 and abs(x) >= self.wall + AGENT_RADIUS:
            target = self.goal
        elif abs(y - self.gap_y) > 0.06 and abs(x) >= self.wall + AGENT_RADIUS:
            target = (math.copysign(0.25, x), self.gap_y)  # line up with the gap
        else:
            target = (math.copysign(0.3, self.goal[0]), self.gap_y)  # go through
        return np.array(self._steer(target), np.float32)


def _color(name: str, value) -> np.ndarray:
    if len(value) != 3 or not all(0 <= int(v) <= 255 for v in value):
        raise UserError(f"{name} must be three integers in 0..255; got {value!r}")
    return np.array(value, dtype=np.uint8)


def _disc_mask(radius_px: float) -> np.ndarray:
    """Boolean (2k+1, 2k+1) disc of ``radius_px`` pixels around the centre pixel."""
    k = max(1, math.ceil(radius_px))
    offsets = np.arange(-k, k + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= max(radius_px, 1.0) ** 2


# --- registration -----------------------------------------------------------------------------

# The source side of every pair: different look (colours, textured background, mirrored camera),
# different dynamics (heavier, less friction, a constant drift) and one more action dimension.
SOURCE = dict(
    agent_color=(250, 200, 40),
    goal_color=(180, 60, 200),
    puck_color=(40, 200, 200),
    wall_color=(110, 80, 60),
    background_color=(200, 190, 160),
    texture="checker",
    flip=True,
    mass=2.0,
    friction=3.0,
    drift=(1.0, -0.6),
    boost=True,
)

TASKS = {
    # task: (class, description, expert return of the target, expert return of the source);
    # expert returns: mean over 100 episodes (seeds 1000..1099) at the default repeat and limit.
    "reach": (ReachEnv, "move the agent onto a goal disc", 189.1, 188.0),
    "push": (PushEnv, "push a puck onto a goal disc", 161.8, 139.5),
    "wall": (WallEnv, "reach a goal behind a wall through a gap", 171.2, 163.8),
}

for _task, (_cls, _description, _target_score, _source_score) in TASKS.items():
    register(EnvSpec(
        id=f"builtin:{_task}", suite="builtin", description=f"{_description} (target domain)",
        action_dim=2, entry_point=f"coworld.envs.builtin:{_cls.__name__}",
        action_repeat=2, time_limit=100, has_success=True, expert_score=_target_score,
    ))
    register(EnvSpec(
        id=f"builtin:{_task}-src", suite="builtin",
        description=f"{_description} (source domain: new look, heavier, drifting, boost action)",
        action_dim=3, entry_point=f"coworld.envs.builtin:{_cls.__name__}",
        action_repeat=2, time_limit=100, has_success=True, expert_score=_source_score,
        kwargs=SOURCE,
    ))
