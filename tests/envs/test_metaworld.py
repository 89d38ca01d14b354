"""Meta-World v3 tasks. Skipped when metaworld is not installed."""

import numpy as np
import pytest

import coworld.envs as envs
from coworld.errors import UserError

pytestmark = pytest.mark.metaworld

TASKS = ["door-close", "button-press", "window-close", "handle-press", "drawer-close", "button-press-topdown"]


def wood_rows(image):
    """Row indices of the table's wood-coloured pixels (brown: r > g > b, clearly warm)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return np.nonzero((r > g) & (g > b) & (r - b > 40) & (g - b > 15))[0]


def test_ids_registered():
    assert {s.id for s in envs.list_specs("metaworld")} == {f"metaworld:{t}" for t in TASKS}
    s = envs.spec("metaworld:door-close")
    assert (s.action_dim, s.time_limit, s.action_repeat, s.has_success, s.extra) == (4, 500, 1, True, "metaworld")


@pytest.mark.parametrize("task", ["door-close", "button-press-topdown"])
def test_image_is_upright_and_changes(mw, task):
    env = envs.make(f"metaworld:{task}", seed=0, fast_render=True)
    obs, info = env.reset()
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (39,) and info["success"] is False
    rows = wood_rows(obs["image"])
    assert len(rows) > 200 and rows.mean() > 36  # the table fills the lower part of the frame
    before = obs["image"]
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 1.0, 0.0]))
    assert np.abs(obs["image"].astype(int) - before).sum() > 0
    assert 0 <= reward <= 10 and isinstance(info["success"], bool) and not terminated
    env.close()


def test_goal_randomised_per_episode_and_seeded(mw):
    def goals(seed):
        env = mw.MetaWorldEnv("door-close", seed=seed, obs="state")
        out = []
        for _ in range(3):
            env.reset()
            out.append(env.goal)
        return np.stack(out)

    a, b, c = goals(5), goals(5), goals(6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-3 and np.abs(a[1] - a[2]).max() > 1e-3
    assert np.abs(a - c).max() > 1e-3
    env = mw.MetaWorldEnv("door-close", seed=0, obs="state")
    first = env.reset(seed=11)[0]["state"]
    np.testing.assert_allclose(first[-3:], env.goal, atol=1e-6)  # the goal is part of the state
    np.testing.assert_array_equal(first, env.reset(seed=11)[0]["state"])


def test_scripted_success_and_sparse_reward(mw):
    from metaworld.policies import SawyerDoorCloseV3Policy

    policy = SawyerDoorCloseV3Policy()
    for reward_mode in ("dense", "sparse"):
        env = envs.make("metaworld:door-close", seed=1, obs="state", reward=reward_mode)
        obs, _ = env.reset()
        assert not obs["image"].any()  # obs="state" renders nothing
        rewards, successes = [], []
        for _ in range(150):
            obs, reward, _, _, info = env.step(np.clip(policy.get_action(obs["state"]), -1, 1))
            rewards.append(reward)
            successes.append(info["success"])
        assert any(successes)
        if reward_mode == "sparse":
            np.testing.assert_array_equal(rewards, np.array(successes, float))
        else:
            assert max(rewards) > 1.0 and min(rewards) >= 0.0


def test_action_noise_is_seeded_and_changes_motion(mw):
    def hand_path(noise, seed=2):
        env = mw.MetaWorldEnv("button-press", seed=seed, action_noise=noise, obs="state")
        env.reset(seed=seed)
        return np.stack([env.step(np.array([0.5, 0.5, 0.0, 0.0]))[0]["state"][:3] for _ in range(5)])

    np.testing.assert_array_equal(hand_path(0.5), hand_path(0.5))
    assert np.abs(hand_path(0.5) - hand_path(0.0)).max() > 1e-3


def test_bad_options(mw):
    with pytest.raises(UserError, match="reward"):
        mw.MetaWorldEnv("door-close", reward="shaped")
    with pytest.raises(UserError, match="unknown Meta-World task"):
        mw.MetaWorldEnv("door-open")
