"""The algorithm registry: the CLI reads it, and a new algorithm is one agent plus one entry.

The dummy algorithm below is a model-free agent (behaviour cloning of the dataset's actions from
a downsampled image, no world model, no critic). Adding it took this file only: its agent class
and one registry entry; it trains through the same offline loop and evaluates like the others.
"""

import numpy as np
import pytest
import torch

import coworld
from coworld.algos.protocol import Agent
from coworld.cli import build_parser, main
from coworld.data.make import make_dataset
from coworld.errors import UserError
from coworld.run import registry


class CloneAgent:
    """Linear behaviour cloning on an 8x8 grey thumbnail."""

    def __init__(self, cfg, action_dim, device="cpu"):
        self.action_dim, self.updates = action_dim, 0
        self.net = torch.nn.Linear(64, action_dim)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)

    @staticmethod
    def features(image):
        grey = torch.as_tensor(image).float().mean(-1) / 255.0  # (..., 64, 64)
        return torch.nn.functional.avg_pool2d(grey.reshape(-1, 1, 64, 64), 8).reshape(*grey.shape[:-2], 64)

    def update(self, batch):
        loss = ((torch.tanh(self.net(self.features(batch["image"]))) - batch["action"]) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.updates += 1
        return {"bc/loss": loss.detach()}

    def initial_policy_state(self, n):
        return None

    @torch.no_grad()
    def act(self, obs, state, is_first, explore):
        return torch.tanh(self.net(self.features(obs["image"]))).numpy().astype(np.float32), None

    def checkpoint_state(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "updates": self.updates}

    def load_checkpoint_state(self, d):
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.updates = int(d["updates"])


CLONE = registry.Algorithm(
    "clone", "behaviour cloning (test dummy)", "gradient updates", "update", ("dataset",), ("env",),
    train=registry.ALGORITHMS["offline-dv2"].train, policy=registry.ALGORITHMS["offline-dv2"].policy,
    make_agent=CloneAgent)


def test_cli_choices_and_help_come_from_the_registry(capsys):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert train._option_string_actions["--algo"].choices == registry.names()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for algo in registry.ALGORITHMS.values():
        assert f"{algo.name}: {algo.summary}; --steps counts {algo.unit}" in out
    with pytest.raises(UserError, match="did you mean offline-dv2"):
        registry.get("offline-dv3")


def test_a_dummy_model_free_algorithm_trains_and_evaluates_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.ALGORITHMS, "clone", CLONE)
    data = tmp_path / "data"
    make_dataset("builtin:reach", "random", 3, data, seed=0, time_limit=15)
    assert isinstance(CloneAgent(None, 2), Agent)
    sets = ["train.batch=4", "train.length=8", "train.eval_every=5", "train.eval_episodes=2", "env.time_limit=15",
            "train.checkpoint_every=5"]
    result = coworld.train("clone", tmp_path / "run", 10, dataset=data, env="builtin:reach", overrides=sets)
    assert result["exit_code"] == 0 and len(result["final_returns"]) == 2
    out = coworld.evaluate(tmp_path / "run", episodes=3)
    assert out["updates"] == 10 and len(out["returns"]) == 3 and out["env"] == "builtin:reach"
    # resuming a finished run trains nothing; a larger --steps extends it
    assert coworld.train("clone", tmp_path / "run", 10, dataset=data, env="builtin:reach", overrides=sets)["finished"]
    coworld.train("clone", tmp_path / "run", 15, dataset=data, env="builtin:reach", overrides=sets)
    assert coworld.evaluate(tmp_path / "run", episodes=1)["updates"] == 15


def test_train_refuses_missing_and_foreign_inputs(tmp_path):
    with pytest.raises(UserError, match="needs --dataset"):
        coworld.train("offline-dv2", tmp_path / "a", 5, env="builtin:reach")
    with pytest.raises(UserError, match="does not take --source"):
        coworld.train("offline-dv2", tmp_path / "b", 5, dataset=tmp_path, source="builtin:reach-src")
    with pytest.raises(UserError, match="no such run"):
        coworld.evaluate(tmp_path / "nothing")


@pytest.mark.parametrize("algo", ["dv2-finetune", "dv2-finetune-ewc", "lompo-finetune", "multitask-dv2"])
def test_single_source_methods_refuse_several_sources(algo, tmp_path):
    """One agent pretrained in one source (or one shared model): a second --source would be ignored."""
    assert registry.get(algo).one_source and not registry.get("coworld").one_source
    with pytest.raises(UserError, match="exactly one --source"):
        coworld.train(algo, tmp_path / "a", 5, source=["builtin:reach-src", "builtin:reach-src"],
                      target_dataset=tmp_path)
