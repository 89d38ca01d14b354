"""train.compile: the compiled update equals the eager one (the reference) up to float rounding;
a failed compilation falls back to eager with one warning; a run keeps the mode it started with."""

import subprocess
import sys
import warnings

import pytest
import torch

import coworld.algos.dreamer as dreamer
from coworld.algos.coworld import ActionAdapter, reward_alignment_hook, state_alignment_hook, value_constraint_hook
from coworld.algos.dreamer import DreamerAgent
from coworld.algos.offline_dv2 import OfflineDV2Agent
from coworld.config import load_config
from coworld.run.bench import random_batch

SMALL = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.units=16",
    "behaviour.actor_units=16", "behaviour.critic_units=16", "behaviour.horizon=2",
    "train.batch=3", "train.length=4",
]
# Relative to the largest magnitude of each tensor, after two rounds of updates (six Adam steps per
# optimizer): the compiled graph sums in other orders, nothing else differs (same random numbers).
RTOL = 1e-4


def run_updates(compile: bool, extra=(), algo=DreamerAgent, plain=True):
    """Two rounds of: a source update (``plain``), a target update with stages A + C, a source
    world-model step with stage B (and, if ``plain``, its behaviour step)."""
    cfg = load_config("tiny", SMALL + [f"train.compile={str(compile).lower()}", *extra])
    torch.manual_seed(0)
    src, tgt = algo(cfg, 2), algo(cfg, 2)
    adapter = ActionAdapter(2, 2, "pad")
    data = torch.Generator().manual_seed(1)

    def batch():
        torch.manual_seed(int(torch.randint(1 << 30, (), generator=data)))
        b = random_batch(3, 4, 2, "cpu")
        b["is_first"][1, 2] = True  # a reset inside the window
        return b

    torch.manual_seed(5)
    for i in range(2):
        if plain:
            src.update(batch())  # source Dreamer update
        post, _ = tgt.world_model_step(batch(), extra_loss=state_alignment_hook(src, cfg))  # stage A
        tgt.behaviour_step(post, critic_extra=value_constraint_hook(src, cfg))  # stage C
        tgt.finish_update()
        hook = reward_alignment_hook(src, batch(), 0.9 - 0.1 * i, cfg, adapter)  # stage B
        post, _ = src.world_model_step(batch(), extra_loss=hook)
        if plain:
            src.behaviour_step(post)
        src.finish_update()
    return {"src": src.checkpoint_state(), "tgt": tgt.checkpoint_state(), "rng": torch.get_rng_state()}


def assert_close(a, b, path=""):
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.uint8 or not a.is_floating_point():
            assert torch.equal(a, b), path
        else:
            scale = a.abs().max().clamp(min=1e-12)
            assert ((a - b).abs().max() / scale).item() <= RTOL, path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_compiled_updates_match_eager():
    """Target update with stages A + C, source world-model step with stage B: compiled vs eager from
    the same initial state, batches and random generator; the random stream is consumed identically
    (equal generator states at the end). Three graphs (the plain updates are these without hooks):
    with an empty inductor cache about a minute of C++ compilation each on a loaded 2-core machine,
    seconds once cached."""
    eager = run_updates(False, plain=False)
    compiled = run_updates(True, plain=False)
    assert_close(eager, compiled)


def test_failed_compilation_falls_back_to_eager_once(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no working C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setitem(dreamer._compile_state, "failed", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = run_updates(True)
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "no working C++ compiler" in messages[0]
    monkeypatch.setitem(dreamer._compile_state, "failed", False)
    eager = run_updates(False)
    # the failed attempt consumed no random numbers: the fallback is the eager run, bit for bit
    assert_close(eager, fallback)
    for key in ("src", "tgt"):
        for name, value in eager[key]["wm"].items():
            assert torch.equal(value, fallback[key]["wm"][name]), name


def test_offline_dv2_eager_head_choice_matches_tensor_selection():
    """The compiled path selects the ensemble member with a tensor index; it gives what indexing
    the module list gives."""
    cfg = load_config("tiny", SMALL + ["model.ensemble=3"])
    agent = OfflineDV2Agent(cfg, 2)
    rssm = agent.wm.rssm
    deter = torch.randn(4, 16)
    for head in range(3):
        assert torch.equal(rssm._select_head(deter, torch.tensor(head)), rssm.prior_heads[head](deter))


def test_resuming_in_the_other_compile_mode_is_refused(tmp_path):
    sets = SMALL + ["train.prefill=20", "train.pretrain=1", "train.train_every=10", "train.checkpoint_every=10",
                    "train.log_every=10", "train.eval_every=1000", "train.threads=1", "env.time_limit=10"]

    def command(*extra):
        args = [sys.executable, "-m", "coworld", "train", "--algo", "dreamer", "--env", "builtin:reach",
                "--preset", "tiny", "--steps", "30", "--logdir", str(tmp_path), "--no-progress"]
        for item in sets + list(extra):
            args += ["--set", item]
        return subprocess.run(args, capture_output=True, text=True, timeout=300)

    first = command("train.compile=false")
    assert first.returncode == 0, first.stderr[-2000:]
    assert '"compile": false' in (tmp_path / "config.json").read_text()
    other = command("train.compile=true")
    assert other.returncode != 0
    assert "train.compile=true" in other.stderr and "other settings" in other.stderr
