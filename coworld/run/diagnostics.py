"""Offline diagnostics: what a run can report about its target agent without a target simulator.

On a batch of dataset windows the world model filters the real frames; its reward head is
compared with the rewards the data recorded, and the critic is read on the same (posterior)
states and compared with the discounted rewards the data obtained after them inside the window.
Together with the open-loop prediction strips (:mod:`coworld.run.openloop`) these tell whether
the model fits the data and whether the critic's values sit far above what the data achieved.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def offline_diagnostics(agent, batch: dict, gamma: float) -> dict[str, float]:
    """Scalars on a batch-major dataset batch (image (B, L, 64, 64, 3) uint8, action, reward, is_first).

    reward_mse   mean squared error of the reward head on posterior features vs the recorded rewards
    reward_corr  their correlation over the batch (0 when either is constant)
    value        mean critic value on the posterior states of the window's first half
    data_return  mean discounted reward the data obtained from those states until the window ends
                 (a lower bound on their value: the window cuts the return short)
    """
    post = agent.posterior(batch)
    feat = agent.wm.feat(post)
    pred = agent.wm.reward(feat).float()
    reward = batch["reward"].to(pred.device).float()
    out = {"reward_mse": float(((pred - reward) ** 2).mean())}
    p, r = pred.flatten() - pred.mean(), reward.flatten() - reward.mean()
    denom = float(p.norm() * r.norm())
    out["reward_corr"] = float((p * r).sum()) / denom if denom > 0 else 0.0
    L = reward.shape[1]
    half = max(1, L // 2)
    # discounted reward-to-go inside the window; reward[t] arrives with state t, so the return
    # obtained *after* state t starts at reward[t + 1]; it stops where the next episode begins
    first = batch["is_first"].to(pred.device).bool()
    togo = torch.zeros_like(reward)
    acc = torch.zeros_like(reward[:, 0])
    for t in range(L - 2, -1, -1):
        acc = torch.where(first[:, t + 1], torch.zeros_like(acc), reward[:, t + 1] + gamma * acc)
        togo[:, t] = acc
    out["value"] = float(agent.value(feat[:, :half]).float().mean())
    out["data_return"] = float(togo[:, :half].mean())
    return out
