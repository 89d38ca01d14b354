import io
import warnings

import numpy as np
import pytest
import torch

import coworld.algos.dreamer as dreamer_module
from coworld.algos import DreamerAgent, lambda_return
from coworld.algos.dreamer import discount_weights
from coworld.config import load_config

SMALL = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.classes=3",
    "model.units=16", "behaviour.actor_units=16", "behaviour.critic_units=16",
    "behaviour.horizon=3", "train.batch=2", "train.length=4",
]


def make_agent(*extra, action_dim=2):
    return DreamerAgent(load_config("tiny", SMALL + list(extra)), action_dim)


def make_batch(B=2, L=4, A=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, L, dtype=torch.bool)
    is_first[:, 0] = True
    return {
        "image": torch.randint(0, 256, (B, L, 64, 64, 3), dtype=torch.uint8, generator=g),
        "action": torch.rand(B, L, A, generator=g) * 2 - 1,
        "reward": torch.randn(B, L, generator=g),
        "discount": torch.ones(B, L), "is_first": is_first,
        "is_terminal": torch.zeros(B, L, dtype=torch.bool),
    }


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_lambda_return_hand_example_with_bootstrap():
    reward = torch.tensor([[1.0], [2.0]])  # r(s0->s1), r(s1->s2)
    value = torch.tensor([[0.0], [10.0], [20.0]])  # v(s0), v(s1), v(s2)
    discount = torch.tensor([[0.5], [0.5]])
    # R_1 = 2 + 0.5 * (0.5 * 20 + 0.5 * R_2), R_2 = v(s2) = 20  -> 12
    # R_0 = 1 + 0.5 * (0.5 * 10 + 0.5 * 12)                     -> 6.5
    ret = lambda_return(reward, value, discount, lam=0.5)
    assert torch.allclose(ret, torch.tensor([[6.5], [12.0]]))
    # lam = 1: discounted rewards plus bootstrapped final value; lam = 0: one-step TD targets
    assert torch.allclose(lambda_return(reward, value, discount, 1.0), torch.tensor([[7.0], [12.0]]))
    assert torch.allclose(lambda_return(reward, value, discount, 0.0), torch.tensor([[6.0], [12.0]]))


def test_discount_weights_cumprod():
    w = discount_weights(torch.tensor([[0.5], [0.4]]))
    assert torch.allclose(w, torch.tensor([[1.0], [0.5], [0.2]]))


def test_imagination_reward_convention_and_critic_hook():
    """Only the state s_1 gets reward 1 and the slow critic is zero: R_0 = 1 and R_t = 0 after."""
    agent = make_agent("behaviour.gamma=0.9", "behaviour.lam=0.5")
    for p in agent.slow_critic.parameters():
        torch.nn.init.zeros_(p)

    def spike(imag):
        r = torch.zeros(imag["feat"].shape[:2])
        r[1] = 1.0
        return r

    agent.imagined_reward = spike
    seen = {}

    def hook(imag):
        seen.update(imag)
        return imag["value"].sum() * 0, {"hook/called": torch.tensor(1.0)}

    post, _ = agent.world_model_step(make_batch())
    metrics = agent.behaviour_step(post, critic_extra=hook)
    N = 2 * 4
    assert seen["feat"].shape == (4, N, agent.wm.feat_dim) and not seen["feat"].requires_grad
    assert seen["value"].shape == (4, N) and seen["value"].requires_grad
    assert torch.allclose(seen["weight"], torch.tensor([1.0, 0.9, 0.81, 0.729])[:, None].expand(4, N))
    assert torch.allclose(seen["target"], torch.tensor([1.0, 0.0, 0.0])[:, None].expand(3, N))
    assert metrics["hook/called"] == 1


def test_extra_loss_hook_changes_world_model_update():
    batch = make_batch()
    results = []
    for scale in [None, 1e6]:
        torch.manual_seed(0)
        agent = make_agent()
        seen = {}

        def extra(out, scale=scale):
            seen.update(out)
            return scale * out["embed"].pow(2).mean(), {"extra/loss": torch.tensor(0.0)}

        agent.world_model_step(batch, extra_loss=extra if scale else None)
        results.append(params(agent.wm.encoder))
    assert {"embed", "post", "feat", "image", "action", "reward"} <= set(seen)
    assert seen["embed"].requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(*results))


