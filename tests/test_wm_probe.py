"""scripts/wm_probe.py: its readout and its measure of where the decoder draws the agent, on hand values."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from coworld.data.episodes import list_episode_files, load_episode

spec = importlib.util.spec_from_file_location("wm_probe", Path(__file__).parents[1] / "scripts" / "wm_probe.py")
wm_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wm_probe)


def test_ridge_r2_exact_fit_and_unpenalised_intercept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = np.stack([2 * x[:, 0] - x[:, 2] + 5.0, np.full(200, 3.0) + 0 * x[:, 1]], 1)
    y[:, 1] += rng.normal(size=200)  # pure noise around 3: nothing to read
    r = wm_probe.ridge_r2(x[:100], y[:100], x[100:], y[100:], lam=0.0)
    assert abs(r[0] - 1.0) < 1e-9  # a linear target is read exactly, its offset of 5 included
    # noise around 3 under strong shrinkage: about zero (a penalised intercept would shrink 3 to 1.5: R^2 ~ -2)
    r = wm_probe.ridge_r2(x[:100], y[:100], x[100:], y[100:], lam=1.0)
    assert -0.1 < r[1] <= 0.02


def test_redness_and_centroid_on_a_hand_image():
    img = torch.full((3, 8, 8), -0.5 + 30 / 255)  # grey-blue background
    img[:, 2, 5] = torch.tensor([235, 70, 60]) / 255 - 0.5  # one red (agent) pixel at row 2, column 5
    img[:, 6, 1] = torch.tensor([70, 200, 90]) / 255 - 0.5  # one green (goal) pixel
    red = wm_probe.redness(img)
    assert red[2, 5] > 0.6 and red.sum() == red[2, 5]  # only the agent counts
    assert torch.allclose(wm_probe.centroid(red[None]), torch.tensor([[2.0, 5.0]]))


def test_peak_keeps_the_disc_and_drops_the_haze():
    mass = torch.full((1, 8, 8), 0.05)  # a faint haze over the frame: 3.0 in all, more than the disc (2.4)
    mass[0, 1:3, 5:7] = 0.6
    assert torch.allclose(wm_probe.centroid(wm_probe.peak(mass)), torch.tensor([[1.5, 5.5]]))
    assert wm_probe.centroid(mass)[0, 1] < 5.0  # the plain centroid is pulled towards the middle


def test_probe_runs_end_to_end(tmp_path):
    out = tmp_path / "probe.json"
    wm_probe.main(["--train-episodes", "3", "--probe-episodes", "3", "--updates", "2", "--eval-every", "2",
                   "--set", "train.batch=2", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["updates"] for r in rows] == [0, 2]
    assert {"agent_px_error", "agent_openloop_red_share", "latent/agent", "reward_corr"} <= rows[-1].keys()
    # "no motion" depends only on the data; the mean-latent open loop leaves the model's sampling as it was
    assert rows[0]["agent_openloop_still_px_error"] == rows[1]["agent_openloop_still_px_error"]
    assert "agent_openloop_mean_px_error" in rows[-1]


def test_redraw_restores_sampling_and_reads_the_still_baseline():
    from coworld.algos.dreamer import DreamerAgent
    from coworld.config import load_config

    torch.manual_seed(0)
    agent = DreamerAgent(load_config("tiny", ["model.depth=4", "model.deter=16", "model.stoch=4"]), action_dim=2)
    image = torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8)
    for t in range(8):  # a red 4x4 agent moving 2 pixels right per frame
        image[:, t, 30:34, 10 + 2 * t:14 + 2 * t, 0] = 255
    batch = {"image": image, "action": torch.zeros(2, 8, 2), "is_first": torch.zeros(2, 8, dtype=torch.bool),
             "reward": torch.zeros(2, 8)}
    batch["is_first"][:, 0] = True
    out = wm_probe.redraw(agent, batch, context=5)
    # frames 5, 6, 7 are 2, 4, 6 pixels right of frame 4: mean distance 4
    assert out["agent_openloop_still_px_error"] == pytest.approx(4.0, abs=0.01)
    assert "sample" not in vars(agent.wm.rssm)


def test_steer_sets_the_imagined_agent_against_the_simulators_displacement():
    from coworld.algos.dreamer import DreamerAgent
    from coworld.config import load_config

    torch.manual_seed(0)
    agent = DreamerAgent(load_config("tiny", ["model.depth=4", "model.deter=16", "model.stoch=4"]), action_dim=2)
    batch = {"image": torch.zeros(3, 6, 64, 64, 3, dtype=torch.uint8), "action": torch.zeros(3, 6, 2),
             "is_first": torch.zeros(3, 6, dtype=torch.bool)}
    state = np.zeros((3, 6, 6), np.float32)  # at rest in the middle of the arena: no wall within reach
    state[:, -1, 0] = 0.1  # the recorded window moves on by 3.2 pixels (the posterior reference)
    out = wm_probe.steer(agent, batch, state, context=5, horizon=3)
    # builtin:reach: action repeat 2, so 6 raw steps of full force from rest, by hand from the physics in
    # coworld/envs/builtin.py: v <- (v + 0.05 * 5) / (1 + 0.05 * 5), x <- x + 0.05 v; 32 pixels per unit
    v = x = 0.0
    for _ in range(6):
        v = (v + 0.25) / 1.25
        x += 0.05 * v
    assert out["steer_true_px"] == pytest.approx(32 * x, abs=0.006)  # printed to 2 decimals
    assert set(out) == {"steer_gain", "steer_px_error", "steer_true_px", "track_gain"}
    assert np.isfinite(out["track_gain"])
    assert "sample" not in vars(agent.wm.rssm)  # the latents are sampled again afterwards


def test_gains_and_pixel_directions_by_hand():
    # world (x, y) = (0.1, 0.2): 3.2 px right and 6.4 px up, i.e. row -6.4, column +3.2
    assert torch.allclose(wm_probe.to_pixels(np.array([0.1, 0.2])), torch.tensor([-6.4, 3.2]))
    true = torch.tensor([[0.0, 10.0], [0.0, 20.0]])  # pushed right by 10 and 20 px
    moved = torch.tensor([[1.0, 2.0], [-1.0, 4.0]])  # 2 and 4 px along the push, some across it
    assert wm_probe.push_gain(moved, true, torch.tensor([0.0, 1.0])) == pytest.approx(3 / 15)
    # slope: (0*1 + 10*2 + 0*-1 + 20*4) / (100 + 400) = 100 / 500
    assert wm_probe.slope(moved, true) == pytest.approx(0.2)
    assert wm_probe.slope(2.5 * true, true) == pytest.approx(2.5)


def test_held_random_holds_each_draw_for_hold_steps(tmp_path):
    policy = wm_probe.HeldRandom(action_dim=2, hold=3, seed=0)
    state, actions = policy.initial_policy_state(1), []
    for _ in range(7):
        action, state = policy.act(None, state, None, True)
        actions.append(action[0].tolist())
    assert actions[0] == actions[1] == actions[2] != actions[3] == actions[4] == actions[5] != actions[6]
    assert all(-1 <= a <= 1 for step in actions for a in step)
    wm_probe.held_random_episodes("builtin:reach", 2, 3, 0, tmp_path / "held")
    episodes = [load_episode(f) for f in list_episode_files(tmp_path / "held")]
    assert len(episodes) == 2
    act = episodes[0]["action"][1:]  # index 0: the reset step's placeholder action
    assert np.array_equal(act[0], act[1]) and np.array_equal(act[1], act[2]) and not np.array_equal(act[2], act[3])
