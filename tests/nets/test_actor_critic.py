import math

import torch

from coworld.nets import Actor, Critic


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
