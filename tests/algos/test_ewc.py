"""DV2 Finetune + EWC (docs/algorithms.md#dv2-finetune-ewc): the penalty and its gradient on hand values, the
empirical Fisher, the hooks' gradients, and a run whose Fisher is computed once, kept in the checkpoint and
reused bit-identically by a resumed run."""

import json
import signal
import subprocess

import pytest
import torch

from coworld.algos.dreamer import DreamerAgent
from coworld.algos.ewc import EWC, batch_gradients, empirical_fisher, ewc_hooks, ewc_penalty
from coworld.config import load_config
from coworld.run.checkpoint import load_checkpoint
from tests.run.test_resume import SMALL, assert_same_state, command

CO_SMALL = ["coworld.block_steps=20", "coworld.warmup_blocks=1", "coworld.wm_warmup_rounds=1",
            "coworld.outer_iters=1", "coworld.target_blocks=2", "coworld.source_blocks=1", "train.prefill=20",
            "coworld.wm_warmup_updates=5", "coworld.ewc_batches=3",
            "coworld.target_blocks=8"]  # (enough target updates after the Fisher for a stop to land)


def test_penalty_and_gradient_on_hand_values():
    theta = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    anchor = [torch.tensor([0.0, 1.0]), torch.tensor([[1.0]])]
    fisher = [torch.tensor([2.0, 3.0]), torch.tensor([[0.5]])]
    loss = ewc_penalty(theta, anchor, fisher, lam=4.0)
    # sum F (theta - theta*)^2 = 2 * 1 + 3 * 1 + 0.5 * 4 = 7; lambda / 2 * 7 = 14
    assert loss.item() == pytest.approx(14.0)
    loss.backward()
    # gradient lambda * F * (theta - theta*)
    assert torch.allclose(theta[0].grad, torch.tensor([8.0, 12.0]))
    assert torch.allclose(theta[1].grad, torch.tensor([[4.0]]))
    assert ewc_penalty([a.clone() for a in anchor], anchor, fisher, lam=4.0).item() == 0.0


def test_empirical_fisher_is_the_scaled_mean_of_squared_batch_gradients():
    grads = [[torch.tensor([1.0, -2.0])], [torch.tensor([3.0, 0.0])]]
    assert torch.allclose(empirical_fisher(grads)[0], torch.tensor([5.0, 2.0]))
    assert torch.allclose(empirical_fisher(iter(grads), scale=2)[0], torch.tensor([10.0, 4.0]))


def tiny_agent():
    cfg = load_config("tiny", [s for s in SMALL if not s.startswith(("train.", "env."))] + ["train.threads=1"])
    torch.manual_seed(0)
    return DreamerAgent(cfg, 2), cfg


def batch(seed, B=2, L=5):
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(B, L, dtype=torch.bool)
    first[:, 0] = True
    return {"image": torch.randint(0, 255, (B, L, 64, 64, 3), generator=g, dtype=torch.uint8),
            "action": torch.rand(B, L, 2, generator=g) * 2 - 1, "reward": torch.rand(B, L, generator=g),
            "discount": torch.ones(B, L), "is_first": first, "is_terminal": torch.zeros(B, L, dtype=torch.bool)}


def test_fisher_of_an_agent_and_hooks_give_each_module_its_gradient():
    agent, cfg = tiny_agent()
    batches = iter([batch(1), batch(2)])
    torch.manual_seed(5)
    ewc = EWC()
    stats = ewc.compute(agent, lambda: next(batches), 2)
    assert set(stats) == {"ewc/fisher_mean_wm", "ewc/fisher_mean_actor", "ewc/fisher_mean_critic"}
    # the same gradients recomputed by hand (same random numbers): F = B * mean_n g_n^2
    torch.manual_seed(5)
    g1, g2 = batch_gradients(agent, batch(1)), batch_gradients(agent, batch(2))
    names = [n for n, _ in agent.critic.named_parameters()]
    for i, name in enumerate(names):
        assert torch.allclose(ewc.fisher["critic"][name], 2 * (g1["critic"][i] ** 2 + g2["critic"][i] ** 2) / 2)
    assert all(f.sum() > 0 for k, f in ewc.fisher["wm"].items() if k.startswith(("encoder", "decoder", "reward")))
    # at theta* the penalties vanish; move every weight by 0.01 and they equal lambda / 2 * 1e-4 * sum F
    wm_hook, critic_hook = ewc_hooks(agent, ewc, lam=3.0)
    assert wm_hook({})[0].item() == 0.0
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.01)
    loss, metrics = critic_hook({})
    expected = sum(1.5 * 1e-4 * f.sum() for m in ("actor", "critic") for f in ewc.fisher[m].values())
    assert loss.item() == pytest.approx(float(expected), rel=1e-3)
    # the critic hook's loss reaches the actor's parameters too (they are back-propagated together)
    loss.backward()
    name, p = next(iter(agent.actor.named_parameters()))
    assert torch.allclose(p.grad, 3.0 * ewc.fisher["actor"][name] * (p.detach() - ewc.anchor["actor"][name]),
                          rtol=1e-4, atol=1e-12)
    assert "ewc/actor_penalty" in metrics and "ewc/critic_penalty" in metrics
    # state round trip
    other = EWC()
    other.load_state_dict(ewc.state_dict())
    assert other.ready and other.batches == 2
    assert all(torch.equal(other.fisher[m][k], v) and torch.equal(other.anchor[m][k], ewc.anchor[m][k])
               for m in ewc.fisher for k, v in ewc.fisher[m].items())
    assert not EWC().ready


def ewc_args(target_data):
    return ["--algo", "dv2-finetune-ewc", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--target-env", "builtin:reach"]


@pytest.mark.parametrize("bad, message", [("coworld.ewc_lambda=-1", "coworld.ewc_lambda must be >= 0"),
                                          ("coworld.ewc_batches=0", "coworld.ewc_batches must be >= 1"),
                                          ("train.amp=fp16", "use --set train.amp=none or bf16")])
def test_bad_ewc_settings_are_one_clear_error(tmp_path, target_data, bad, message):
    import coworld
    from coworld.errors import UserError

    with pytest.raises(UserError, match=message):
        coworld.train("dv2-finetune-ewc", tmp_path / "run", 100, source="builtin:reach-src",
                      target_dataset=target_data, overrides=[*SMALL, *CO_SMALL, bad])


@pytest.mark.slow
def test_fisher_computed_once_saved_and_reused_by_a_resumed_run(tmp_path, target_data):
    algo, sets = ewc_args(target_data), SMALL + CO_SMALL
    ref = subprocess.run(command(tmp_path / "ref", 80, algo, sets), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert ref.stdout.count("[ewc] Fisher from 3 source batches") == 1
    state = load_checkpoint(tmp_path / "ref")
    assert state["ewc"]["batches"] == 3 and state["ewc"]["fisher"]["wm"]
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert any("target/ewc/wm_penalty" in r and r["target/ewc/wm_penalty"] > 0 for r in lines)

    # the same run stopped (SIGTERM: it saves and exits) once its Fisher exists, then resumed
    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(cut, 80, algo, sets), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[ewc]"):
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=120)
    assert "stopped by signal" in out
    saved = load_checkpoint(cut)
    assert saved["ewc"]["batches"] == 3  # the stopped run's checkpoint holds the Fisher
    resumed = subprocess.run(command(cut, 80, algo, sets), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[ewc]" not in resumed.stdout  # not recomputed
    assert_same_state(tmp_path / "ref", cut)