def test_critic_extra_changes_critic_update():
    results = []
    for scale in [0.0, 1e3]:
        torch.manual_seed(0)
        agent = make_agent()
        post, _ = agent.world_model_step(make_batch())
        agent.behaviour_step(post, critic_extra=lambda imag, s=scale: (s * imag["value"].mean(), {}))
        results.append(params(agent.critic))
    assert any(not torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("mode", ["dynamics", "reinforce", "both"])
def test_actor_gradient_modes_change_actor(mode):
    agent = make_agent(f"behaviour.actor_grad={mode}")
    post, _ = agent.world_model_step(make_batch())
    before_actor, before_wm = params(agent.actor), params(agent.wm)
    metrics = agent.behaviour_step(post)
    assert changed(before_actor, agent.actor)
    assert not changed(before_wm, agent.wm)  # world model frozen during behaviour learning
    assert metrics["actor/grad_norm"] > 0


def test_actor_gradient_modes_differ():
    deltas = []
    for mode in ["dynamics", "reinforce"]:
        torch.manual_seed(0)
        agent = make_agent(f"behaviour.actor_grad={mode}")
        post, _ = agent.world_model_step(make_batch())
        torch.manual_seed(1)
        agent.behaviour_step(post)
        deltas.append(params(agent.actor))
    assert any(not torch.equal(a, b) for a, b in zip(*deltas))


def test_slow_critic_copied_every_n_updates():
    agent = make_agent("behaviour.slow_critic_every=3")
    batch = make_batch()
    initial = params(agent.slow_critic)
    for _ in range(2):
        agent.update(batch)
        assert not changed(initial, agent.slow_critic)
        assert changed(initial, agent.critic)
    agent.update(batch)
    assert agent.updates == 3
    for a, b in zip(agent.critic.parameters(), agent.slow_critic.parameters()):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in agent.slow_critic.parameters())


def test_act_clips_and_resets():
    agent = make_agent()
    last = agent.actor.net[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([5.0, -5.0, 20.0, 20.0]))  # mean ~ +-1, std ~ 2.1
    obs = {"image": np.zeros((64, 64, 64, 3), np.uint8)}
    state = agent.initial_policy_state(64)
    action, state = agent.act(obs, state, np.ones(64, bool), explore=True)
    assert action.dtype == np.float32 and action.shape == (64, 2)
    assert action.min() >= -1 and action.max() <= 1
    assert (np.abs(action) == 1).any()  # samples beyond the box were clipped, not squashed
    mean, _ = agent.act(obs, state, np.ones(64, bool), explore=False)
    assert np.allclose(mean, np.tanh([5.0, -5.0]), atol=1e-6)
    # is_first resets the latent: same obs after a reset gives the same latent as from scratch
    _, s1 = agent.act(obs, state, np.ones(64, bool), explore=False)
    _, s0 = agent.act(obs, agent.initial_policy_state(64), np.ones(64, bool), explore=False)
    assert torch.allclose(s1[0]["deter"], s0[0]["deter"])


def test_trunc_normal_actor_learns_and_acts_inside_the_box():
    agent = make_agent("behaviour.actor_dist=trunc_normal")
    post, _ = agent.world_model_step(make_batch())
    before = params(agent.actor)
    metrics = agent.behaviour_step(post)
    assert changed(before, agent.actor) and torch.isfinite(metrics["actor/entropy"])
    last = agent.actor.net[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([5.0, -0.3, 20.0, 20.0]))  # mean (tanh 5, tanh -0.3), std ~ 2.1
    obs = {"image": np.zeros((256, 64, 64, 3), np.uint8)}
    state = agent.initial_policy_state(256)
    action, _ = agent.act(obs, state, np.ones(256, bool), explore=True)
    assert np.abs(action).max() <= 1 and not (np.abs(action) == 1).any()  # drawn inside, not clipped
    mode, _ = agent.act(obs, state, np.ones(256, bool), explore=False)
    assert np.allclose(mode, np.tanh([5.0, -0.3]), atol=1e-6)


@pytest.mark.parametrize("latent", ["gaussian", "discrete"])
@pytest.mark.parametrize("action_dim", [1, 5])
def test_update_runs_for_both_latents_and_action_dims(latent, action_dim):
    agent = make_agent(f"model.latent={latent}", action_dim=action_dim)
    metrics = agent.update(make_batch(A=action_dim))
    for key in ["model/image_loss", "model/reward_loss", "model/kl", "model/prior_ent",
                "model/post_ent", "actor/loss", "actor/entropy", "critic/loss", "imag/value",
                "imag/return", "imag/reward", "model/grad_norm"]:
        assert not metrics[key].requires_grad and torch.isfinite(metrics[key]), key
    assert agent.updates == 1


