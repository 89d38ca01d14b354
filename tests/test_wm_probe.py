"""scripts/wm_probe.py: its readout and its measure of where the decoder draws the agent, on hand values."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

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


def test_probe_runs_end_to_end(tmp_path):
    out = tmp_path / "probe.json"
    wm_probe.main(["--train-episodes", "3", "--probe-episodes", "3", "--updates", "2", "--eval-every", "2",
                   "--set", "train.batch=2", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["updates"] for r in rows] == [0, 2]
    assert {"agent_px_error", "agent_openloop_red_share", "latent/agent", "reward_corr"} <= rows[-1].keys()
