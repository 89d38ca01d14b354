"""LOMPO and LOMPO Finetune: the penalised model reward, real latent transitions, the real/model
mix of a SAC batch, the SAC target with the penalty, rollout shapes and termination, checkpoints,
and (slow) training, bit-exact resume and evaluation through the CLI."""

import io
import json
import signal

import pytest
import torch

from coworld.algos.lompo import (
    LompoAgent,
    ModelBuffer,
    loglik_variance,
    mixed_batch,
    penalised_reward,
    real_transitions,
    split_batch,
)
from coworld.algos.sac import SAC
from coworld.cli import main
from coworld.config import load_config
from coworld.errors import UserError
from tests.run.test_resume import SMALL, assert_same_state, run, run_and_kill

AGENT = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.units=16",
    "model.ensemble=3", "lompo.hidden=16", "lompo.batch=8", "lompo.rollout_starts=6", "lompo.horizon=3",
    "lompo.buffer=50", "lompo.wm_updates=0",
]


def make_agent(*extra, action_dim=2):
    return LompoAgent(load_config("tiny", AGENT + list(extra)), action_dim)


def constant_heads(agent, means, std_raw=0.0):
    """Every prior head predicts a constant latent: mean ``means[k]`` in all dims, std from ``std_raw``."""
    for head, mean in zip(agent.wm.rssm.prior_heads, means):
        torch.nn.init.zeros_(head[-1].weight)
        bias = head[-1].bias.data
        half = bias.shape[0] // 2
        bias[:half] = mean
        bias[half:] = std_raw


def constant_output(linear, value):
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.constant_(linear.bias, value)


def test_penalised_reward_is_reward_minus_lambda_u():
    assert torch.allclose(penalised_reward(torch.tensor([1.0, 0.5]), torch.tensor([0.25, 0.0]), 2.0),
                          torch.tensor([0.5, 0.5]))


def test_rollout_reward_is_penalised_by_ensemble_disagreement_hand_example():
    agent = make_agent("lompo.penalty=3.0")  # Gaussian, 3 members
    constant_output(agent.wm.reward_head[-1], 0.5)
    constant_heads(agent, [0.0, 0.0, 3.0])  # ensemble mean 1; distances 2, 2, 4 -> meandis u = 8 / 3
    start = agent.wm.rssm.initial(5, "cpu")
    start["deter"] = torch.randn(5, 16)
    roll = agent.rollout(start, 2)
    assert torch.allclose(roll["uncertainty"], torch.full((2, 5), 8 / 3))
    assert torch.allclose(roll["penalised"], torch.full((2, 5), 0.5 - 3.0 * 8 / 3))
    agent.buffer.add(agent.rollout_transitions(roll))  # the buffer keeps the penalised reward
    assert torch.allclose(agent.buffer.view()["r"], torch.full((10,), -7.5))


def test_loglik_variance_hand_example():
    assert loglik_variance(torch.tensor([[-1.0, 0.0], [-3.0, 0.0]])).tolist() == [1.0, 0.0]
    agent = make_agent("lompo.penalty_kind=loglik_var")
    constant_heads(agent, [0.0, 2.0, 2.0])  # std = 2 sigmoid(0) + 0.1 = 1.1 for every member
    state = {"deter": torch.randn(3, 16), "stoch": torch.zeros(3, 4)}
    # log N(0 | m, s) summed over 4 dims: member 0: c, members 1, 2: c - 4 * 4 / (2 s^2) = c - 8 / s^2
    d = 8 / 1.1**2
    expected = ((0 - (-2 * d / 3)) ** 2 + 2 * ((-d) - (-2 * d / 3)) ** 2) / 3  # population variance
    assert torch.allclose(agent.uncertainty(state), torch.full((3,), expected), rtol=1e-5)


def test_real_transitions_pair_consecutive_latents_and_skip_episode_starts():
    feat = torch.arange(4.0).reshape(1, 4, 1)  # state t has feature t
    action = torch.tensor([[[0.0], [10.0], [20.0], [30.0]]])
    reward = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    is_first = torch.tensor([[True, False, True, False]])  # a new episode starts at t = 2
    is_terminal = torch.tensor([[False, False, False, True]])
    tr = real_transitions(feat, action, reward, is_first, is_terminal)
    assert tr["s"].flatten().tolist() == [0.0, 2.0] and tr["s2"].flatten().tolist() == [1.0, 3.0]
    assert tr["a"].flatten().tolist() == [10.0, 30.0] and tr["r"].tolist() == [1.0, 3.0]
    assert tr["terminal"].tolist() == [0.0, 1.0]


