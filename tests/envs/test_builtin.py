"""The built-in NumPy suite: rendering, dynamics, rewards, action variants, seeding, experts."""

import math

import numpy as np
import pytest

import coworld.envs as envs
from coworld.envs import builtin
from coworld.errors import UserError
from tests.envs.helpers import draws_with_and_without_skipping

IDS = [s.id for s in envs.list_specs("builtin")]
CAMERAS = [{}, {"flip": True}, {"rotate": 1}, {"rotate": 3, "flip": True}, {"zoom": 0.7}, {"zoom": 1.3}]


def raw(id="builtin:reach", **options):
    env = envs.make(id, **options).unwrapped
    env.reset(seed=0)
    return env


def centroid(image, color):
    rows, cols = np.nonzero((image == np.array(color, np.uint8)).all(-1))
    assert rows.size, f"no pixel of colour {color}"
    return rows.mean(), cols.mean()


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize("task", ["reach", "push", "wall"])
def test_agent_goal_and_puck_drawn_where_the_state_says(task, camera):
    for id in (f"builtin:{task}", f"builtin:{task}-src"):
        env = envs.make(id, **camera)
        obs, _ = env.reset(seed=3)
        u = env.unwrapped
        for _ in range(3):  # move a little so the velocity entries are non-zero too
            obs, *_ = env.step(env.action_space.sample())
        state = obs["state"]
        np.testing.assert_allclose(state[:4], u.pos + u.vel, atol=1e-6)
        objects = [("agent_color", state[0:2])]
        objects.append(("puck_color", state[4:6]) if task == "push" else ("goal_color", state[4:6]))
        for name, xy in objects:
            row, col = u.to_pixel(*xy)
            if not (5 <= row < 59 and 5 <= col < 59):
                continue  # off screen at zoom > 1, or clipped at the border
            found = centroid(obs["image"], u.colors[name])
            assert abs(found[0] - row) <= 1.0 and abs(found[1] - col) <= 1.0, (id, name, found, (row, col))


def test_camera_flip_and_rotation_transform_the_image():
    base = raw()
    image = base._observation()["image"]
    for options, expected in [({"flip": True}, np.fliplr(image)), ({"rotate": 1}, np.rot90(image, 1)),
                              ({"rotate": 2}, np.rot90(image, 2))]:
        np.testing.assert_array_equal(raw(**options)._observation()["image"], expected)


def test_textures_differ_and_are_fixed():
    images = {t: raw(texture=t)._background for t in builtin.TEXTURES}
    assert len({im.tobytes() for im in images.values()}) == len(builtin.TEXTURES)
    np.testing.assert_array_equal(raw(texture="noise")._background, images["noise"])


def run_force(env, action, steps, start=(-0.9, 0.0), hold=False):
    """Apply ``action`` for ``steps`` raw steps from rest; ``hold`` puts the agent back at
    ``start`` before every step (keeping its velocity), so it never reaches the arena's side."""
    env.pos, env.vel, env.goal = list(start), [0.0, 0.0], [0.9, 0.9]
    for _ in range(steps):
        if hold:
            env.pos = list(start)
        env.step(np.array(action, np.float32))
    return env


def test_one_step_velocity_matches_hand_computation():
    # v1 = DT * F / m / (1 + DT * c / m): m=1, c=5 -> 0.25 / 1.25 = 0.2; m=2 -> 0.125 / 1.125.
    assert run_force(raw(), [1, 0], 1).vel[0] == pytest.approx(0.2)
    assert run_force(raw(mass=2.0), [1, 0], 1).vel[0] == pytest.approx(0.125 / 1.125)
    assert run_force(raw(), [1, 0], 1).pos[0] == pytest.approx(-0.9 + 0.05 * 0.2)


def test_steady_speed_is_force_over_friction():
    assert run_force(raw(), [1, 0], 40).vel[0] == pytest.approx(1.0, rel=1e-3)  # 5 / 5
    assert run_force(raw(friction=10.0), [1, 0], 40).vel[0] == pytest.approx(0.5, rel=1e-3)
    heavy = run_force(raw(mass=3.0), [1, 0], 5)
    light = run_force(raw(), [1, 0], 5)
    assert heavy.pos[0] < light.pos[0]  # the heavier agent accelerates more slowly


def test_drift_pushes_an_idle_agent():
    env = run_force(raw(drift=(1.0, -0.5)), [0, 0], 40, start=(0.0, 0.0))
    assert env.vel == pytest.approx([0.2, -0.1], rel=1e-3)  # drift / friction


def test_boost_and_brake_dimensions():
    assert run_force(raw(boost=True), [1, 0, 1], 40, hold=True).vel[0] == pytest.approx(1.5, rel=1e-3)
    assert run_force(raw(boost=True), [1, 0, -1], 40).vel[0] == pytest.approx(0.5, rel=1e-3)
    assert run_force(raw(boost=True), [1, 0, 0], 40).vel[0] == pytest.approx(1.0, rel=1e-3)
    assert run_force(raw(brake=True), [1, 0, 1], 40).vel[0] == pytest.approx(0.2, rel=1e-3)  # 5 / 25
    assert run_force(raw(brake=True), [1, 0, -1], 40).vel[0] == pytest.approx(1.0, rel=1e-3)


def test_action_dimensions_match_specs():
    for id in IDS:
        assert envs.make(id).action_space.shape == (envs.spec(id).action_dim,)
    assert envs.make("builtin:reach", boost=True, brake=True).action_space.shape == (4,)
    assert envs.make("builtin:push-src", boost=False).action_space.shape == (2,)


