import math

import pytest
import torch

from coworld.nets import Actor, Critic
from coworld.nets.actor_critic import TruncatedNormal


def test_actor_tanh_mean_and_std():
    actor = Actor(5, 2, units=8, layers=1, min_std=0.1)
    last = actor.net[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([3.0, -1.0, 0.0, 4.0]))  # mean raw (2), std raw (2)
    dist = actor(torch.randn(7, 5))
    assert dist.mean.shape == (7, 2)
    assert torch.allclose(dist.mean[0], torch.tanh(torch.tensor([3.0, -1.0])))
    std = torch.tensor([2 / (1 + 1) + 0.1, 2 / (1 + math.exp(-2)) + 0.1])
    assert torch.allclose(dist.base_dist.scale[0], std)
    assert dist.rsample().requires_grad


def test_critic_scalar_output():
    critic = Critic(5, units=8, layers=2)
    assert critic(torch.randn(3, 4, 5)).shape == (3, 4)


def test_truncated_normal_hand_values():
    # N(0, 1) on [-1, 1]: Z = 2 Phi(1) - 1 = 0.682689, phi(1) = 0.241971
    d = TruncatedNormal(torch.tensor([0.0]), torch.tensor([1.0]))
    z = 0.682689
    entropy = 0.5 * math.log(2 * math.pi * math.e) + math.log(z) + (-2 * 0.241971) / (2 * z)  # 0.682775
    assert d.entropy().item() == pytest.approx(entropy, abs=1e-5)
    assert d.log_prob(torch.tensor([0.0])).item() == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(z), abs=1e-5)
    assert d.mean.item() == pytest.approx(0.0, abs=1e-7)
    # N(1, 0.5^2) on [-1, 1] (loc at the bound): Z = Phi(0) - Phi(-4) = 0.5 - 3.167e-5,
    # mean = 1 + 0.5 (phi(-4) - phi(0)) / Z = 1 - 0.5 * (0.398942 - 0.000134) / 0.499968
    d = TruncatedNormal(torch.tensor([1.0]), torch.tensor([0.5]))
    assert d.mean.item() == pytest.approx(1 - 0.5 * (0.398942 - 0.000134) / 0.499968, abs=1e-5)
    assert d.mode.item() == 1.0


def test_truncated_normal_samples_and_gradients():
    torch.manual_seed(0)
    loc = torch.tensor([0.3, -0.9, 1.0], requires_grad=True)
    scale = torch.tensor([0.5, 2.1, 0.1], requires_grad=True)
    d = TruncatedNormal(loc, scale)
    x = d.rsample((100_000,))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x.mean(0), d.mean, atol=0.01)  # the sample mean matches the closed form
    # reparameterised: the gradient of the sample mean equals the closed form's
    grad_mc = torch.autograd.grad(x.mean(0).sum(), (loc, scale), retain_graph=True)
    grad_cf = torch.autograd.grad(d.mean.sum(), (loc, scale))
    for g_mc, g_cf in zip(grad_mc, grad_cf):
        assert torch.allclose(g_mc, g_cf, atol=0.02)
    # the density integrates to one over [-1, 1]
    grid = torch.linspace(-1, 1, 20001)
    dens = d.log_prob(grid[:, None].expand(-1, 3)).exp().detach()
    assert torch.allclose(torch.trapezoid(dens, grid, dim=0), torch.ones(3), atol=1e-3)


def test_actor_trunc_normal_keeps_samples_in_range_and_mode_is_tanh_mean():
    torch.manual_seed(0)
    actor = Actor(5, 2, 16, 2, 0.1, dist="trunc_normal")
    feat = torch.randn(64, 5) * 10
    dist = actor(feat)
    a = dist.rsample()
    assert a.shape == (64, 2) and a.abs().max() <= 1
    assert dist.log_prob(a).shape == (64,) and dist.entropy().shape == (64,)
    mean, _ = actor.net(feat).chunk(2, -1)
    assert torch.allclose(dist.mode, torch.tanh(mean))
    with pytest.raises(ValueError, match="trunc_normal"):
        Actor(5, 2, 16, 2, 0.1, dist="beta")
