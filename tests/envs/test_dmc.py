"""DeepMind Control tasks and the paper's variants. Skipped when dm_control is not installed."""

import math

import numpy as np
import pytest

import coworld.envs as envs
from coworld.errors import UserError
from tests.envs.helpers import draws_with_and_without_skipping

pytestmark = pytest.mark.dmc

VARIANTS = ["walker_downhill", "walker_uphill", "walker_nofoot", "cheetah_downhill", "cheetah_uphill", "cheetah_nopaw"]


def test_ids_registered_with_paper_settings():
    ids = {s.id for s in envs.list_specs("dmc")}
    assert ids == {f"dmc:{n}" for n in ["walker_walk", "walker_run", "cheetah_run", *VARIANTS]}
    s = envs.spec("dmc:cheetah_nopaw")
    assert (s.action_repeat, s.time_limit, s.action_dim, s.extra) == (2, 500, 6, "dmc")


@pytest.mark.parametrize("name,sign", [("walker_downhill", 1), ("walker_uphill", -1), ("cheetah_downhill", 1), ("cheetah_uphill", -1)])
def test_tilted_gravity_camera_roll_and_floor(dmc, name, sign):
    env = dmc.DMCEnv(name, seed=0)
    stock = dmc.DMCEnv(name.split("_")[0] + ("_walk" if name.startswith("walker") else "_run"), seed=0)
    g = env.physics.model.opt.gravity
    np.testing.assert_allclose(g, [sign * 2.539, 0.0, -9.476], atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(g), 9.81, atol=1e-6)
    assert math.isclose(math.degrees(math.atan2(abs(g[0]), -g[2])), 15.0, abs_tol=1e-4)

    # Camera 0 is rolled by 15 degrees about its viewing axis ...
    env.reset(seed=0)
    stock.reset(seed=0)
    cam = env.physics.data.cam_xmat[0].reshape(3, 3)
    cam0 = stock.physics.data.cam_xmat[0].reshape(3, 3)
    np.testing.assert_allclose(cam[:, 2], cam0[:, 2], atol=1e-6)  # same viewing axis
    assert math.isclose(math.degrees(math.acos(cam[:, 0] @ cam0[:, 0])), 15.0, abs_tol=1e-3)
    # ... in the direction that brings gravity towards the image's vertical.
    assert abs(g @ cam[:, 0]) < 0.3 * abs(g @ cam0[:, 0])

    floor = env.physics.model.geom_size[0]  # floor / ground is geom 0 in both models
    assert floor[0] == dmc.FLOOR_HALF_LENGTH > stock.physics.model.geom_size[0][0]


@pytest.mark.parametrize("name,geom,stock_name", [("walker_nofoot", "right_foot", "walker_walk"), ("cheetah_nopaw", "ffoot", "cheetah_run")])
def test_shrunk_geom_keeps_joint_and_motor(dmc, name, geom, stock_name):
    env, stock = dmc.DMCEnv(name, seed=0), dmc.DMCEnv(stock_name, seed=0)
    m, m0 = env.physics.model, stock.physics.model
    size = m.geom_size[m.name2id(geom, "geom")]
    assert size[0] <= 1e-3 and size[1] <= 1e-3  # radius and half-length: about 1 mm
    assert m0.geom_size[m0.name2id(geom, "geom")][0] > 0.04
    assert (m.nu, m.njnt) == (m0.nu, m0.njnt)
    assert [m.id2name(i, "actuator") for i in range(m.nu)] == [m0.id2name(i, "actuator") for i in range(m0.nu)]
    assert env.action_space.shape == stock.action_space.shape == (6,)
    np.testing.assert_allclose(m.opt.gravity, [0, 0, -9.81])


@pytest.mark.parametrize("name", ["walker_walk", "cheetah_run", *VARIANTS])
def test_step_gives_changing_frames(dmc, name):
    env = envs.make(f"dmc:{name}", seed=0, fast_render=True)
    obs, _ = env.reset()
    state_dim = 24 if name.startswith("walker") else 17
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (state_dim,) and obs["state"].dtype == np.float32
    frames = [obs["image"]]
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 6))
        assert np.isfinite(reward) and not terminated and not truncated
        frames.append(obs["image"])
    assert all(np.abs(a.astype(int) - b).sum() > 0 for a, b in zip(frames, frames[1:]))
    env.close()