def transitions(rewards, feat_dim=2):
    n = len(rewards)
    return {"s": torch.zeros(n, feat_dim), "a": torch.zeros(n, 1), "r": torch.tensor(rewards),
            "s2": torch.zeros(n, feat_dim), "terminal": torch.zeros(n)}


def test_mixed_batch_has_the_fixed_real_fraction():
    assert split_batch(64, 0.5) == (32, 32)
    assert split_batch(5, 0.3) == (2, 3)  # round(1.5) = 2
    real, model = transitions([1.0, 2.0, 3.0]), transitions([-1.0, -2.0])
    torch.manual_seed(0)
    batch = mixed_batch(real, model, 8, 0.25)
    assert len(batch["r"]) == 8
    assert (batch["r"][:2] > 0).all() and (batch["r"][2:] < 0).all()  # 2 real first, then 6 model
    assert mixed_batch(real, transitions([]), 4, 0.25)["r"].gt(0).all()  # empty buffer: all real
    assert mixed_batch(transitions([]), model, 4, 0.25)["r"].lt(0).all()


def test_sac_target_uses_the_penalised_model_reward_hand_example():
    sac = SAC(3, 1, hidden=4, gamma=0.9)
    for net, value in ((sac.q1, 1.0), (sac.q2, 2.0), (sac.q1_target, 0.5), (sac.q2_target, 0.8)):
        constant_output(net[-1], value)
    sac.log_alpha.data.fill_(-1e4)  # alpha = 0: target = r + gamma (1 - d) min(Q1', Q2')
    r_model = penalised_reward(torch.tensor([0.5, -0.5]), torch.tensor([0.25, 0.25]), 2.0)  # [0, -1]
    r = torch.cat([torch.tensor([1.0]), r_model])  # one real transition, two model ones
    terminal = torch.tensor([0.0, 0.0, 1.0])
    s = torch.randn(3, 3)
    metrics = sac.update(s, torch.zeros(3, 1), r, torch.randn(3, 3), terminal)
    target = torch.tensor([1 + 0.9 * 0.5, 0 + 0.9 * 0.5, -1.0])  # [1.45, 0.45, -1]
    expected = ((1 - target) ** 2).mean() + ((2 - target) ** 2).mean()  # 16.21 / 3
    assert metrics["q_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) == pytest.approx(16.21 / 3)


@pytest.mark.parametrize("bias, alive_steps", [(10.0, 3), (-10.0, 1)])
def test_rollout_shapes_and_termination(bias, alive_steps):
    agent = make_agent("model.discount_head=true")
    constant_output(agent.wm.discount_head[-1], bias)  # continuation sigmoid(+-10): never / always terminal
    start = agent.wm.rssm.initial(4, "cpu")
    roll = agent.rollout(start, 3)
    F = agent.wm.feat_dim
    assert roll["feat"].shape == (4, 4, F) and roll["action"].shape == (3, 4, 2)
    assert roll["reward"].shape == roll["penalised"].shape == roll["alive"].shape == (3, 4)
    assert roll["alive"].sum(0).tolist() == [alive_steps] * 4  # after a terminal step: no more transitions
    flat = agent.rollout_transitions(roll)
    assert len(flat["r"]) == 4 * alive_steps and flat["s"].shape == (4 * alive_steps, F)
    assert flat["terminal"].eq(1.0 if bias < 0 else 0.0).all()


def test_ring_buffer_keeps_the_newest_and_round_trips():
    buf = ModelBuffer(3, 2, 1, "cpu")
    buf.add(transitions([1.0, 2.0]))
    buf.add(transitions([3.0, 4.0]))
    assert len(buf) == 3 and sorted(buf.view()["r"].tolist()) == [2.0, 3.0, 4.0]
    other = ModelBuffer(3, 2, 1, "cpu")
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.view()["r"], buf.view()["r"]) and other.next == buf.next


def random_batch(B=2, L=5):
    return {"image": torch.randint(0, 256, (B, L, 64, 64, 3), dtype=torch.uint8),
            "action": torch.rand(B, L, 2) * 2 - 1, "reward": torch.randn(B, L), "discount": torch.ones(B, L),
            "is_first": torch.zeros(B, L, dtype=torch.bool), "is_terminal": torch.zeros(B, L, dtype=torch.bool)}


