"""Soft actor-critic on low-dimensional states (Haarnoja et al. 2018): the agent of the ``sac-state``
dataset collector (``coworld data collect``, :mod:`coworld.run.collect`), which learns from the
``state`` observation while the rendered images are recorded into the episodes."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


def soft_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """Polyak averaging theta' <- tau * theta + (1 - tau) * theta'."""
    with torch.no_grad():
        for p, p_t in zip(online.parameters(), target.parameters()):
            p_t.lerp_(p, tau)


def squashed_logp(u: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log pi(tanh u) of a tanh-squashed Gaussian (SAC, Haarnoja et al. 2018, App. C):
    log N(u; mean, std) - sum log(1 - tanh(u)^2), the last term as 2 (log 2 - u - softplus(-2u))."""
    normal = torch.distributions.Normal(mean, std).log_prob(u).sum(-1)
    return normal - (2 * (math.log(2.0) - u - F.softplus(-2 * u))).sum(-1)


class SAC(nn.Module):
    """Soft actor-critic: twin Q with target copies, tanh-Gaussian actor, automatic temperature
    (target entropy -A). It acts through the agent interface of ``coworld.run.driver`` on ``obs["state"]``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005):
        super().__init__()
        self.action_dim, self.gamma, self.tau = action_dim, gamma, tau
        self.actor = mlp(state_dim, 2 * action_dim, hidden)
        self.q1, self.q2 = mlp(state_dim + action_dim, 1, hidden), mlp(state_dim + action_dim, 1, hidden)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.q1_target.requires_grad_(False)
        self.q2_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr)
        self.updates = 0

    def policy(self, state: torch.Tensor, explore: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Action in [-1, 1] and its log-probability (tanh change of variables)."""
        mean, log_std = self.actor(state).chunk(2, -1)
        log_std = -5 + 3.5 * (torch.tanh(log_std) + 1)  # in [-5, 2]
        std = log_std.exp()
        u = torch.distributions.Normal(mean, std).rsample() if explore else mean
        return torch.tanh(u), squashed_logp(u, mean, std)

    def q(self, state, action):
        sa = torch.cat([state, action], -1)
        return self.q1(sa)[..., 0], self.q2(sa)[..., 0]

    def update(self, s, a, r, s2, terminal) -> dict:
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.policy(s2)
            q1_t, q2_t = (net(torch.cat([s2, a2], -1))[..., 0] for net in (self.q1_target, self.q2_target))
            target = r + self.gamma * (1 - terminal) * (torch.min(q1_t, q2_t) - alpha * logp2)
        q1, q2 = self.q(s, a)
        q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        action, logp = self.policy(s)
        q1_pi, q2_pi = self.q(s, action)
        actor_loss = (alpha * logp - torch.min(q1_pi, q2_pi)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        soft_update(self.q1, self.q1_target, self.tau)
        soft_update(self.q2, self.q2_target, self.tau)
        self.updates += 1
        return {"q_loss": q_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item()}

    # the agent interface of coworld.run.driver (Collector, evaluate)
    def initial_policy_state(self, n: int):
        return None

    @torch.no_grad()
    def act(self, obs: dict, state, is_first, explore: bool):
        action, _ = self.policy(torch.as_tensor(obs["state"], dtype=torch.float32), explore)
        return action.numpy().astype(np.float32), None

    def checkpoint_state(self) -> dict:
        return {"nets": self.state_dict(), "actor_opt": self.actor_opt.state_dict(), "q_opt": self.q_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "updates": self.updates}

    def load_checkpoint_state(self, d: dict) -> None:
        self.load_state_dict(d["nets"])
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.q_opt.load_state_dict(d["q_opt"])
        self.alpha_opt.load_state_dict(d["alpha_opt"])
        self.updates = int(d["updates"])