def test_dense_sparse_and_scaled_rewards():
    radius = raw().goal_radius
    assert radius == 0.18
    for distance in (0.05, 0.3, 1.0):
        expected = math.exp(-max(0.0, distance - radius) / 0.5)
        inside = float(distance <= radius)
        for mode, scale, value in [("dense", 1.0, expected), ("dense", 10.0, 10 * expected),
                                   ("sparse", 1.0, inside), ("sparse", 10.0, 10 * inside)]:
            env = raw(reward=mode, reward_scale=scale)
            env.pos, env.vel, env.goal = [0.0, 0.0], [0.0, 0.0], [distance, 0.0]
            _, reward, _, _, info = env.step(np.zeros(2, np.float32))
            assert reward == pytest.approx(value)
            assert info["success"] == (distance <= radius)


def test_push_moves_the_puck_and_rewards_placement():
    env = raw("builtin:push")
    env.pos, env.vel, env.puck, env.puck_vel, env.goal = [-0.5, 0.0], [0.0, 0.0], [-0.25, 0.0], [0.0, 0.0], [0.5, 0.5]
    for _ in range(20):
        _, reward, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert env.puck[0] > -0.1 and abs(env.puck[1]) < 1e-6
    gap = math.dist(env.pos, env.puck) - 0.08 - 0.12
    expected = 0.2 * math.exp(-max(0, gap - 0.02) / 0.5) + 0.8 * math.exp(-(math.dist(env.puck, env.goal) - 0.15) / 0.5)
    assert reward == pytest.approx(expected)


def test_wall_blocks_except_at_the_gap_and_reward_follows_the_path():
    env = raw("builtin:wall")
    env.gap_y = 0.0
    run_force(env, [1, 0], 40, start=(-0.5, 0.6))  # wall row: blocked
    assert env.pos[0] == pytest.approx(-0.13)
    run_force(env, [1, 0], 40, start=(-0.5, 0.0))  # gap row: passes
    assert env.pos[0] > 0.5
    env.pos, env.vel, env.goal = [-0.5, 0.6], [0.0, 0.0], [0.5, 0.0]
    _, reward, *_ = env.step(np.zeros(2, np.float32))
    path = math.hypot(0.5, 0.6) + 0.5  # to the gap, then to the goal
    assert reward == pytest.approx(math.exp(-(path - env.goal_radius) / 0.5))


def test_same_seed_same_episode():
    for id in ("builtin:push-src", "builtin:wall"):
        runs = []
        for _ in range(2):
            env = envs.make(id, seed=11)
            policy = envs.scripted_policy(env, 0.5, seed=2)
            obs, _ = env.reset()
            images, rewards = [obs["image"]], []
            for _ in range(15):
                obs, reward, *_ = env.step(policy(obs))
                images.append(obs["image"])
                rewards.append(reward)
            runs.append((np.stack(images), rewards))
        np.testing.assert_array_equal(runs[0][0], runs[1][0])
        assert runs[0][1] == runs[1][1]
        other = envs.make(id, seed=12)
        assert not np.array_equal(other.reset()[0]["image"], runs[0][0][0])


def test_images_are_fresh_arrays():
    env = envs.make("builtin:reach")
    first, _ = env.reset(seed=0)
    second, *_ = env.step(np.ones(2, np.float32))
    assert not np.shares_memory(first["image"], second["image"])
    assert not np.array_equal(first["image"], second["image"])


def test_bad_option_values_are_user_errors():
    for options in ({"texture": "plaid"}, {"rotate": 5}, {"reward": "shaped"}, {"mass": 0},
                    {"agent_color": (1, 2)}, {"zoom": 5.0}, {"drift": (9.0, 0.0)}):
        with pytest.raises(UserError):
            envs.make("builtin:reach", **options)


def returns(id, competence, episodes):
    env = envs.make(id)
    total = []
    for episode in range(episodes):
        policy = envs.scripted_policy(env, competence, seed=episode)
        obs, _ = env.reset(seed=500 + episode)
        done, ret = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            ret, done = ret + reward, terminated or truncated
        total.append(ret)
    return float(np.mean(total))


@pytest.mark.parametrize("task", ["reach", "push", "wall"])
def test_competence_knob_is_monotone(task):
    low, mid, high = (returns(f"builtin:{task}", c, episodes=5) for c in (0.0, 0.4, 1.0))
    assert low < mid < high


@pytest.mark.slow
@pytest.mark.parametrize("id", IDS)
def test_expert_score_matches_spec(id):
    assert returns(id, 1.0, episodes=20) == pytest.approx(envs.spec(id).expert_score, rel=0.1)


@pytest.mark.parametrize("id", ["builtin:reach", "builtin:push-src"])
def test_drawing_only_kept_frames_changes_nothing(id):
    (every, every_draws), (kept, kept_draws) = draws_with_and_without_skipping(id, "_draw", steps=20)
    for key in ("image", "state", "reward"):
        np.testing.assert_array_equal(every[key], kept[key])
    assert (every_draws, kept_draws) == (1 + 2 * 20, 1 + 20)  # reset + action repeat 2


def test_step_without_drawing_then_render():
    env, other = raw(), raw()
    obs = env.step(np.array([0.5, -0.5]), render=False)[0]
    assert obs["image"] is None
    np.testing.assert_array_equal(env.render(), other.step(np.array([0.5, -0.5]))[0]["image"])
