import pytest
import torch

from coworld.algos import OfflineDV2Agent
from coworld.algos.offline_dv2 import disagreement
from coworld.config import load_config
from coworld.errors import UserError

SMALL = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.classes=3",
    "model.units=16", "behaviour.actor_units=16", "behaviour.critic_units=16",
    "behaviour.horizon=3", "model.ensemble=3", "train.offline_penalty=3.0",
]


def make_agent(*extra):
    return OfflineDV2Agent(load_config("tiny", SMALL + list(extra)), 2)


def test_disagreement_hand_example():
    preds = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # K=2 members, Z=2: population std [1, 2]
    assert disagreement(preds).item() == pytest.approx(1.5)


@pytest.mark.parametrize("latent", ["gaussian", "discrete"])
def test_penalty_zero_when_members_agree(latent):
    agent = make_agent(f"model.latent={latent}")
    deter = torch.randn(5, 16)
    assert torch.all(agent.uncertainty(deter) > 0)
    heads = agent.wm.rssm.prior_heads
    for head in heads[1:]:
        head.load_state_dict(heads[0].state_dict())
    assert torch.all(agent.uncertainty(deter) == 0)


def test_penalised_reward_hand_example():
    agent = make_agent()  # Gaussian, 3 heads, lambda = 3
    reward_out = agent.wm.reward_head[-1]
    torch.nn.init.zeros_(reward_out.weight)
    torch.nn.init.constant_(reward_out.bias, 0.5)
    # member means (all 4 dims): 0, 0, 3 -> population std sqrt(2); u = sqrt(2)
    for head, mean in zip(agent.wm.rssm.prior_heads, [0.0, 0.0, 3.0]):
        torch.nn.init.zeros_(head[-1].weight)
        torch.nn.init.constant_(head[-1].bias, mean)
    state = agent.wm.rssm.initial(6, "cpu")
    state["deter"] = torch.randn(6, 16)
    imag = {"state": state, "feat": agent.wm.feat(state)}
    expected = 0.5 - 3.0 * 2**0.5
    assert torch.allclose(agent.imagined_reward(imag), torch.full((6,), expected))


def test_update_trains_every_head():
    agent = make_agent("model.latent=discrete", "model.free_nats=0.0")  # KL < 1 nat at init
    batch = {
        "image": torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(2, 4, 2) * 2 - 1, "reward": torch.randn(2, 4),
        "discount": torch.ones(2, 4), "is_first": torch.zeros(2, 4, dtype=torch.bool),
    }
    before = [[p.clone() for p in h.parameters()] for h in agent.wm.rssm.prior_heads]
    metrics = agent.update(batch)
    for old, head in zip(before, agent.wm.rssm.prior_heads):
        assert any(not torch.equal(a, b) for a, b in zip(old, head.parameters()))
    assert torch.isfinite(metrics["imag/reward"])


def test_needs_an_ensemble():
    with pytest.raises(UserError, match="ensemble"):
        OfflineDV2Agent(load_config("tiny", SMALL + ["model.ensemble=0"]), 2)
