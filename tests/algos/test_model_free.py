"""The model-free pixel baselines (DrQ+BC, CQL, CURL): their distinctive losses against hand-computed
values, the shared input pipeline (random shift, frame stacks, n-step targets across episode starts),
and training, evaluation and resume through the registry."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import coworld
from coworld.algos.model_free import (AGENTS, cql_term, infonce_bilinear, linear_schedule, nstep_return,
                                      squashed_logp, td3bc_actor_loss)
from coworld.config import load_config
from coworld.data.make import make_dataset
from coworld.data.replay import Replay
from coworld.errors import UserError
from coworld.nets.pixel import push_frame, random_shift, shift_crop, stack_frames
from coworld.run.checkpoint import load_checkpoint

SMALL = ["modelfree.filters=4", "modelfree.conv_layers=2", "modelfree.feature_dim=8", "modelfree.hidden=16",
         "modelfree.cql_samples=3", "train.batch=3", "train.length=5", "modelfree.nstep=2"]


# ------------------------------------------------------------------------------------ input pipeline


def test_shift_crop_moves_a_known_image_with_replicated_border():
    x = torch.arange(16).reshape(1, 1, 4, 4)
    out = shift_crop(x, torch.tensor([0]), torch.tensor([2]), pad=1)  # right by 1, up by 1
    assert out.dtype == x.dtype
    assert out[0, 0].tolist() == [[4, 4, 5, 6], [8, 8, 9, 10], [12, 12, 13, 14], [12, 12, 13, 14]]
    assert torch.equal(shift_crop(x, torch.tensor([1]), torch.tensor([1]), pad=1), x)  # centre = no move


def test_random_shift_equals_drq_bilinear_grid_at_integer_offsets():
    """DrQ's formulation (replicate pad, grid_sample at pixel centres) gives the same images."""
    torch.manual_seed(0)
    x = torch.rand(5, 6, 8, 8) * 255
    pad, n, h = 2, 5, 8
    torch.manual_seed(1)
    ours = random_shift(x, pad)
    torch.manual_seed(1)
    d = torch.randint(0, 2 * pad + 1, (2, n))
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    ar = torch.linspace(-1 + eps, 1 - eps, h + 2 * pad)[:h]
    grid = torch.stack([ar[None, :].expand(h, h), ar[:, None].expand(h, h)], -1)[None].repeat(n, 1, 1, 1)
    grid = grid + torch.stack([d[0], d[1]], -1).float()[:, None, None, :] * 2.0 / (h + 2 * pad)
    drq = F.grid_sample(padded, grid, padding_mode="zeros", align_corners=False)
    assert torch.allclose(ours.float(), drq, atol=1e-3)
    assert not torch.equal(ours, x)


def test_frame_stacks_never_cross_an_episode_start():
    # one window of 6 frames; frame t is filled with the value t; a new episode starts at position 3
    image = torch.arange(6, dtype=torch.uint8)[None, :, None, None, None].expand(1, 6, 2, 2, 3).contiguous()
    is_first = torch.tensor([[True, False, False, True, False, False]])
    out = stack_frames(image, is_first, torch.tensor([[2, 3, 4, 5]]), k=3)
    assert out.shape == (1, 4, 9, 2, 2)
    frames = out[0, :, ::3, 0, 0].tolist()  # the first channel of each stacked frame, oldest first
    assert frames == [[0, 1, 2], [3, 3, 3], [3, 3, 4], [3, 4, 5]]
    # acting: the stack is filled with the first frame of every episode
    stack = None
    seen = []
    for t, first in enumerate([True, False, False, True, False]):
        frame = torch.full((1, 2, 2, 3), t, dtype=torch.uint8)
        stack = push_frame(stack, frame, torch.tensor([first]), 3)
        seen.append(stack[0, :, 0, 0, 0].tolist())
    assert seen == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [3, 3, 4]]


def test_nstep_return_by_hand():
    gamma = 0.5
    reward = torch.tensor([[0.0, 1.0, 2.0, 4.0, 8.0]] * 3)
    discount = torch.ones(3, 5)
    discount[1, 2] = 0.0  # row 1: terminal at position 2
    is_first = torch.zeros(3, 5, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[2, 2] = True  # row 2: another episode starts at position 2
    ret, boot, disc, valid = nstep_return(reward, discount, is_first, torch.tensor([0, 2]), 2, gamma)
    # row 0: t0=0: 1 + 0.5 * 2 = 2, bootstrap at 2 with 0.25; t0=2: 4 + 0.5 * 8 = 8 at 4
    assert ret[0].tolist() == [2.0, 8.0] and boot[0].tolist() == [2, 4] and disc[0].tolist() == [0.25, 0.25]
    # row 1: the terminal step's reward counts, nothing after it (bootstrap discount 0)
    assert ret[1].tolist() == [2.0, 8.0] and disc[1].tolist() == [0.0, 0.25]
    # row 2: t0=0 stops before the new episode: 1 step, bootstrap at 1 with gamma; t0=2 is unaffected
    assert ret[2].tolist() == [1.0, 8.0] and boot[2].tolist() == [1, 4] and disc[2].tolist() == [0.5, 0.25]
    assert valid.tolist() == [[1.0, 1.0]] * 3
    # a state at the last entry of an episode has no transition in the window
    is_first[2, 1] = True
    assert nstep_return(reward, discount, is_first, torch.tensor([0]), 2, gamma)[3][2].item() == 0.0


def test_linear_schedule():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 500) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------ distinctive losses


