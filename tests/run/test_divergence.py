"""A NaN/inf in training stops the run with exit code 2 and a message naming it, and the last good
checkpoint stays on disk: loadable, finite, from before the divergence, and resumable."""

import signal

import pytest
import torch

from coworld import cli
from coworld.algos.dreamer import DreamerAgent
from coworld.run.checkpoint import load_checkpoint
from tests.run.test_resume import SMALL

# Prefill 30 random steps, then 3 pretraining updates at step 30 and one update every 4 steps
# (32, 36, 40, 44, ...); checkpoints every 10 steps.
STEPS = 70


def train(logdir, *sets):
    args = ["train", "--algo", "dreamer", "--env", "builtin:reach", "--preset", "tiny", "--steps", str(STEPS),
            "--logdir", str(logdir), "--seed", "1", "--no-progress"]
    for item in SMALL + list(sets):
        args += ["--set", item]
    return cli.main(args)


def assert_default_signal_handlers():
    """A run traps SIGINT/SIGTERM while it trains; a diverged run gives them back too."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from tensors(v)


def assert_finite_agent(state):
    weights = [t for t in tensors(state["agent"]) if t.is_floating_point()]
    assert weights and all(torch.isfinite(t).all() for t in weights)


@pytest.mark.slow
def test_inf_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    original = DreamerAgent.update

    def update_going_inf(self, batch):
        metrics = original(self, batch)
        if self.updates > 6:  # the 7th update (at step 44) reports an infinite loss
            metrics["model/loss"] = torch.tensor(float("inf"))
        return metrics

    monkeypatch.setattr(DreamerAgent, "update", update_going_inf)
    assert train(tmp_path) == 2
    assert_default_signal_handlers()
    err = capsys.readouterr().err
    assert "model/loss" in err and "NaN/inf" in err and "last good checkpoint" in err
    state = load_checkpoint(tmp_path)
    assert state["collector"]["steps"] == 40 and state["agent"]["updates"] == 6  # the checkpoint before it
    assert_finite_agent(state)

    # The kept checkpoint is a working one: with the cause removed, the same command resumes and finishes.
    monkeypatch.setattr(DreamerAgent, "update", original)
    assert train(tmp_path) == 0
    state = load_checkpoint(tmp_path)
    assert state["collector"]["steps"] == STEPS and state["agent"]["updates"] > 6


@pytest.mark.slow
def test_exploding_learning_rate_is_caught(tmp_path, capsys):
    assert train(tmp_path, "model.lr=1e30") == 2
    assert_default_signal_handlers()
    assert "NaN/inf" in capsys.readouterr().err
    state = load_checkpoint(tmp_path)
    # Prefill checkpoints at 10 and 20; the first updates (step 30) diverge, so step 20's stays.
    assert state["collector"]["steps"] == 20 and state["agent"]["updates"] == 0
    assert_finite_agent(state)
