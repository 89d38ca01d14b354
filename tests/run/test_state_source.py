"""State-input source with an image target (paper Table 4; docs/algorithms.md#state-input-source):
``coworld.source_options = {obs = "state"}``. The source agent reads ``obs["state"]`` through an MLP
encoder; with the target dataset's recorded states stages A and B run, without them they are switched
off with a logged note; DV2 Finetune refuses a state source."""

import json

import pytest
import torch

from coworld.algos.coworld import StateSourceAgent, state_alignment_hook
from coworld.cli import main
from coworld.config import load_config
from coworld.data.replay import Replay
from coworld.nets import WorldModel
from tests.run.test_cotrain import CO_SMALL
from tests.run.test_resume import SMALL

STATE = 'coworld.source_options={obs = "state"}'


def test_replay_samples_the_extra_state_key_and_refuses_episodes_without_it(target_data, tmp_path):
    replay = Replay(target_data, extra_keys=("state",), cache_dir=tmp_path)
    batch = replay.sample(3, 5)
    assert batch["state"].shape == (3, 5, 6) and batch["state"].dtype == torch.float32
    assert "state" not in Replay(target_data, cache_dir=tmp_path).sample(1, 2)  # default keys unchanged
    ep = next(iter(Replay(target_data, cache_dir=tmp_path).episodes()))  # (no state key)
    online = Replay(None, readonly=False, extra_keys=("state",))
    with pytest.raises(Exception, match="state"):
        online.add_episode(ep)


def test_source_options_apply_to_the_source_envs_only():
    from coworld.run.cotrain import source_config, state_source

    cfg = load_config("tiny", ["env.options={zoom = 1.5}", 'coworld.source_options={obs = "state", reward = "sparse"}'])
    src = source_config(cfg)
    assert src.env.options == {"zoom": 1.5, "obs": "state", "reward": "sparse"} and state_source(cfg)
    assert cfg.env.options == {"zoom": 1.5}  # the run's own (target) options are untouched
    plain = load_config("tiny")
    assert source_config(plain) is plain and not state_source(plain)