def test_td3bc_actor_loss_by_hand():
    q = torch.tensor([1.0, -3.0])
    action, data = torch.tensor([[0.5], [0.0]]), torch.tensor([[0.0], [1.0]])
    loss, lam = td3bc_actor_loss(q, action, data, alpha=2.5, w=torch.ones(2))
    # lambda = 2.5 / mean|Q| = 2.5 / 2; -lambda * mean Q = 1.25; MSE = (0.25 + 1) / 2
    assert lam.item() == pytest.approx(1.25)
    assert loss.item() == pytest.approx(1.25 + 0.625)
    # an invalid transition (w = 0) is left out of every mean
    loss, lam = td3bc_actor_loss(torch.tensor([1.0, -3.0, 100.0]), torch.tensor([[0.5], [0.0], [1.0]]),
                                 torch.tensor([[0.0], [1.0], [-1.0]]), 2.5, torch.tensor([1.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx(1.875)


def test_cql_conservative_term_by_hand():
    q_rand, q_next, q_cur = torch.tensor([[0.0, math.log(2)]]), torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    logp_next, logp_cur = torch.tensor([[0.0, math.log(2)]]), torch.tensor([[math.log(3), 0.0]])
    w = torch.ones(1)
    # V-D4RL's default: log(1 + 2 + e^0 (data) + 1 + 1 + 3 + 1) - Q_data
    plain = cql_term(torch.tensor([0.0]), q_rand, q_cur, q_next, logp_cur, logp_next, 1, 1.0, False, w)
    assert plain.item() == pytest.approx(math.log(10))
    # importance sampled, A = 1: uniform density 0.5 doubles (1 + 2); policy samples divided by pi
    imp = cql_term(torch.tensor([1.0]), q_rand, q_cur, q_next, logp_cur, logp_next, 1, 1.0, True, w)
    assert imp.item() == pytest.approx(math.log(6 + (1 + 0.5) + (1 + 1)) - 1.0)
    # temperature: temp * logsumexp(Q / temp)
    hot = cql_term(torch.tensor([0.0]), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2),
                   torch.zeros(1, 2), 1, 2.0, False, w)
    assert hot.item() == pytest.approx(2 * math.log(7))


def test_curl_infonce_bilinear_by_hand():
    W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z_a, z_pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # logits = z_a W z_pos^T = [[2, 0], [1, 1]]; positives on the diagonal
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert infonce_bilinear(z_a, z_pos, W).item() == pytest.approx(expected)


def test_squashed_log_prob_matches_torch_tanh_transform():
    mean, std = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, 2.0]])
    u = torch.tensor([[0.1, 0.7]])
    dist = torch.distributions.TransformedDistribution(torch.distributions.Normal(mean, std),
                                                       [torch.distributions.TanhTransform()])
    assert squashed_logp(u, mean, std).item() == pytest.approx(dist.log_prob(torch.tanh(u)).sum().item(), rel=1e-5)


# ------------------------------------------------------------------------------------ agents


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mf") / "reach"
    make_dataset("builtin:reach", "random", 3, out, seed=0, time_limit=12)
    return out


def small_cfg(algo, extra=()):
    from coworld.run import registry

    return load_config("tiny", [*SMALL, *extra], defaults=registry.get(algo).defaults)


