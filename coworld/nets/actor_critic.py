"""Actor and critic MLPs on world-model features (docs/algorithms.md#behaviour-learning)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from coworld.nets.world_model import gaussian_std, mlp


class Actor(nn.Module):
    """Tanh-mean Gaussian policy: mean = tanh(x_mu), std = 2 * sigmoid(x_s / 2) + min_std (docs/algorithms.md#behaviour-learning).

    Samples are unbounded; whoever sends actions to an environment or stores them clips
    to [-1, 1] (see :meth:`DreamerAgent.act`).
    """

    def __init__(self, feat_dim: int, action_dim: int, units: int, layers: int, min_std: float):
        super().__init__()
        self.net = mlp(feat_dim, 2 * action_dim, units, layers)
        self.min_std = min_std

    def forward(self, feat: Tensor) -> Independent:
        mean, std = self.net(feat).float().chunk(2, -1)
        # no argument validation: a diverged (NaN) model must reach the driver's NaN check, not raise here
        return Independent(Normal(torch.tanh(mean), gaussian_std(std, self.min_std), validate_args=False), 1,
                           validate_args=False)


class Critic(nn.Module):
    """State value v(feat): the mean of a unit-variance Gaussian, trained by squared error."""

    def __init__(self, feat_dim: int, units: int, layers: int):
        super().__init__()
        self.net = mlp(feat_dim, 1, units, layers)

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat).squeeze(-1).float()
