"""RoboDesk tasks (vendored model, re-implemented env). Skipped when dm_control is not installed.
RoboDesk steps slowly (IK + rendering), so these tests take few steps."""

import numpy as np
import pytest

import coworld.envs as envs

pytestmark = pytest.mark.robodesk

TASKS = ["push_green", "open_slide", "open_drawer", "upright_block_off_table"]


def test_ids_registered():
    assert {s.id for s in envs.list_specs("robodesk")} == {f"robodesk:{t}" for t in TASKS}
    s = envs.spec("robodesk:open_drawer")
    assert (s.action_dim, s.time_limit, s.action_repeat, s.has_success, s.extra) == (5, 500, 1, True, "robodesk")


def test_steps_render_and_reward(rd):
    env = envs.make("robodesk:push_green", seed=0, fast_render=True)
    obs, info = env.reset()
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == env.observation_space["state"].shape and info["success"] is False
    first = obs["image"]
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0, 1.0, 1.0, -1.0]))
        assert 0.0 <= reward <= 1.0 and info["success"] is False and not terminated
    assert np.abs(obs["image"].astype(int) - first).sum() > 0  # the arm moved
    env.close()


def test_reward_formula_push_green(rd):
    env = rd.RoboDeskEnv("push_green", seed=1, obs="state")
    env.reset()
    d = env.physics.named.data
    distance = np.linalg.norm(d.site_xpos["end_effector"] - d.xpos["green_button"])
    reward, success = env._reward()
    assert not success  # button not pressed at reset
    assert reward == pytest.approx(0.75 * (1.0 - distance))


def test_reset_is_seeded(rd):
    env = rd.RoboDeskEnv("open_slide", seed=0, obs="state")
    a = env.reset(seed=4)[0]["state"]
    b = env.reset(seed=5)[0]["state"]
    np.testing.assert_array_equal(a, env.reset(seed=4)[0]["state"])
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("legacy", [False, True])
def test_reset_positions_copied_unless_legacy(rd, legacy):
    env = rd.RoboDeskEnv("upright_block_off_table", seed=0, obs="state", legacy_rewards=legacy)
    env.reset()
    assert env._still("ball")
    adr = env.physics.model.jnt_qposadr[env.physics.model.name2id("ball", "joint")]
    env.physics.data.qpos[adr] += 0.2  # move the ball 20 cm along x
    env.physics.forward()
    # robodesk 1.0.0 compared the ball with a live view of its own position: it never "moved".
    assert env._still("ball") is legacy
