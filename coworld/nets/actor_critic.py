"""Actor and critic MLPs on world-model features (docs/algorithms.md#behaviour-learning)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints

from coworld.nets.world_model import gaussian_std, mlp


class TruncatedNormal(Distribution):
    """A Gaussian N(loc, scale^2) restricted to [low, high], per element, with reparameterised samples.

    Sampling by the inverse CDF: x = loc + scale * Phi^-1(Phi(a) + u (Phi(b) - Phi(a))), u ~ U(0, 1),
    a = (low - loc) / scale, b = (high - loc) / scale. Density phi(z) / (scale Z) with Z = Phi(b) - Phi(a);
    entropy log(sqrt(2 pi e) scale Z) + (a phi(a) - b phi(b)) / (2 Z). With loc inside [low, high] (a tanh
    mean), Z >= Phi(0) - Phi(-(high - low) / scale) stays away from 0.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True
    _tiny = 1e-6  # keeps the inverse CDF's argument inside (0, 1) in float32

    def __init__(self, loc: Tensor, scale: Tensor, low: float = -1.0, high: float = 1.0):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.low, self.high = low, high
        self._a, self._b = (low - self.loc) / self.scale, (high - self.loc) / self.scale
        self._cdf_a, self._cdf_b = torch.special.ndtr(self._a), torch.special.ndtr(self._b)
        self._z = (self._cdf_b - self._cdf_a).clamp_min(self._tiny)
        super().__init__(self.loc.shape, validate_args=False)

    @property
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def mode(self) -> Tensor:
        return self.loc.clamp(self.low, self.high)

    def _pdf(self, z: Tensor) -> Tensor:
        return torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * (self._pdf(self._a) - self._pdf(self._b)) / self._z

    def rsample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        p = (self._cdf_a + u * self._z).clamp(self._tiny, 1 - self._tiny)
        x = self.loc + self.scale * torch.special.ndtri(p)
        return x.clamp(self.low, self.high)  # float rounding only: the draw already lies in [low, high]

    def log_prob(self, value: Tensor) -> Tensor:
        z = (value - self.loc) / self.scale
        return -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - torch.log(self.scale * self._z)

    def entropy(self) -> Tensor:
        a, b = self._a, self._b
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(self.scale * self._z)
                + (a * self._pdf(a) - b * self._pdf(b)) / (2 * self._z))


class Actor(nn.Module):
    """Tanh-mean Gaussian policy: mean = tanh(x_mu), std = 2 * sigmoid(x_s / 2) + min_std (docs/algorithms.md#behaviour-learning).

    ``dist="normal"``: samples are unbounded; whoever sends actions to an environment or stores them
    clips to [-1, 1] (see :meth:`DreamerAgent.act`). ``dist="trunc_normal"``: the same Gaussian
    truncated to [-1, 1].
    """

    def __init__(self, feat_dim: int, action_dim: int, units: int, layers: int, min_std: float,
                 dist: str = "normal"):
        super().__init__()
        if dist not in ("normal", "trunc_normal"):
            raise ValueError(f"actor dist {dist!r}: expected 'normal' or 'trunc_normal'")
        self.net = mlp(feat_dim, 2 * action_dim, units, layers)
        self.min_std, self.dist = min_std, dist

    def forward(self, feat: Tensor) -> Independent:
        mean, std = self.net(feat).float().chunk(2, -1)
        mean, std = torch.tanh(mean), gaussian_std(std, self.min_std)
        # no argument validation: a diverged (NaN) model must reach the driver's NaN check, not raise here
        base = Normal(mean, std, validate_args=False) if self.dist == "normal" else TruncatedNormal(mean, std)
        return Independent(base, 1, validate_args=False)


class Critic(nn.Module):
    """State value v(feat): the mean of a unit-variance Gaussian, trained by squared error."""

    def __init__(self, feat_dim: int, units: int, layers: int):
        super().__init__()
        self.net = mlp(feat_dim, 1, units, layers)

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat).squeeze(-1).float()
