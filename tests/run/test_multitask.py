"""Multi-Task DV2 runs (docs/algorithms.md#multi-task-dv2): CoWorld's schedule and budget, logs per
agent, `coworld eval` on its run directory, kill -9 resume bit-identical, input checks."""

import json
import signal

import pytest

from coworld.cli import main
from coworld.config import load_config
from coworld.run.cotrain import build_schedule
from coworld.run.registry import get
from tests.run.test_cotrain import CO_SMALL
from tests.run.test_resume import SMALL, assert_same_state, run, run_and_kill


def mt_args(target_data):
    # reach-src has 3-D actions, reach 2-D: the shared model reads 3 + 2 (indicator) inputs
    return ["--algo", "multitask-dv2", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--target-env", "builtin:reach"]


def test_registered_for_train_eval_and_demo():
    entry = get("multitask-dv2")
    assert entry.demo == "Multi-Task DV2" and entry.needs == ("source", "target_dataset")
    assert entry.optional == ("target_env",) and not entry.extendable


def test_takes_exactly_one_source(tmp_path, target_data, capsys):
    code = main(["train", *mt_args(target_data), "--source", "builtin:push-src", "--steps", "10",
                 "--logdir", str(tmp_path / "two"), "--no-progress"])
    assert code == 2 and "exactly one --source" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()  # refused before anything is written


def test_state_input_source_refused(tmp_path, target_data, capsys):
    code = main(["train", *mt_args(target_data), "--steps", "10", "--logdir", str(tmp_path / "state"),
                 "--no-progress", "--set", "coworld.source_options={obs = \"state\"}"])
    assert code == 2 and "state-input source" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_coworld_schedule_logs_per_agent_and_evaluates(tmp_path, target_data):
    logdir = tmp_path / "mt"
    sets = SMALL + CO_SMALL + ["train.log_every=1"]
    code = main(["train", *mt_args(target_data), "--steps", "80", "--logdir", str(logdir), "--no-progress",
                 "--preset", "tiny", *sum((["--set", s] for s in sets), [])])
    assert code == 0
    # the same phases and lengths as CoWorld for the same --steps, so the same source steps and target updates
    cfg = load_config("tiny", sets)
    coworld = build_schedule(cfg, 80, 1, min_prefill=15 + cfg.train.length)
    schedule = json.loads((logdir / "schedule.json").read_text())
    assert [(p["kind"], p["length"]) for p in schedule] == [(p.kind, p.length) for p in coworld]
    # every target-phase step is one joint update; source phases update once per train_every steps
    assert all(p["updates"] == p["length"] for p in schedule if p["kind"] in ("target", "target_wm"))
    assert all(p["updates"] >= 1 for p in schedule if p["kind"] == "source")
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "target/model/loss" in r]
    assert train and all({"target/actor/loss", "source0/actor/loss", "source0/critic/loss"} <= r.keys()
                         for r in train)
    # CoWorld's evaluation rule: the first target block, then once train.eval_every (60) units have
    # passed (not before the second block: 6 updates x 4 units later), and at the end
    assert sum("target_eval/return" in r for r in lines) == 2
    assert any("target_offline/reward_mse" in r for r in lines)
    assert main(["eval", str(logdir), "--episodes", "2"]) == 0
    out = json.loads(next((logdir / "eval").glob("*.json")).read_text())
    assert len(out["returns"]) == 2 and out["env"] == "builtin:reach"
    assert out["updates"] == sum(p["updates"] for p in schedule)


@pytest.mark.slow
def test_kill9_resume_across_stages_bit_identical(tmp_path, target_data):
    algo, sets = mt_args(target_data), SMALL + CO_SMALL
    run(tmp_path / "ref", 80, algo, sets)
    first = run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=3, sets=sets)
    assert first.returncode == -signal.SIGKILL
    run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=6, sets=sets)
    run(tmp_path / "cut", 80, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
