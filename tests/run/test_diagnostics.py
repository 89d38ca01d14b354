"""Offline diagnostics against hand-computed values, with a stub agent."""

from types import SimpleNamespace

import pytest
import torch

from coworld.run.diagnostics import offline_diagnostics


def stub_agent(pred_reward, value):
    wm = SimpleNamespace(feat=lambda post: post["feat"], reward=lambda feat: pred_reward)
    return SimpleNamespace(posterior=lambda batch: {"feat": torch.zeros(1, 4, 1)}, wm=wm,
                           value=lambda feat: torch.full(feat.shape[:-1], value))


def test_offline_diagnostics_hand_values():
    reward = torch.tensor([[0.0, 1.0, 2.0, 4.0]])
    pred = torch.tensor([[0.0, 1.0, 2.0, 2.0]])  # errors 0, 0, 0, 2 -> mse 1
    batch = {"reward": reward, "is_first": torch.tensor([[True, False, False, False]])}
    out = offline_diagnostics(stub_agent(pred, 7.0), batch, gamma=0.5)
    assert out["reward_mse"] == pytest.approx(1.0)
    # corr of (0, 1, 2, 2) with (0, 1, 2, 4): centred (-1.25, -.25, .75, .75) and (-1.75, -.75, .25, 2.25)
    p, r = torch.tensor([-1.25, -0.25, 0.75, 0.75]), torch.tensor([-1.75, -0.75, 0.25, 2.25])
    assert out["reward_corr"] == pytest.approx(float((p * r).sum() / (p.norm() * r.norm())))
    # first half = states 0, 1. After state 0: 1 + .5 * 2 + .25 * 4 = 3; after state 1: 2 + .5 * 4 = 4
    assert out["data_return"] == pytest.approx(3.5) and out["value"] == pytest.approx(7.0)
    # a new episode at state 2 cuts the return of states 0 and 1 there: 1 and 0
    batch["is_first"] = torch.tensor([[True, False, True, False]])
    assert offline_diagnostics(stub_agent(pred, 7.0), batch, gamma=0.5)["data_return"] == pytest.approx(0.5)