def test_seed_makes_episodes_repeatable(dmc):
    def rollout(noise):
        env = dmc.DMCEnv("walker_walk", seed=3, action_noise=noise, obs="state")
        obs, _ = env.reset(seed=3)
        states = [obs["state"]]
        for _ in range(5):
            states.append(env.step(np.full(6, 0.5))[0]["state"])
        return np.stack(states)

    np.testing.assert_array_equal(rollout(0.0), rollout(0.0))
    np.testing.assert_array_equal(rollout(0.3), rollout(0.3))  # noise is seeded too
    assert np.abs(rollout(0.3) - rollout(0.0))[1:].max() > 1e-3  # and it changes the dynamics


def test_state_observation_skips_rendering(dmc):
    env = dmc.DMCEnv("cheetah_run", seed=0, obs="state")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and not obs["image"].any()
    np.testing.assert_allclose(obs["state"][:8], env.physics.data.qpos[1:], rtol=1e-6)


def test_fast_render_lowers_quality(dmc):
    env = dmc.DMCEnv("walker_walk", seed=0, fast_render=True)
    assert env.physics.model.vis.quality.shadowsize == 1024
    assert env.physics.model.vis.quality.offsamples == 0


def test_backgrounds_replace_sky_and_floor_only(dmc, tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    for i in range(3):
        imageio.imwrite(tmp_path / f"{i:02d}.png", np.full((20, 30, 3), 40 * i + 10, np.uint8))
    plain = dmc.DMCEnv("walker_walk", seed=0)
    procedural = dmc.DMCEnv("walker_walk", seed=0, background="procedural")
    video = dmc.DMCEnv("walker_walk", seed=0, background=f"video:{tmp_path}")
    a = plain.reset(seed=0)[0]["image"]
    b = procedural.reset(seed=0)[0]["image"]
    c = video.reset(seed=0)[0]["image"]
    changed = np.any(a != b, -1)
    assert 0.3 < changed.mean() < 0.99  # most of the frame is background, the walker is not
    assert np.any(b != procedural.step(np.zeros(6))[0]["image"])  # the background moves
    # Video frames are uniform grey levels: every replaced pixel has one of them.
    replaced = np.any(a != c, -1)
    assert replaced.mean() > 0.3
    assert set(np.unique(c[replaced])) <= {10, 50, 90}


def test_bad_options_are_user_errors(dmc, tmp_path):
    with pytest.raises(UserError, match="background"):
        dmc.DMCEnv("walker_walk", background="sepia")
    with pytest.raises(UserError, match="no frames"):
        dmc.DMCEnv("walker_walk", background=f"video:{tmp_path}")
    with pytest.raises(UserError, match="obs"):
        dmc.DMCEnv("walker_walk", obs="pixels")


@pytest.mark.parametrize("options", [{}, {"background": "procedural", "action_noise": 0.3}])
def test_drawing_only_kept_frames_changes_nothing(dmc, options):
    (every, every_draws), (kept, kept_draws) = draws_with_and_without_skipping(
        "dmc:cheetah_run", "render_frame", steps=4, **options
    )
    for key in ("image", "state", "reward"):
        np.testing.assert_array_equal(every[key], kept[key])
    assert (every_draws, kept_draws) == (1 + 2 * 4, 1 + 4)  # reset + action repeat 2


def test_render_draws_a_skipped_frame(dmc):
    a, b = dmc.DMCEnv("walker_walk", seed=1), dmc.DMCEnv("walker_walk", seed=1)
    a.reset(seed=1)
    b.reset(seed=1)
    obs = a.step(np.full(6, 0.7), render=False)[0]
    assert obs["image"] is None
    np.testing.assert_array_equal(a.render(), b.step(np.full(6, 0.7))[0]["image"])


def test_frames_are_contiguous_so_an_agent_can_act_on_them():
    """dm_control renders a row-flipped view (negative stride); torch.as_tensor refuses those, which
    made every image agent crash on its first action in a DMC env."""
    env = envs.make("dmc:walker_walk", image_size=64, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs["image"].flags["C_CONTIGUOUS"]
    obs = env.step(np.zeros(6, np.float32))[0]
    assert obs["image"].flags["C_CONTIGUOUS"]
    env.close()
