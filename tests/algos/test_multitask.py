"""Multi-Task DV2 (docs/algorithms.md#multi-task-dv2): the domain-tagged action input, the joint
batch, one update of the shared world model and both actor-critics, acting and checkpoints."""

import numpy as np
import pytest
import torch

from coworld.algos.multitask import (
    SOURCE,
    TARGET,
    MultiTaskAgent,
    joint_batch,
    model_action,
    split_batch,
)
from coworld.config import load_config
from coworld.errors import UserError

SMALL = ["model.depth=2", "model.stoch=4", "model.deter=8", "model.hidden=8", "model.units=8",
         "behaviour.actor_units=8", "behaviour.critic_units=8", "behaviour.horizon=3", "train.batch=3",
         "train.length=4"]


def cfg():
    return load_config("tiny", SMALL)


def batch(rows, length, dim, seed):
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(rows, length, dtype=torch.bool)
    is_first[:, 0] = True
    return {"image": torch.randint(0, 256, (rows, length, 64, 64, 3), generator=g, dtype=torch.uint8),
            "action": torch.rand(rows, length, dim, generator=g) * 2 - 1,
            "reward": torch.rand(rows, length, generator=g), "discount": torch.ones(rows, length),
            "is_first": is_first, "is_terminal": torch.zeros(rows, length, dtype=torch.bool),
            "state": torch.zeros(rows, length, 7)}  # an extra key: not for the world model


def test_model_action_pads_and_appends_the_domain_one_hot_by_hand():
    a = torch.tensor([[0.5, -1.0]])
    # target (domain 1), 2-D actions in a 3-D joint space: [a1, a2, 0 | 0, 1]
    assert model_action(a, TARGET, 3).tolist() == [[0.5, -1.0, 0.0, 0.0, 1.0]]
    # source (domain 0), already 3-D: [a1, a2, a3 | 1, 0]
    s = torch.tensor([[[0.25, 0.0, -0.75]]])
    assert model_action(s, SOURCE, 3).tolist() == [[[0.25, 0.0, -0.75, 1.0, 0.0]]]
    with pytest.raises(ValueError):
        model_action(torch.zeros(1, 4), SOURCE, 3)


def test_split_batch_half_source_half_target():
    assert split_batch(8) == (4, 4)
    assert split_batch(3) == (1, 2)  # the odd window goes to the target
    with pytest.raises(UserError, match="train.batch >= 2"):
        split_batch(1)


def test_joint_batch_stacks_source_over_target_in_the_model_action_space():
    src, tgt = batch(1, 4, 3, 0), batch(2, 4, 2, 1)
    out = joint_batch(src, tgt, 3)
    assert set(out) == {"image", "action", "reward", "discount", "is_first", "is_terminal"}
    assert out["action"].shape == (3, 4, 5) and out["image"].shape[0] == 3
    assert torch.equal(out["image"][:1], src["image"]) and torch.equal(out["image"][1:], tgt["image"])
    assert torch.equal(out["action"][0, :, :3], src["action"][0])
    assert out["action"][0, :, 3:].tolist() == [[1.0, 0.0]] * 4
    assert torch.equal(out["action"][1:, :, :2], tgt["action"])
    assert (out["action"][1:, :, 2] == 0).all() and out["action"][1:, :, 3:].tolist() == [[[0.0, 1.0]] * 4] * 2


def test_the_indicator_reaches_the_prior_and_each_domain_imagines_with_its_own():
    agent = MultiTaskAgent(cfg(), 3, 2)
    assert agent.joint_dim == 3 and agent.wm.rssm.img_in[0].in_features == agent.wm.rssm.stoch_dim + 3 + 2
    state = agent.wm.rssm.initial(1, "cpu")
    state["deter"] = torch.randn(1, agent.wm.rssm.deter_dim)
    a = torch.tensor([[0.3, -0.2]])
    h = {d: agent.wm.rssm.deter_step(state, model_action(a, d, 3)) for d in (SOURCE, TARGET)}
    assert not torch.allclose(h[SOURCE], h[TARGET])  # same state and action, another domain: another h_t
    torch.manual_seed(1)
    imagined = agent.target.imagine_step(state, a)
    torch.manual_seed(1)
    by_hand = agent.wm.rssm.img_step(state, torch.tensor([[0.3, -0.2, 0.0, 0.0, 1.0]]))
    assert torch.equal(imagined["deter"], by_hand["deter"]) and torch.equal(imagined["stoch"], by_hand["stoch"])


def test_one_update_steps_the_shared_model_on_both_domains_and_each_behaviour_on_its_own_rows(monkeypatch):
    agent = MultiTaskAgent(cfg(), 3, 2)
    src, tgt = batch(1, 4, 3, 0), batch(2, 4, 2, 1)
    # the world-model loss is DreamerV2's on the joint batch: compare with a direct evaluation
    torch.manual_seed(5)
    expected, _, _ = agent.wm.loss(joint_batch(src, tgt, 3))
    seen = {}
    for name in ("source", "target"):
        behaviour = getattr(agent, name)
        original = behaviour.behaviour_step

        def record(post, critic_extra=None, _name=name, _original=original):
            seen[_name] = post
            return _original(post, critic_extra)

        monkeypatch.setattr(behaviour, "behaviour_step", record)
    before = {k: [p.detach().clone() for p in m.parameters()]
              for k, m in [("wm", agent.wm), ("source", agent.source.actor), ("target", agent.target.actor),
                           ("source_critic", agent.source.critic), ("target_critic", agent.target.critic)]}
    torch.manual_seed(5)
    metrics = agent.update(src, tgt)
    assert float(metrics["model/loss"]) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert seen["source"]["deter"].shape[:2] == (1, 4) and seen["target"]["deter"].shape[:2] == (2, 4)
    after = {"wm": agent.wm, "source": agent.source.actor, "target": agent.target.actor,
             "source_critic": agent.source.critic, "target_critic": agent.target.critic}
    for key, module in after.items():
        assert any(not torch.equal(p, q) for p, q in zip(before[key], module.parameters())), f"{key} did not learn"
    assert {"source/actor/loss", "target/actor/loss", "source/critic/loss", "target/critic/loss"} <= metrics.keys()
    assert agent.updates == agent.source.updates == agent.target.updates == 1


def test_acting_is_the_target_policy_and_carries_the_model_action():
    agent = MultiTaskAgent(cfg(), 3, 2)
    state = agent.initial_policy_state(2)
    assert state[1].shape == (2, 5)
    obs = {"image": np.zeros((2, 64, 64, 3), np.uint8)}
    action, state = agent.act(obs, state, np.array([True, True]), explore=False)
    assert action.shape == (2, 2) and state[1].shape == (2, 5)
    assert state[1][:, 2:].tolist() == [[0.0, 0.0, 1.0]] * 2
    source_action, _ = agent.source.act(obs, agent.source.initial_policy_state(2), np.array([True, True]), True)
    assert source_action.shape == (2, 3)
    assert agent.policy_value(state).shape == (2,)


def test_checkpoint_round_trip_and_wrong_dims_refused():
    c = cfg()
    agent = MultiTaskAgent(c, 3, 2)
    agent.update(batch(1, 4, 3, 0), batch(2, 4, 2, 1))
    saved = agent.checkpoint_state()
    torch.manual_seed(9)
    other = MultiTaskAgent(c, 3, 2)
    other.load_checkpoint_state(saved)
    assert other.updates == other.target.updates == 1
    for a, b in zip(agent.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="action dims"):
        MultiTaskAgent(c, 2, 2).load_checkpoint_state(saved)