def test_state_world_model_and_image_model_keys():
    cfg = load_config("tiny", [s for s in SMALL if s.startswith("model.")])
    image, state = WorldModel(cfg, 2), WorldModel(cfg, 2, state_dim=6)
    # the image model is unchanged (saved checkpoints load): conv encoder, transposed-conv decoder
    assert image.obs_key == "image" and "encoder.net.0.weight" in image.state_dict()
    assert image.state_dict()["encoder.net.0.weight"].dim() == 4
    assert state.obs_key == "state" and state.encoder.out_dim == image.encoder.out_dim and state.feat_dim == image.feat_dim
    B, L = 2, 4
    first = torch.zeros(B, L, dtype=torch.bool)
    first[:, 0] = True
    batch = {"state": torch.randn(B, L, 6), "action": torch.zeros(B, L, 2), "reward": torch.zeros(B, L),
             "discount": torch.ones(B, L), "is_first": first}
    loss, out, metrics = state.loss(batch)
    assert torch.isfinite(loss) and "model/state_loss" in metrics and out["state"].shape == (B, L, 6)
    # the state loss is the unit-Gaussian NLL summed over the n state dims
    pred = state.decoder(out["feat"])
    nll = (0.5 * (batch["state"] - pred) ** 2 + 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1).mean()
    assert metrics["model/state_loss"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_state_source_stage_a_embeds_the_target_batch_states():
    cfg = load_config("tiny", [s for s in SMALL if s.startswith(("model.", "behaviour."))])
    source = StateSourceAgent(cfg, 2, 6)
    with pytest.raises(ValueError):
        state_alignment_hook(source, cfg)  # a state source without target states cannot align
    states = torch.randn(2, 3, 6)
    embed = torch.randn(2, 3, source.wm.encoder.out_dim, requires_grad=True)
    loss, _ = state_alignment_hook(source, cfg, states)({"embed": embed})
    loss.backward()
    assert loss.item() > 0 and embed.grad.abs().sum() > 0
    assert all(p.grad is None for p in source.wm.parameters())


def sets(*extra):
    return sum((["--set", s] for s in [*SMALL, *CO_SMALL, "train.log_every=1", *extra]), [])


def coworld_run(logdir, target_data, *extra, algo="coworld"):
    return main(["train", "--algo", algo, "--source", "builtin:reach-src", "--target-dataset", str(target_data),
                 "--target-env", "builtin:reach", "--steps", "80", "--logdir", str(logdir), "--no-progress",
                 "--preset", "tiny", *sets(STATE, *extra)])


def metrics(logdir):
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_state_source_trains_through_every_stage_with_a_and_b_and_c(tmp_path, target_data, capsys):
    logdir = tmp_path / "state"
    assert coworld_run(logdir, target_data) == 0
    out = capsys.readouterr().out
    assert "stages A and B read the target dataset's recorded states (6 dims" in out
    schedule = json.loads((logdir / "schedule.json").read_text())
    assert {p["kind"] for p in schedule} == {"prefill", "source", "target_wm", "target"}
    assert all(p["updates"] >= 1 for p in schedule if p["kind"] != "prefill"), schedule
    lines = metrics(logdir)
    keys = {k for r in lines for k in r}
    assert "source0/model/state_loss" in keys and "source0/model/image_loss" not in keys  # the source reads states
    assert "target/model/image_loss" in keys
    assert "target/coworld/align_loss" in keys  # A (world-model warm-up and target blocks)
    assert "source0/coworld/reward_nll_target" in keys  # B
    assert "target/coworld/value_constraint" in keys  # C
    # the saved source agent is a state model, the target an image model
    state = torch.load(logdir / "checkpoint.pt", weights_only=True)
    assert state["source0_agent"]["wm"]["encoder.net.0.0.weight"].shape[1] == 6
    assert state["target_agent"]["wm"]["encoder.net.0.weight"].dim() == 4
    assert main(["eval", str(logdir), "--episodes", "1"]) == 0


@pytest.mark.slow
def test_state_source_without_target_states_switches_a_and_b_off_with_a_note(tmp_path, target_data, capsys):
    logdir = tmp_path / "nostates"
    assert coworld_run(logdir, target_data, "coworld.target_states=false") == 0
    assert "stages A and B are OFF: coworld.target_states is false" in capsys.readouterr().out
    keys = {k for r in metrics(logdir) for k in r}
    assert "target/coworld/align_loss" not in keys and "source0/coworld/reward_nll_target" not in keys
    assert "target/coworld/value_constraint" in keys and "source0/model/state_loss" in keys


@pytest.mark.parametrize("algo", ["dv2-finetune", "dv2-finetune-ewc", "lompo-finetune"])
def test_finetune_refuses_a_state_source(tmp_path, target_data, capsys, algo):
    assert coworld_run(tmp_path / algo, target_data, algo=algo) == 2
    err = capsys.readouterr().err
    assert "cannot use a state-input source" in err and "source_options" in err
    assert {"dv2-finetune": "DV2 Finetune,", "dv2-finetune-ewc": "DV2 Finetune + EWC",
            "lompo-finetune": "LOMPO Finetune"}[algo] in err


def test_several_state_sources_without_target_states_are_refused(tmp_path, target_data, capsys):
    code = main(["train", "--algo", "coworld", "--source", "builtin:reach-src", "--source", "builtin:push-src",
                 "--target-dataset", str(target_data), "--steps", "80", "--logdir", str(tmp_path / "m"),
                 "--no-progress", "--preset", "tiny", *sets(STATE, "coworld.target_states=false")])
    assert code == 2 and "give one --source" in capsys.readouterr().err


@pytest.mark.slow
def test_state_source_run_resumes_bit_identically_after_kill9(tmp_path, target_data):
    import signal

    from tests.run.test_resume import assert_same_state, run, run_and_kill

    algo = ["--algo", "coworld", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--target-env", "builtin:reach"]
    sets = [*SMALL, *CO_SMALL, STATE]
    run(tmp_path / "ref", 80, algo, sets)
    killed = run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=4, sets=sets)
    assert killed.returncode == -signal.SIGKILL
    run(tmp_path / "cut", 80, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
