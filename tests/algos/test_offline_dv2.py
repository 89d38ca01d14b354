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
    preds = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # K=2 members, Z=2; ensemble mean [1, 2]
    # meandis (V-D4RL): each member is sqrt(1 + 4) from the mean -> mean over members sqrt(5)
    assert disagreement(preds).item() == pytest.approx(5**0.5)
    # std: population std [1, 2] -> mean 1.5
    assert disagreement(preds, "std").item() == pytest.approx(1.5)


def test_meandis_is_the_frobenius_norm_over_stoch_and_classes():
    """Discrete latents: V-D4RL takes the norm over (stoch, classes); ours over the flattened Z."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 7, 4, 3, generator=g), -1)  # K=5, batch 7, 4 x 3 classes
    ref = (probs - probs.mean(0)).pow(2).sum((-2, -1)).sqrt().mean(0)
    assert torch.allclose(disagreement(probs.flatten(-2)), ref)


@pytest.mark.parametrize("latent", ["gaussian", "discrete"])
def test_penalty_zero_when_members_agree(latent):
    agent = make_agent(f"model.latent={latent}")
    deter = torch.randn(5, 16)
    assert torch.all(agent.uncertainty(deter) > 0)
    heads = agent.wm.rssm.prior_heads
    for head in heads[1:]:
        head.load_state_dict(heads[0].state_dict())
    assert torch.allclose(agent.uncertainty(deter), torch.zeros(5), atol=1e-6)


def test_penalised_reward_hand_example():
    agent = make_agent()  # Gaussian, 3 heads, lambda = 3
    reward_out = agent.wm.reward_head[-1]
    torch.nn.init.zeros_(reward_out.weight)
    torch.nn.init.constant_(reward_out.bias, 0.5)
    # member means (all 4 dims): 0, 0, 3; ensemble mean 1; distances 2, 2, 4 -> u = 8 / 3
    for head, mean in zip(agent.wm.rssm.prior_heads, [0.0, 0.0, 3.0]):
        torch.nn.init.zeros_(head[-1].weight)
        torch.nn.init.constant_(head[-1].bias, mean)
    state = agent.wm.rssm.initial(6, "cpu")
    state["deter"] = torch.randn(6, 16)
    imag = {"state": state, "feat": agent.wm.feat(state)}
    assert torch.allclose(agent.imagined_reward(imag), torch.full((6,), 0.5 - 3.0 * 8 / 3))
    agent.cfg.train.offline_penalty_kind = "std"  # population std sqrt(2) in every dim
    assert torch.allclose(agent.imagined_reward(imag), torch.full((6,), 0.5 - 3.0 * 2**0.5))


def random_batch():
    return {
        "image": torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(2, 4, 2) * 2 - 1, "reward": torch.randn(2, 4),
        "discount": torch.ones(2, 4), "is_first": torch.zeros(2, 4, dtype=torch.bool),
    }


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_vd4rl_protocol_world_model_first_then_agent_on_a_frozen_model():
    agent = make_agent("train.offline_wm_updates=2", "model.free_nats=0.0")
    for _ in range(2):
        wm, actor, critic = params(agent.wm), params(agent.actor), params(agent.critic)
        agent.update(random_batch())
        assert changed(wm, agent.wm) and not changed(actor, agent.actor) and not changed(critic, agent.critic)
    wm, actor, critic = params(agent.wm), params(agent.actor), params(agent.critic)
    metrics = agent.update(random_batch())
    assert not changed(wm, agent.wm) and changed(actor, agent.actor) and changed(critic, agent.critic)
    assert agent.updates == 3 and "actor/loss" in metrics and "model/loss" not in metrics


def test_weight_decay_multiplies_by_one_minus_wd_on_model_actor_and_critic():
    """DreamerV2 / V-D4RL decay: w <- (1 - wd) w before Adam; with a zero gradient Adam moves nothing,
    so one step leaves exactly (1 - wd) w (AdamW would leave (1 - lr * wd) w)."""
    agent = make_agent("model.weight_decay=0.1", "behaviour.weight_decay=0.25")
    for module, opt, wd in ((agent.wm, agent.model_opt, 0.1), (agent.actor, agent.actor_opt, 0.25),
                            (agent.critic, agent.critic_opt, 0.25)):
        before = params(module)
        opt.step(sum((p * 0).sum() for p in module.parameters()))
        for old, new in zip(before, module.parameters()):
            assert torch.allclose(new, old * (1 - wd))


def test_update_trains_every_head():
    agent = make_agent("model.latent=discrete", "model.free_nats=0.0")  # KL < 1 nat at init
    batch = random_batch()
    before = [[p.clone() for p in h.parameters()] for h in agent.wm.rssm.prior_heads]
    metrics = agent.update(batch)
    for old, head in zip(before, agent.wm.rssm.prior_heads):
        assert any(not torch.equal(a, b) for a, b in zip(old, head.parameters()))
    assert torch.isfinite(metrics["imag/reward"])


def test_needs_an_ensemble():
    with pytest.raises(UserError, match="ensemble"):
        OfflineDV2Agent(load_config("tiny", SMALL + ["model.ensemble=0"]), 2)


def test_cli_offline_dv2_with_a_size_preset_and_no_env_reports_offline_diagnostics(tmp_path):
    """`--algo offline-dv2 --preset tiny` needs no --set for its ensemble and penalty; with no --env
    the evaluations still write open-loop strips and the offline diagnostics."""
    import json

    from coworld.cli import main
    from coworld.data.make import make_dataset
    from tests.run.test_resume import SMALL

    data = tmp_path / "data"
    make_dataset("builtin:reach", "random", 3, data, seed=0, time_limit=15)
    logdir = tmp_path / "run"
    sets = sum((["--set", s] for s in SMALL + ["train.eval_every=4"]), [])
    assert main(["train", "--algo", "offline-dv2", "--dataset", str(data), "--preset", "tiny", "--steps", "8",
                 "--logdir", str(logdir), "--no-progress", *sets]) == 0
    cfg = json.loads((logdir / "config.json").read_text())
    assert cfg["model"]["ensemble"] == 7 and cfg["train"]["offline_penalty"] == 10.0
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    diag = [r for r in lines if "offline/reward_mse" in r]
    assert [r["step"] for r in diag] == [4, 8]
    assert all({"offline/reward_corr", "offline/value", "offline/data_return"} <= r.keys() for r in diag)
    assert list((logdir / "images").glob("openloop*"))


def test_a_real_update_with_weight_decay_runs():
    """The decay comes after backward: applied before it, it changed weights the graph had saved and
    every update with weight decay > 0 failed (the zero-gradient test above could not see that)."""
    agent = make_agent("model.weight_decay=1e-3", "behaviour.weight_decay=1e-3", "model.free_nats=0.0")
    metrics = agent.update(random_batch())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
