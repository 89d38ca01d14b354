"""Collection: SAC parts, reference scores, a tiny sac-state collection that stops at its level,
resuming, the command, training Offline DV2 on the result, and a short DMC run."""

import numpy as np
import pytest
import torch

from coworld import envs
from coworld.cli import main
from coworld.algos.sac import SAC
from coworld.run.collect import TransitionBuffer, collect_dataset, resolve_reference_score, working_dir
from coworld.data.episodes import list_episode_files, load_episode, read_sidecar
from coworld.data.replay import Replay
from coworld.data.validate import validate_directory
from coworld.errors import UserError
from coworld.run.checkpoint import load_checkpoint

TINY_SAC = {"prefill": 100, "batch": 32, "hidden": 32}


def test_sac_log_prob_matches_change_of_variables():
    sac = SAC(3, 2, hidden=8)
    state = torch.randn(5, 3)
    torch.manual_seed(1)
    action, logp = sac.policy(state)
    torch.manual_seed(1)
    mean, log_std = sac.actor(state).chunk(2, -1)
    std = (-5 + 3.5 * (torch.tanh(log_std) + 1)).exp()
    u = torch.distributions.Normal(mean, std).rsample()
    expected = torch.distributions.Normal(mean, std).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-4)


def test_sac_learns_a_bandit():
    """One-step episodes, reward -|a - 0.5|: the actor's mean action moves to 0.5."""
    torch.manual_seed(0)
    sac = SAC(1, 1, hidden=32, lr=3e-3)
    s = torch.zeros(256, 1)
    for _ in range(300):
        a = torch.rand(256, 1) * 2 - 1
        sac.update(s, a, -(a[:, 0] - 0.5).abs(), s, torch.ones(256))
    with torch.no_grad():
        action, _ = sac.policy(torch.zeros(1, 1), explore=False)
    assert abs(action.item() - 0.5) < 0.15


def test_transition_buffer_pairs_state_with_next_state():
    from tests.data.conftest import make_episode as episode

    ep = episode(4)
    ep["state"] = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    ep["is_terminal"][-1] = True
    buf = TransitionBuffer(0)
    buf.add_episode(ep)
    buf.add_episode(ep)
    assert buf.size == 8
    s, a, r, s2, term = buf.sample(64)
    torch.testing.assert_close(s2[:, 0], s[:, 0] + 1)  # s' follows s
    torch.testing.assert_close(r, 100 * 0 + s[:, 0] + 1)  # reward[t + 1] = t + 1 comes with s' = state[t + 1]
    assert torch.equal(term, (s2[:, 0] == 4).float())


def test_reference_scores():
    expert = envs.spec("builtin:reach").expert_score
    assert resolve_reference_score("builtin:reach", {}, None) == (expert, "env spec expert_score (scripted expert)")
    assert resolve_reference_score("builtin:reach", {}, 7.0) == (7.0, "--reference-score")
    score, source = resolve_reference_score("dmc:walker_downhill", {})
    assert score == 1000.0 and "DMC" in source
    assert resolve_reference_score("dmc:walker_downhill", {"time_limit": 50})[0] == 100.0
    short, source = resolve_reference_score("builtin:reach", {"time_limit": 20})
    assert 0 < short < 188 and "scripted" in source
    with pytest.raises(UserError, match="--reference-score"):
        resolve_reference_score("metaworld:door-close", {})


def test_collect_tiny_reach_stops_at_level_and_trains_offline_dv2(tmp_path):
    out = tmp_path / "reach"
    side = collect_dataset("builtin:reach", "medium-replay", out, reference_score=16.0, seed=0, max_steps=3000,
                           eval_every=200, time_limit=20, learner_options=TINY_SAC)
    made = side["collection"]
    assert made["status"] == "complete" and made["collector"] == "sac-state" and made["level"] == "medium-replay"
    assert made["target_return"] == 8.0 and made["reference_source"] == "--reference-score"
    # stopped at the first evaluation that reached the target, and every earlier one fell short
    assert made["evaluations"][-1][1] >= 8.0 and all(r < 8.0 for _, r in made["evaluations"][:-1])
    assert made["reached_at_step"] == made["steps"] == side["counts"]["steps"] < 3000
    assert not (out / ".collect").exists()
    assert validate_directory(out) == []
    ep = load_episode(list_episode_files(out)[-1])
    assert ep["image"].shape == (21, 64, 64, 3) and ep["image"].std() > 0 and ep["state"].shape == (21, 6)

    # a finished collection is not redone
    assert collect_dataset("builtin:reach", "medium-replay", out, reference_score=16.0, seed=0, max_steps=3000,
                           eval_every=200, time_limit=20, learner_options=TINY_SAC)["collection"]["steps"] == made["steps"]

    from coworld.algos.offline_dv2 import OfflineDV2Agent
    from coworld.config import load_config

    cfg = load_config("tiny", ["model.ensemble=2", "train.offline_penalty=1.0", "train.batch=2", "train.length=8"])
    agent = OfflineDV2Agent(cfg, action_dim=2, device="cpu")
    replay = Replay(out, seed=0)
    for _ in range(2):
        metrics = agent.update(replay.sample(2, 8))
    assert agent.updates == 2 and all(np.isfinite(float(v)) for v in metrics.values() if np.ndim(v) == 0)


