"""CoWorld's collaborative terms (Eqs. 3-6) and multi-source selection, on tiny modules."""

import math

import pytest
import torch
from torch import nn

from coworld.algos.coworld import (
    ActionAdapter,
    domain_distances,
    embedding_kl,
    eta_at,
    relabel_reward,
    reward_alignment_extra,
    reward_alignment_hook,
    reward_nll,
    select_source,
    state_alignment_hook,
    state_alignment_loss,
    value_constraint_hook,
    value_constraint_loss,
)
from coworld.config import Config
from coworld.errors import UserError

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def preprocess(image):
    return image.permute(0, 1, 4, 2, 3).float() / 255 - 0.5


class FakeWM(nn.Module):
    """The world-model surface the hooks use: encoder / encode, observe, feat, reward, reward_nll."""

    def __init__(self, pixels=4 * 4 * 3, embed=6, action_dim=2, feat=5):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, embed))  # preprocessed frames
        self.rssm = nn.Linear(embed + action_dim, feat)
        self.head = nn.Linear(feat, 1)

    def encode(self, image):
        return self.encoder(preprocess(image))

    def observe(self, embed, action, is_first):
        stoch = torch.tanh(self.rssm(torch.cat([embed, action], -1)))
        post = {"stoch": stoch}
        return post, post

    def feat(self, state):
        return state["stoch"]

    def reward(self, feat):
        return self.head(feat).squeeze(-1)

    def reward_nll(self, feat, target):
        return 0.5 * (target - self.reward(feat)) ** 2 + HALF_LOG_2PI


class FakeCritic(nn.Module):
    def __init__(self, feat):
        super().__init__()
        self.net = nn.Linear(feat, 1)

    def forward(self, feat):
        return self.net(feat).squeeze(-1)


class FakeAgent:
    def __init__(self, action_dim=2, feat=5):
        self.wm = FakeWM(action_dim=action_dim, feat=feat)
        self.critic = FakeCritic(feat)


def images(b=2, l=3):
    return torch.randint(0, 256, (b, l, 4, 4, 3), dtype=torch.uint8)


def batch(b=2, l=3, action_dim=2):
    return {
        "image": images(b, l),
        "action": torch.rand(b, l, action_dim) * 2 - 1,
        "reward": torch.rand(b, l),
        "is_first": torch.zeros(b, l, dtype=torch.bool),
    }


# --- Stage A -----------------------------------------------------------------