@pytest.mark.parametrize("algo", ["drqbc", "cql", "curl"])
def test_agent_updates_acts_and_restores_bit_exactly(algo, reach_data):
    cfg = small_cfg(algo)
    replay = Replay(reach_data, seed=0)
    torch.manual_seed(0)
    agent = AGENTS[algo](cfg, 2)
    for _ in range(3):
        metrics = agent.update(replay.sample(cfg.train.batch, cfg.train.length))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    assert agent.updates == 3
    key = {"drqbc": "actor/lambda", "cql": "critic/cql", "curl": "curl/loss"}[algo]
    assert key in metrics
    # a copy restored from the checkpoint state continues identically (same RNG state)
    buffer = io.BytesIO()
    torch.save(agent.checkpoint_state(), buffer)
    buffer.seek(0)
    twin = AGENTS[algo](cfg, 2)
    twin.load_checkpoint_state(torch.load(buffer, weights_only=True))
    batch = replay.sample(cfg.train.batch, cfg.train.length)
    rng = torch.get_rng_state()
    agent.update(batch)
    torch.set_rng_state(rng)
    twin.update(batch)
    for (name, a), b in zip(agent.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    # acting: deterministic without exploration; frame stack kept as the state
    obs = {"image": np.zeros((2, 64, 64, 3), np.uint8)}
    act, state = agent.act(obs, agent.initial_policy_state(2), np.array([True, True]), explore=False)
    assert act.shape == (2, 2) and act.dtype == np.float32 and np.all(np.abs(act) <= 1)
    again, state = agent.act(obs, state, np.array([False, False]), explore=False)
    assert np.array_equal(act, again) and state.shape == (2, 3, 64, 64, 3)
    # the critic's value of those states (the Fig. 5b measure): Q of the deterministic action
    h = agent.encoder(torch.as_tensor(np.zeros((2, 9, 64, 64), np.uint8)))
    q = torch.min(*agent.critic(h, torch.as_tensor(act)))
    assert np.allclose(agent.policy_value(state), q.detach().numpy(), atol=1e-5)


def test_short_windows_and_unsupported_speed_settings_are_refused(reach_data):
    with pytest.raises(UserError, match="train.length=4"):
        AGENTS["drqbc"](load_config("tiny", ["train.length=3"]), 2)
    with pytest.raises(UserError, match="train.amp"):
        AGENTS["cql"](load_config("tiny", ["train.amp=bf16"]), 2)
    for bad, message in (("modelfree.pad=-1", "modelfree.pad must be >= 0"),
                         ("modelfree.cql_temp=0", "modelfree.cql_temp must be positive"),
                         ("modelfree.gamma=1.5", "modelfree.gamma is a discount")):
        with pytest.raises(UserError, match=message):
            AGENTS["cql"](load_config("tiny", [bad]), 2)


def test_curl_preset_and_registry_defaults_agree():
    """--preset tiny takes CURL's SAC settings from the registry, the curl preset names them itself."""
    from coworld.run import registry

    tiny = load_config("tiny", defaults=registry.get("curl").defaults).modelfree
    full = load_config("curl").modelfree
    for key in registry.get("curl").defaults["modelfree"]:
        assert getattr(tiny, key) == getattr(full, key), key
    assert load_config("tiny", defaults=registry.get("drqbc").defaults).modelfree.actor == "drq"


TRAIN_SETS = [*SMALL, "train.eval_every=4", "train.eval_episodes=1", "env.time_limit=12", "train.checkpoint_every=3",
              "train.log_every=3", "train.threads=1"]


@pytest.mark.parametrize("algo", ["drqbc", "cql", "curl"])
def test_train_eval_and_extend_equals_one_longer_run(algo, reach_data, tmp_path):
    from tests.run.test_resume import assert_same_state

    kw = dict(dataset=reach_data, env="builtin:reach", overrides=TRAIN_SETS, seed=2, progress=False)
    result = coworld.train(algo, tmp_path / "long", 8, **kw)
    assert result["exit_code"] == 0 and len(result["final_returns"]) == 1
    out = coworld.evaluate(tmp_path / "long", episodes=2)
    assert out["updates"] == 8 and len(out["returns"]) == 2
    coworld.train(algo, tmp_path / "ext", 5, **kw)
    coworld.train(algo, tmp_path / "ext", 8, **kw)
    assert_same_state(tmp_path / "long", tmp_path / "ext")
    assert load_checkpoint(tmp_path / "ext")["agent"]["updates"] == 8


@pytest.mark.slow
def test_curl_kill9_and_sigterm_resume_bit_identical(reach_data, tmp_path):
    """CURL (the agent with the most state: key encoder, temperature, four optimizers) killed with -9
    and SIGTERM mid-run and re-run ends where an uninterrupted run ends."""
    import signal

    from tests.run.test_resume import assert_same_state, run, run_and_kill

    sets = [*SMALL, "train.checkpoint_every=4", "train.log_every=10", "train.eval_every=1000", "train.threads=1"]
    algo = ["--algo", "curl", "--dataset", str(reach_data)]
    run(tmp_path / "ref", 60, algo, sets)
    proc = run_and_kill(tmp_path / "cut", 60, algo, signal.SIGKILL, after_checkpoints=3, sets=sets)
    assert proc.returncode == -signal.SIGKILL
    proc = run_and_kill(tmp_path / "cut", 60, algo, signal.SIGTERM, after_checkpoints=3, sets=sets)
    assert proc.returncode in (0, 128 + signal.SIGTERM), proc.stderr[-2000:]
    run(tmp_path / "cut", 60, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
