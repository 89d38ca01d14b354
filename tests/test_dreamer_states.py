"""scripts/dreamer_states.py: the state-input agent trains on the online schedule and is evaluated."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("dreamer_states", Path(__file__).parents[1] / "scripts" / "dreamer_states.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


@pytest.mark.parametrize("mode", [[], ["--pixels"]], ids=["state", "pixels"])
def test_dreamer_states_trains_and_evaluates_either_agent(tmp_path, mode):
    out = tmp_path / "rows.json"
    script.main(["--steps", "240", "--eval-every", "120", "--set", "train.prefill=110", "--set", "train.pretrain=2",
                 "--set", "train.batch=2", "--set", "train.eval_episodes=1", "--json", str(out)] + mode)
    rows = json.loads(out.read_text())["rows"]
    assert [r["env_steps"] for r in rows] == [120, 240]
    # prefill 110 and one finished 100-step episode: 2 pretraining updates at step 110, then one every 5 steps
    assert rows[-1]["updates"] == 2 + (240 - 110) // 5
    assert all(np.isfinite(r["eval_return"]) for r in rows)


def test_hide_velocity_zeroes_only_the_agents_velocity():
    from coworld import envs

    env = script.HideVelocity(envs.make("builtin:reach", obs="state", seed=0))
    env.reset()
    for _ in range(3):
        obs, *_ = env.step([1.0, 1.0])
    assert obs["state"][2:4].tolist() == [0.0, 0.0]
    assert env.unwrapped.vel[0] > 0 and obs["state"][0] == pytest.approx(env.unwrapped.pos[0])  # moving; position kept


def test_state_aux_adds_the_weighted_state_nll_to_the_world_model_loss():
    import torch

    from coworld.algos.dreamer import DreamerAgent
    from coworld.config import load_config
    from coworld.run.bench import random_batch

    cfg = load_config("tiny", ["model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.units=16"])
    batch = random_batch(2, 4, 2, "cpu")
    batch["state"] = torch.randn(2, 4, 6)
    params = []
    for weight in (0.0, 0.0, 50.0):
        torch.manual_seed(0)
        aux = script.StateAux(DreamerAgent(cfg, 2), 6, weight)
        head_before = [p.detach().clone() for p in aux.head.parameters()]
        torch.manual_seed(1)
        metrics = aux(batch)
        assert metrics["model/aux_state_nll"] > 0
        moved = any(not torch.equal(a, b) for a, b in zip(head_before, aux.head.parameters()))
        assert moved == (weight > 0)  # the head learns from its weighted NLL only
        params.append(torch.cat([p.detach().flatten() for p in aux.agent.wm.encoder.parameters()]))
    # weight 0 leaves the world model's update alone (same seed, same result); a weight changes it
    assert torch.equal(params[0], params[1]) and not torch.allclose(params[0], params[2])