def test_embedding_kl_hand_value():
    source = torch.tensor([0.0, 0.0])  # softmax -> (1/2, 1/2)
    target = torch.tensor([0.0, math.log(3.0)])  # softmax -> (1/4, 3/4)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert embedding_kl(source, target).item() == pytest.approx(expected, rel=1e-6)
    assert embedding_kl(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_state_alignment_loss_scales():
    source = torch.zeros(2, 4, 2)
    target = torch.tensor([0.0, math.log(3.0)]).expand(2, 4, 2)
    kl = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    per_frame = state_alignment_loss(target, source, beta2=0.5, scale="per_frame")
    released = state_alignment_loss(target, source, beta2=0.5, scale="released")
    assert per_frame.item() == pytest.approx(0.5 * kl, rel=1e-6)
    assert released.item() == pytest.approx(0.5 * kl * 4, rel=1e-6)  # x L = sum over time, mean over batch
    with pytest.raises(UserError):
        state_alignment_loss(target, source, 1.0, scale="sum")


def test_state_alignment_gradient_reaches_only_target_encoder():
    cfg = Config()
    source, target = FakeAgent(), FakeAgent()
    obs = images()
    hook = state_alignment_hook(source, cfg)
    loss, metrics = hook({"image": preprocess(obs), "embed": target.wm.encode(obs)})
    assert loss.item() > 0 and "coworld/align_loss" in metrics
    loss.backward()
    assert all(p.grad is None for p in source.wm.parameters())
    assert target.wm.encoder[1].weight.grad.abs().sum() > 0


def test_state_alignment_hook_off():
    cfg = Config()
    cfg.coworld.state_align = False
    assert state_alignment_hook(FakeAgent(), cfg) is None


# --- Stage B -----------------------------------------------------------------


def test_relabel_reward_mixes_with_k():
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    true = torch.tensor([3.0, 0.0])
    out = relabel_reward(pred, true, k=0.3)
    assert torch.allclose(out, torch.tensor([0.7 * 1 + 0.3 * 3, 0.7 * 2 + 0.3 * 0]))
    assert not out.requires_grad
    assert torch.allclose(relabel_reward(pred, true, k=1.0), true)
    assert torch.allclose(relabel_reward(pred, true, k=0.0), pred.detach())


def test_eta_schedule():
    """Linear: 1 at the first reward-alignment update, the floor at the end of that stage."""
    cfg = Config()
    cfg.coworld.eta_start, cfg.coworld.eta_floor = 1.0, 0.2
    assert eta_at(0.0, cfg) == pytest.approx(1.0)
    assert eta_at(0.25, cfg) == pytest.approx(0.8)
    assert eta_at(0.5, cfg) == pytest.approx(0.6)
    assert eta_at(1.0, cfg) == pytest.approx(0.2)
    assert eta_at(3.0, cfg) == pytest.approx(0.2)  # held at the floor
    cfg.coworld.eta_schedule = "frozen"
    cfg.coworld.eta_frozen = 0.975
    assert eta_at(0, cfg) == eta_at(1.0, cfg) == 0.975


def test_action_adapter_kinds():
    a = torch.tensor([[0.5, -0.5]])
    assert torch.equal(ActionAdapter(3, 2, "pad")(a), torch.tensor([[0.5, -0.5, 0.0]]))
    assert torch.equal(ActionAdapter(1, 2, "pad")(a), torch.tensor([[0.5]]))
    assert torch.equal(ActionAdapter(2, 2, "strict")(a), a)
    with pytest.raises(UserError, match="strict"):
        ActionAdapter(3, 2, "strict")


def test_reward_nll_hand_value():
    pred = torch.tensor([0.0, 1.0])
    reward = torch.tensor([1.0, 3.0])
    assert reward_nll(pred, reward).item() == pytest.approx((0.5 * 1 + 0.5 * 4) / 2 + HALF_LOG_2PI)


def test_reward_alignment_total_equals_eq5():
    # Hand example: NLL_S = 2, NLL_T = 0.5, eta = 0.75, c_r = 2.
    nll_s, nll_t, eta, c_r = torch.tensor(2.0), torch.tensor(0.5), 0.75, 2.0
    total = c_r * nll_s + reward_alignment_extra(nll_s, nll_t, eta, c_r)  # agent's own term + hook
    assert total.item() == pytest.approx(c_r * (0.75 * 2.0 + 0.25 * 0.5))


def test_reward_alignment_hook_value_and_gradients():
    cfg = Config()
    cfg.model.reward_scale = 2.0
    cfg.coworld.k = 0.3
    source = FakeAgent(action_dim=3)
    target_batch = batch(action_dim=2)  # target has fewer action dims than the source
    src = batch(action_dim=3)
    eta = 0.6
    hook = reward_alignment_hook(source, target_batch, eta, cfg, ActionAdapter(3, 2))
    # The source batch's features are detached here so that any encoder gradient must come
    # from the target pass.
    with torch.no_grad():
        post, _ = source.wm.observe(source.wm.encode(src["image"]), src["action"], src["is_first"])
        src_feat = source.wm.feat(post)
    loss, metrics = hook({"feat": src_feat, "reward": src["reward"]})

    # Hand computation of Eq. 5 from the pieces.
    with torch.no_grad():
        nll_s = reward_nll(source.wm.reward(src_feat), src["reward"])
        action_s = torch.cat([target_batch["action"], torch.zeros(2, 3, 1)], -1)
        tpost, _ = source.wm.observe(source.wm.encode(target_batch["image"]), action_s, target_batch["is_first"])
        pred_t = source.wm.reward(source.wm.feat(tpost))
        relabelled = 0.7 * pred_t + 0.3 * target_batch["reward"]
        nll_t = (0.5 * (relabelled - pred_t) ** 2).mean() + HALF_LOG_2PI
    own = 2.0 * nll_s  # the agent's own reward term, already in its loss
    assert (own + loss).item() == pytest.approx(2.0 * (eta * nll_s + (1 - eta) * nll_t).item(), rel=1e-5)
    assert metrics["coworld/reward_nll_target"].item() == pytest.approx(nll_t.item(), rel=1e-5)

    loss.backward()
    for module in (source.wm.encoder[1], source.wm.rssm, source.wm.head):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_reward_alignment_hook_off():
    cfg = Config()
    cfg.coworld.reward_align = False
    assert reward_alignment_hook(FakeAgent(), batch(), 0.5, cfg, ActionAdapter(2, 2)) is None


# --- Stage C -----------------------------------------------------------------


def test_value_constraint_hand_value_and_per_element_gradient():
    v_t = torch.tensor([[1.0, 5.0], [2.0, -1.0]], requires_grad=True)
    v_s = torch.tensor([[3.0, 4.0], [2.5, -2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 1.0], [0.5, 0.5]])
    loss = value_constraint_loss(v_t, v_s, w, alpha=1.5)
    # max: [[3, 5], [2.5, -1]], weighted: [[3, 5], [1.25, -0.5]], mean = 8.75 / 4
    assert loss.item() == pytest.approx(1.5 * 8.75 / 4)
    loss.backward()
    # gradient only where v_T > v_S: alpha * w / n
    expected = torch.tensor([[0.0, 1.5 / 4], [0.0, 1.5 * 0.5 / 4]])
    assert torch.allclose(v_t.grad, expected)
    assert v_s.grad is None


def test_value_constraint_tie_gives_no_gradient():
    v_t = torch.tensor([1.0, 2.0], requires_grad=True)
    value_constraint_loss(v_t, torch.tensor([1.0, 1.0]), torch.ones(2), alpha=1.0).backward()
    assert torch.allclose(v_t.grad, torch.tensor([0.0, 0.5]))


def test_value_constraint_no_max_ablation():
    v_t = torch.tensor([[1.0, 5.0], [2.0, -1.0]], requires_grad=True)
    v_s = torch.tensor([[3.0, 4.0], [2.5, -2.0]])
    w = torch.tensor([[1.0, 1.0], [0.5, 0.5]])
    loss = value_constraint_loss(v_t, v_s, w, alpha=1.5, no_max=True)
    assert loss.item() == pytest.approx(1.5 * (1 + 5 + 1 - 0.5) / 4)
    loss.backward()
    assert torch.allclose(v_t.grad, 1.5 * w / 4)  # every value pushed down


def test_value_constraint_hook_freezes_source_critic():
    cfg = Config()
    cfg.coworld.alpha = 2.0
    source, target = FakeAgent(), FakeAgent()
    h, n, f = 4, 3, 5
    feat = torch.randn(h + 1, n, f)
    value = target.critic(feat)
    imag = {"feat": feat, "value": value, "weight": torch.ones(h + 1, n), "target": torch.zeros(h, n)}
    loss, metrics = value_constraint_hook(source, cfg)(imag)
    with torch.no_grad():
        v_s = source.critic(feat[:h])
        expected = 2.0 * torch.maximum(value[:h], v_s).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0.0 <= metrics["coworld/capped_frac"].item() <= 1.0
    loss.backward()
    assert all(p.grad is None for p in source.critic.parameters())
    assert target.critic.net.weight.grad.abs().sum() > 0

    cfg.coworld.value_constraint = False
    assert value_constraint_hook(source, cfg) is None


# --- Action adapter ------------------------------------------------------------


def test_action_adapter_pads_and_truncates():
    a4 = torch.tensor([[0.1, -0.2, 0.3, 0.4]])
    up = ActionAdapter(source_dim=5, target_dim=4)(a4)
    assert up.shape == (1, 5)
    assert torch.equal(up, torch.tensor([[0.1, -0.2, 0.3, 0.4, 0.0]]))
    a5 = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    down = ActionAdapter(source_dim=4, target_dim=5)(a5)
    assert down.shape == (2, 3, 4)
    assert torch.equal(down, a5[..., :4])
    assert torch.equal(ActionAdapter(3, 3)(a5[..., :3]), a5[..., :3])
    with pytest.raises(UserError):
        ActionAdapter(4, 5)(a4)


# --- Multi-source selection --------------------------------------------------------


def test_select_source_picks_matching_encoder():
    target = FakeAgent()
    matching, other = FakeAgent(), FakeAgent()
    matching.wm.load_state_dict(target.wm.state_dict())
    with torch.no_grad():
        other.wm.encoder[1].weight.mul_(5.0)
    distances = domain_distances(target, [other, matching], images())
    assert distances.shape == (2,)
    assert distances[1].item() == pytest.approx(0.0, abs=1e-6)
    assert distances[0].item() > 0
    assert select_source(distances) == 1
    assert select_source(torch.tensor([0.3, 0.1, 0.2])) == 1


# --- End to end on tiny DreamerV2 agents ----------------------------------------


def tiny_cfg():
    from coworld.config import load_config

    return load_config("tiny", ["model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4",
                                "model.units=16", "behaviour.actor_units=16", "behaviour.critic_units=16",
                                "behaviour.horizon=3"])


def real_batch(b=2, l=3, action_dim=2):
    return {
        "image": torch.randint(0, 256, (b, l, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(b, l, action_dim) * 2 - 1,
        "reward": torch.rand(b, l),
        "discount": torch.ones(b, l),
        "is_first": torch.tensor([[True, False, False]] * b),
        "is_terminal": torch.zeros(b, l, dtype=torch.bool),
    }


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module, before):
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), before))