def test_bf16_autocast_update():
    agent = make_agent("train.amp=bf16")
    metrics = agent.update(make_batch())
    assert metrics["model/loss"].dtype == torch.float32 and torch.isfinite(metrics["model/loss"])


def test_checkpoint_round_trip_continues_identically():
    batch = make_batch()
    agent = make_agent("behaviour.actor_grad=both")
    agent.update(batch)
    buf = io.BytesIO()
    torch.save(agent.checkpoint_state(), buf)
    buf.seek(0)
    fresh = make_agent("behaviour.actor_grad=both")
    fresh.load_checkpoint_state(torch.load(buf, weights_only=True))
    assert fresh.updates == 1
    for a in (agent, fresh):
        torch.manual_seed(123)
        a.update(batch)
    for a, b in zip(agent.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.updates == 2


def test_checkpoint_mismatch_is_user_error():
    from coworld.errors import UserError

    state = make_agent(action_dim=2).checkpoint_state()
    with pytest.raises(UserError, match="configuration"):
        make_agent(action_dim=3).load_checkpoint_state(state)


def test_imagination_in_chunks_accumulates_the_whole_batch_gradient(monkeypatch):
    """behaviour.imag_chunk: chunks of 3, 3 and 2 of the 8 start states give the gradients and metrics
    of one pass over all 8 (the actor's and the prior's noise made deterministic so both imagine the same)."""
    monkeypatch.setattr(torch.distributions.Independent, "rsample", lambda self, sample_shape=(): self.mean)
    monkeypatch.setattr(torch, "randn_like", lambda x: 0.3 * torch.ones_like(x))
    grads, metrics, sizes = [], [], []
    for chunk in (0, 3):
        torch.manual_seed(0)
        agent = make_agent(f"behaviour.imag_chunk={chunk}", "model.latent=gaussian")
        post = agent.posterior(make_batch())  # (2, 4): 8 start states
        seen = []

        def hook(imag, seen=seen):
            seen.append(imag["value"].shape[1])
            return 0.5 * (imag["value"] ** 2).mean(), {"hook/value": imag["value"].mean().detach()}

        metrics.append(agent.behaviour_step(post, critic_extra=hook))
        grads.append([p.grad.clone() for m in (agent.actor, agent.critic) for p in m.parameters()])
        sizes.append(seen)
    assert sizes == [[8], [3, 3, 2]]
    for whole, chunked in zip(*grads):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    for key in ("actor/loss", "critic/loss", "imag/return", "hook/value", "actor/grad_norm", "critic/grad_norm"):
        torch.testing.assert_close(torch.as_tensor(metrics[1][key]), torch.as_tensor(metrics[0][key]),
                                   rtol=1e-5, atol=1e-7)


def test_imagination_chunk_must_not_be_negative():
    from coworld.config import ConfigError
    with pytest.raises(ConfigError, match="imag_chunk"):
        load_config("tiny", ["behaviour.imag_chunk=-1"])


def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(tmp_path, monkeypatch):
    """cpu_has_bf16 reads the flags line; warn_slow_bf16 warns only for bf16 on such a CPU."""
    def cpuinfo(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)

    assert dreamer_module.cpu_has_bf16(cpuinfo("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n")) is True
    assert dreamer_module.cpu_has_bf16(cpuinfo("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")) is True
    assert dreamer_module.cpu_has_bf16(cpuinfo("flags\t\t: fpu avx avx2 fma\n")) is False
    assert dreamer_module.cpu_has_bf16(cpuinfo("processor\t: 0\n")) is None
    assert dreamer_module.cpu_has_bf16(str(tmp_path / "missing")) is None
    for has, device, amp, warns in [(False, "cpu", "bf16", True), (True, "cpu", "bf16", False),
                                    (None, "cpu", "bf16", False), (False, "cpu", "none", False),
                                    (False, "meta", "bf16", False)]:
        monkeypatch.setattr(dreamer_module, "cpu_has_bf16", lambda has=has: has)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dreamer_module.warn_slow_bf16(torch.device(device), amp)
        assert len([w for w in caught if "bf16 is emulated" in str(w.message)]) == int(warns), (has, device, amp)