def test_collect_resumes_bit_for_bit(tmp_path):
    kwargs = dict(reference_score=1e6, seed=3, eval_every=100, time_limit=20, learner_options=TINY_SAC)
    collect_dataset("builtin:reach", "medium-expert", tmp_path / "once", max_steps=300, **kwargs)
    first = collect_dataset("builtin:reach", "medium-expert", tmp_path / "twice", max_steps=160, **kwargs)
    assert first["collection"]["status"] == "max-steps" and (tmp_path / "twice" / ".collect").exists()
    with pytest.raises(UserError, match="same settings"):
        collect_dataset("builtin:reach", "medium-expert", tmp_path / "twice", max_steps=300,
                        **{**kwargs, "seed": 4})
    side = collect_dataset("builtin:reach", "medium-expert", tmp_path / "twice", max_steps=300, **kwargs)
    once = read_sidecar(tmp_path / "once")["collection"]
    assert side["collection"]["evaluations"] == once["evaluations"] and side["counts"]["steps"] == 300
    a, b = list_episode_files(tmp_path / "once"), list_episode_files(tmp_path / "twice")
    assert len(a) == len(b) == 15
    for fa, fb in zip(a, b):
        ea, eb = load_episode(fa), load_episode(fb)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)


def test_collect_resumes_after_a_crash_mid_episode(tmp_path, monkeypatch):
    """Killed at step 100 with the last checkpoint at step 50 (mid-episode): the rerun deletes the
    episodes written after it, replays the partial episode and ends as an uninterrupted run."""
    import coworld.run.collect as collect_mod

    kwargs = dict(reference_score=1e6, seed=1, eval_every=100, time_limit=20, max_steps=200, checkpoint_every=50,
                  learner_options=TINY_SAC)
    collect_dataset("builtin:reach", "medium-replay", tmp_path / "once", **kwargs)

    def crash(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_mod, "evaluate", crash)
    with pytest.raises(KeyboardInterrupt):
        collect_dataset("builtin:reach", "medium-replay", tmp_path / "twice", **kwargs)
    # the unfinished collection lives beside --out; nothing at --out looks like a dataset meanwhile
    assert not (tmp_path / "twice").exists()
    assert "not a directory" in validate_directory(tmp_path / "twice")[0].message
    assert len(list_episode_files(working_dir(tmp_path / "twice"))) == 5  # 100 steps written, checkpoint at 50
    monkeypatch.undo()
    collect_dataset("builtin:reach", "medium-replay", tmp_path / "twice", **kwargs)
    a, b = list_episode_files(tmp_path / "once"), list_episode_files(tmp_path / "twice")
    assert len(a) == len(b) == 10 and validate_directory(tmp_path / "twice") == []
    assert not working_dir(tmp_path / "twice").exists()
    for fa, fb in zip(a, b):
        ea, eb = load_episode(fa), load_episode(fb)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)


def test_collect_with_dreamer(tmp_path):
    """The paper's collector (pixel DreamerV2) through the same loop, on a tiny config."""
    overrides = ["train.prefill=20", "train.pretrain=1", "train.train_every=10", "train.batch=2", "train.length=8"]
    side = collect_dataset("builtin:reach", "medium-replay", tmp_path / "d", collector="dreamer", preset="tiny",
                           overrides=overrides, reference_score=1e6, max_steps=40, eval_every=20, eval_episodes=1,
                           time_limit=10, device="cpu")
    made = side["collection"]
    assert made["collector"] == "dreamer" and made["status"] == "max-steps" and made["steps"] == 40
    assert [s for s, _ in made["evaluations"]] == [20, 40] and made["learner"]["preset"] == "tiny"
    assert validate_directory(tmp_path / "d") == [] and side["counts"]["episodes"] == 4


def test_collect_command(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["data", "collect", "--env", "builtin:reach", "--level", "medium-replay", "--out", str(out),
                 "--reference-score", "1", "--max-steps", "200", "--time-limit", "10", "--eval-every", "100"])
    assert code == 0
    assert "complete:" in capsys.readouterr().out
    made = read_sidecar(out)["collection"]
    assert made["collector"] == "sac-state" and made["evaluations"][0][0] == 100


@pytest.mark.dmc
@pytest.mark.slow
def test_collect_dmc_walker_downhill_sac_state(tmp_path):
    pytest.importorskip("dm_control")
    out = tmp_path / "walker"
    side = collect_dataset("dmc:walker_downhill", "medium-replay", out, reference_score=1.0, seed=0,
                           max_steps=150, eval_every=100, eval_episodes=1, time_limit=50,
                           learner_options={"prefill": 50, "batch": 32, "hidden": 64})
    made = side["collection"]
    assert made["env"] == "dmc:walker_downhill" and made["env_options"] == {"time_limit": 50}
    assert side["counts"]["episodes"] in (2, 3) and validate_directory(out) == []
    ep = load_episode(list_episode_files(out)[0])
    assert ep["image"].shape == (51, 64, 64, 3) and ep["image"].std() > 5 and ep["state"].shape == (51, 24)
    assert ep["action"].shape == (51, 6)
    # ... and Offline DV2 trains on it (no environment: offline diagnostics only)
    sets = ["model.ensemble=2", "model.depth=4", "model.deter=16", "model.hidden=16", "train.batch=2",
            "train.length=8", "train.threads=1"]
    args = ["train", "--algo", "offline-dv2", "--dataset", str(out), "--steps", "3", "--logdir",
            str(tmp_path / "odv2"), "--no-progress"] + sum((["--set", s] for s in sets), [])
    assert main(args) == 0
    assert load_checkpoint(tmp_path / "odv2")["agent"]["updates"] == 3