def test_hooks_on_real_agents():
    from coworld.algos.dreamer import DreamerAgent

    cfg = tiny_cfg()
    source, target = DreamerAgent(cfg, action_dim=3), DreamerAgent(cfg, action_dim=2)
    source_before = snapshot(source)

    # Stage A in the target world-model step: the target encoder moves, the source does not.
    enc_before = snapshot(target.wm.encoder)
    post, metrics = target.world_model_step(real_batch(), extra_loss=state_alignment_hook(source, cfg))
    assert metrics["coworld/align_loss"].item() > 0
    assert not unchanged(target.wm.encoder, enc_before)

    # Stage C in the target behaviour step: the source critic stays frozen.
    metrics = target.behaviour_step(post, critic_extra=value_constraint_hook(source, cfg))
    assert torch.isfinite(metrics["coworld/value_constraint"])
    assert unchanged(source, source_before)
    assert all(p.grad is None for p in source.critic.parameters())

    # Stage B in the source world-model step, target actions 2-D into the 3-D source model.
    enc_before = snapshot(source.wm.encoder)
    hook = reward_alignment_hook(source, real_batch(action_dim=2), 0.5, cfg, ActionAdapter(3, 2))
    _, metrics = source.world_model_step(real_batch(action_dim=3), extra_loss=hook)
    assert torch.isfinite(metrics["coworld/reward_nll_target"])
    assert not unchanged(source.wm.encoder, enc_before)


