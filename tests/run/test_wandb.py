"""The optional Weights & Biases logger, with a fake ``wandb`` module (no network): off by default and
never imported then; a clear error when switched on without the package; when on, a run's scalars
reach it, and a resumed run continues the same W&B run."""

import sys
import types

import pytest

from coworld import train
from coworld.config import load_config
from coworld.data.make import make_dataset
from coworld.errors import MissingDependency
from coworld.run.logger import WANDB_ID, Logger, wandb_settings

SMALL = ["model.depth=4", "model.stoch=4", "model.deter=16", "model.hidden=16", "model.units=16",
         "behaviour.actor_units=16", "behaviour.critic_units=16", "behaviour.horizon=3", "train.batch=2",
         "train.length=6", "train.log_every=5", "train.checkpoint_every=10", "train.eval_every=1000",
         "train.threads=1", "model.ensemble=2"]


class FakeRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("wb") / "ds"
    make_dataset("builtin:reach", "medium-replay", 3, out, seed=0, time_limit=30)
    return out


def test_off_by_default_and_never_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now fail
    assert wandb_settings(load_config("tiny")) is None
    log = Logger(tmp_path, total=10, progress=False, tensorboard=False)
    log.scalars(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / WANDB_ID).exists()


def test_switched_on_without_wandb_is_a_clear_error(tmp_path, monkeypatch, dataset):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependency, match=r"pip install 'coworld\[wandb\]'"):
        train("offline-dv2", tmp_path / "run", 5, dataset=dataset, overrides=SMALL + ["train.wandb=true"])


def test_scalars_reach_wandb_and_resume_keeps_the_run(tmp_path, fake_wandb, dataset):
    run = tmp_path / "run"
    sets = SMALL + ["train.wandb=true", "train.wandb_project=proj", "train.wandb_group=grp"]
    train("offline-dv2", run, 20, dataset=dataset, overrides=sets)
    (first,) = fake_wandb.runs
    kw = first.kwargs
    assert kw["project"] == "proj" and kw["group"] == "grp" and kw["name"] == "run" and kw["resume"] == "allow"
    assert kw["id"] == (run / WANDB_ID).read_text().strip() and kw["config"]["train"]["wandb_group"] == "grp"
    steps = [s for s, _ in first.logged]
    assert steps == sorted(steps) and 20 in steps and 5 in steps
    assert any("loss" in k or "model" in k for _, v in first.logged for k in v)
    assert first.finished
    train("offline-dv2", run, 30, dataset=dataset, overrides=sets)  # extend: a second segment
    second = fake_wandb.runs[1]
    assert second.kwargs["id"] == kw["id"]  # the same W&B run continues
    assert min(s for s, _ in second.logged) > 20 and second.finished


def test_sweep_with_wandb_missing_fails_before_any_trial(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from coworld.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    builtin = Path(__file__).resolve().parents[2] / "experiments" / "builtin.toml"
    code = main(["sweep", str(builtin), "--wandb", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "d")])
    assert code == 2 and "pip install 'coworld[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "d").exists()


def test_sweep_with_wandb_groups_trials_by_experiment(tmp_path, fake_wandb, monkeypatch):
    from pathlib import Path

    from coworld.cli import main
    from coworld.run import sweep
    from coworld.run.experiment import expand

    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda experiment, out, **kw: seen.append(expand(experiment)) or
                        {"failed": {}, "trials": 0})

    builtin = Path(__file__).resolve().parents[2] / "experiments" / "builtin.toml"
    assert main(["sweep", str(builtin), "--wandb", "proj", "--out", str(tmp_path / "o"), "--data", str(tmp_path)]) == 0
    for t in seen[0]:
        assert {"train.wandb=true", "train.wandb_project=proj", "train.wandb_group=builtin"} <= set(t["overrides"])