def test_model_only_updates_first_then_rollouts_and_sac():
    agent = make_agent("lompo.wm_updates=1")
    m = agent.update(random_batch())
    assert len(agent.buffer) == 0 and "sac/q_loss" not in m
    sac_before = [p.detach().clone() for p in agent.sac.parameters()]
    m = agent.update(random_batch())
    assert len(agent.buffer) == 6 * 3  # rollout_starts x horizon (no discount head: no terminals)
    assert "sac/q_loss" in m and torch.isfinite(torch.tensor(m["sac/q_loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(sac_before, agent.sac.parameters()))
    with pytest.raises(UserError, match="hooks"):
        agent.update(random_batch(), wm_hook=lambda out: (0, {}))


def test_checkpoint_continues_identically():
    torch.manual_seed(1)
    a = make_agent()
    a.update(random_batch())
    saved = io.BytesIO()
    torch.save(a.checkpoint_state(), saved)  # as a checkpoint file holds it, loadable without pickle
    saved.seek(0)
    b = make_agent()
    b.load_checkpoint_state(torch.load(saved, weights_only=True))
    batch = random_batch()
    torch.manual_seed(2)
    a.update(batch)
    torch.manual_seed(2)
    b.update(batch)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert torch.equal(a.buffer.view()["s"], b.buffer.view()["s"]) and a.updates == b.updates == 2


def test_settings_are_checked():
    with pytest.raises(UserError, match="ensemble"):
        make_agent("model.ensemble=1")
    with pytest.raises(UserError, match="real_ratio"):
        make_agent("lompo.real_ratio=1.5")
    with pytest.raises(UserError, match="amp"):
        make_agent("train.amp=bf16")
    for bad, message in (("lompo.gamma=0", "lompo.gamma must be in"), ("lompo.tau=2", "lompo.tau must be in"),
                         ("lompo.penalty=-1", "lompo.penalty")):
        with pytest.raises(UserError, match=message):
            make_agent(bad)


# -- through the CLI ----------------------------------------------------------------------------

LOMPO_SMALL = ["model.ensemble=3", "lompo.hidden=16", "lompo.batch=16", "lompo.rollout_starts=8",
               "lompo.horizon=3", "lompo.buffer=100", "lompo.wm_updates=5"]
CO_SMALL = ["coworld.block_steps=20", "coworld.warmup_blocks=1", "coworld.wm_warmup_rounds=1",
            "coworld.outer_iters=1", "coworld.target_blocks=2", "coworld.source_blocks=1", "train.prefill=20",
            "coworld.wm_warmup_updates=5"]


@pytest.mark.slow
def test_lompo_kill9_resume_bit_identical_then_evaluates(tmp_path, target_data):
    algo = ["--algo", "lompo", "--dataset", str(target_data), "--env", "builtin:reach"]
    sets = SMALL + LOMPO_SMALL
    run(tmp_path / "ref", 40, algo, sets)
    proc = run_and_kill(tmp_path / "cut", 40, algo, signal.SIGKILL, after_checkpoints=2, sets=sets)
    assert proc.returncode == -signal.SIGKILL
    run(tmp_path / "cut", 40, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
    assert main(["eval", str(tmp_path / "ref"), "--episodes", "1"]) == 0
    out = json.loads(next((tmp_path / "ref" / "eval").glob("*.json")).read_text())
    assert out["env"] == "builtin:reach" and len(out["returns"]) == 1


@pytest.mark.slow
def test_lompo_finetune_resumes_bit_identically_and_evaluates(tmp_path, target_data):
    algo = ["--algo", "lompo-finetune", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--target-env", "builtin:reach"]
    sets = SMALL + LOMPO_SMALL + CO_SMALL
    run(tmp_path / "ref", 80, algo, sets)
    schedule = json.loads((tmp_path / "ref" / "schedule.json").read_text())
    assert {p["kind"] for p in schedule} == {"prefill", "source", "target"}
    assert all(p["updates"] > 0 for p in schedule if p["kind"] != "prefill")
    run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=4, sets=sets)
    run(tmp_path / "cut", 80, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
    assert main(["eval", str(tmp_path / "ref"), "--episodes", "1"]) == 0


def test_lompo_finetune_builds_only_the_lompo_agent(tmp_path, target_data, monkeypatch):
    """The finetuning trainer makes its one agent a LompoAgent directly (no DreamerV2 agent is built
    and thrown away, which would also draw from the seed's random stream)."""
    import coworld
    from coworld.algos.dreamer import DreamerAgent
    from coworld.run import lompo

    def no_dreamer(*args, **kwargs):
        raise AssertionError("a DreamerV2 agent was built")

    seen = {}

    def stop(self):
        seen["target"], seen["source"] = self.target, self.sources[0].agent
        return 0

    monkeypatch.setattr(DreamerAgent, "__init__", no_dreamer)  # however it is reached
    monkeypatch.setattr(lompo.LompoFinetuneTrainer, "run", stop)
    coworld.train("lompo-finetune", tmp_path / "run", 40, overrides=SMALL + LOMPO_SMALL + CO_SMALL,
                  source="builtin:reach-src", target_dataset=target_data, target_env="builtin:reach")
    assert isinstance(seen["target"], LompoAgent) and seen["source"] is seen["target"]