def test_reward_alignment_total_on_real_agent():
    """The world-model loss with the hook equals the loss with reward term c_r * Eq. 5."""
    from coworld.algos.dreamer import DreamerAgent

    cfg = tiny_cfg()
    cfg.model.reward_scale = 2.0
    source = DreamerAgent(cfg, action_dim=2)
    src, tgt = real_batch(), real_batch()
    eta = 0.3
    hook = reward_alignment_hook(source, tgt, eta, cfg, ActionAdapter(2, 2))
    torch.manual_seed(1)
    loss, out, metrics = source.wm.loss(src)
    extra, m = hook(out)
    nll_s, nll_t = metrics["model/reward_loss"], m["coworld/reward_nll_target"]
    other = loss.detach() - 2.0 * nll_s  # image + KL terms
    expected = other + 2.0 * (eta * nll_s + (1 - eta) * nll_t)
    assert (loss + extra).item() == pytest.approx(expected.item(), rel=1e-5)
    assert m["coworld/reward_nll_source"].item() == pytest.approx(nll_s.item(), rel=1e-6)


def test_domain_distances_on_real_agents():
    from coworld.algos.dreamer import DreamerAgent

    cfg = tiny_cfg()
    target, other, matching = (DreamerAgent(cfg, action_dim=2) for _ in range(3))
    matching.wm.load_state_dict(target.wm.state_dict())
    distances = domain_distances(target, [other, matching], real_batch()["image"])
    assert distances[1].item() == pytest.approx(0.0, abs=1e-6) and distances[0].item() > 0
    assert select_source(distances) == 1
