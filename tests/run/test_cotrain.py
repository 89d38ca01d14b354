"""CoWorld co-training schedule, multi-source runs, DV2 Finetune, and bit-exact resume across stages."""

import json
import signal

import pytest
import torch

from coworld.run.cotrain import build_schedule, finetune_schedule, full_source_steps
from coworld.cli import main
from coworld.config import load_config
from tests.run.test_resume import SMALL, assert_same_state, run, run_and_kill

CO_SMALL = ["coworld.block_steps=20", "coworld.warmup_blocks=1", "coworld.wm_warmup_rounds=1",
            "coworld.outer_iters=1", "coworld.target_blocks=2", "coworld.source_blocks=1", "train.prefill=20",
            "coworld.wm_warmup_updates=5"]


def test_schedule_follows_spec_8_counts():
    cfg = load_config("tiny")
    c = cfg.coworld
    full = full_source_steps(cfg, 1)
    # the last outer iteration has no source blocks (the released code skips them)
    assert full == cfg.train.prefill + (c.warmup_blocks + c.wm_warmup_rounds
                                        + (c.outer_iters - 1) * c.source_blocks) * c.block_steps
    phases = build_schedule(cfg, full, 1)
    kinds = [p.kind for p in phases]
    assert kinds[0] == "prefill" and kinds[1:1 + c.warmup_blocks] == ["source"] * c.warmup_blocks
    assert kinds.count("target_wm") == c.wm_warmup_rounds
    assert kinds.count("target") == c.outer_iters * c.target_blocks
    assert kinds[-c.target_blocks:] == ["target"] * c.target_blocks
    assert sum(p.length for p in phases if p.kind in ("prefill", "source")) == full
    # a world-model warm-up round is wm_warmup_updates updates (the released eval_every: 10,000)
    assert [p.length for p in phases if p.kind == "target_wm"] == [c.wm_warmup_updates] * c.wm_warmup_rounds
    # a target block holds as many updates as a source block makes, and costs as much progress
    target = [p for p in phases if p.kind == "target"]
    assert all(p.length == c.block_steps // cfg.train.train_every for p in target)
    assert all(p.evaluate for p in target) and sum(p.select for p in target) == c.outer_iters
    # source blocks align rewards (stage B) exactly when they come after the source warm-up
    assert [p.align for p in phases if p.kind == "source"] == \
        [False] * c.warmup_blocks + [True] * (c.wm_warmup_rounds + (c.outer_iters - 1) * c.source_blocks)


def test_coworld_official_saves_the_source_blocks_after_the_last_target_block():
    cfg = load_config("coworld-official")
    assert full_source_steps(cfg, 1) == 5000 + (3 + 2 + 5 * 2) * 10000  # 155,000 (175,000 with them)


def test_small_steps_keep_a_prefill_of_one_episode_and_a_window():
    cfg = load_config("tiny")
    phases = build_schedule(cfg, 300, 2, min_prefill=100 + cfg.train.length)
    assert [p.length for p in phases if p.kind == "prefill"] == [116, 116]


def test_small_steps_scale_every_stage_down():
    cfg = load_config("tiny")
    full = build_schedule(cfg, full_source_steps(cfg, 2), 2)
    small = build_schedule(cfg, 3000, 2)
    assert [(p.kind, p.source, p.select, p.evaluate) for p in small] == \
        [(p.kind, p.source, p.select, p.evaluate) for p in full]
    total = sum(p.length for p in small if p.kind in ("prefill", "source"))
    assert abs(total - 3000) / 3000 < 0.1
    assert all(p.length >= 1 for p in small)


def test_finetune_has_coworld_budget():
    cfg = load_config("tiny")
    co, ft = build_schedule(cfg, 5000, 1), finetune_schedule(cfg, 5000)
    src = lambda s: sum(p.length for p in s if p.kind in ("prefill", "source"))  # noqa: E731
    tgt = lambda s: sum(p.length for p in s if p.kind in ("target", "target_wm"))  # noqa: E731
    assert src(co) == src(ft) and tgt(co) == tgt(ft)


def coworld_args(target_data, *extra):
    return ["--algo", "coworld", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--target-env", "builtin:reach", *extra]


@pytest.mark.slow
def test_coworld_kill9_resume_across_stages_bit_identical(tmp_path, target_data):
    algo, sets = coworld_args(target_data), SMALL + CO_SMALL
    run(tmp_path / "ref", 80, algo, sets)
    schedule = json.loads((tmp_path / "ref" / "schedule.json").read_text())
    assert {p["kind"] for p in schedule} == {"prefill", "source", "target_wm", "target"}
    # killed once early (source warm-up) and once later, so the resumed runs cross stage boundaries
    first = run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=3, sets=sets)
    assert first.returncode == -signal.SIGKILL
    run_and_kill(tmp_path / "cut", 80, algo, signal.SIGKILL, after_checkpoints=6, sets=sets)
    run(tmp_path / "cut", 80, algo, sets)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")


def small_sets():
    return sum((["--set", s] for s in SMALL + CO_SMALL), [])


@pytest.mark.slow
def test_multi_source_selection_logged_and_eval_works(tmp_path, target_data, capsys):
    logdir = tmp_path / "multi"
    code = main(["train", *coworld_args(target_data), "--source", "builtin:push-src", "--steps", "120",
                 "--logdir", str(logdir), "--no-progress", "--no-max", "--no-reward-align", *small_sets()])
    assert code == 0
    saved = json.loads((logdir / "config.json").read_text())["coworld"]  # ablation flags reach the config
    assert saved["no_max"] and not saved["reward_align"] and saved["state_align"] and saved["value_constraint"]
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    picks = [r for r in lines if "coworld/selected_source" in r]
    assert picks and all({"coworld/domain_kl/source0", "coworld/domain_kl/source1"} <= r.keys() for r in picks)
    assert any("target_eval/return" in r for r in lines)
    assert main(["eval", str(logdir), "--episodes", "2"]) == 0
    out = json.loads(next((logdir / "eval").glob("*.json")).read_text())
    assert len(out["returns"]) == 2 and out["env"] == "builtin:reach"


@pytest.mark.slow
def test_dv2_finetune_runs_with_padded_actions_and_evaluates(tmp_path, target_data):
    logdir = tmp_path / "ft"
    args = ["train", "--algo", "dv2-finetune", "--source", "builtin:reach-src", "--target-dataset",
            str(target_data), "--target-env", "builtin:reach", "--steps", "80", "--logdir", str(logdir),
            "--no-progress", *small_sets()]
    assert main(args) == 0
    assert main(["eval", str(logdir), "--episodes", "1"]) == 0


@pytest.mark.slow
def test_pessimistic_target_is_an_offline_dv2_agent_beside_plain_sources(tmp_path, target_data, capsys):
    """coworld.target_ensemble = 2: the target has 2 prior heads and logs its penalty through CoWorld's
    hooks (stages A and C still act on it), the source keeps one head; a saved run evaluates."""
    from coworld.run.api import load_run

    logdir = tmp_path / "pess"
    sets = small_sets() + ["--set", "coworld.target_ensemble=2", "--set", "coworld.target_penalty=0.5",
                           "--set", "train.log_every=1"]
    assert main(["train", *coworld_args(target_data), "--steps", "120", "--logdir", str(logdir),
                 "--no-progress", *sets]) == 0
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    assert {"target/imag/uncertainty", "target/coworld/align_loss", "target/coworld/capped_frac"} <= keys
    assert not any(k.startswith("source0/") and k.endswith("uncertainty") for k in keys)
    state = load_run(logdir)[3]

    def heads(agent):
        return len({k.split(".")[2] for k in state[agent]["wm"] if k.startswith("rssm.prior_heads.")})

    assert (heads("target_agent"), heads("source0_agent")) == (2, 1)
    assert main(["eval", str(logdir), "--episodes", "1"]) == 0
    # bad settings: one head, or a finetuning baseline (no separate target)
    assert main(["train", *coworld_args(target_data), "--steps", "120", "--logdir", str(tmp_path / "one"),
                 "--set", "coworld.target_ensemble=1"]) == 2
    assert "coworld.target_ensemble must be 0" in capsys.readouterr().err
    assert main(["train", "--algo", "dv2-finetune", "--source", "builtin:reach-src", "--target-dataset",
                 str(target_data), "--target-env", "builtin:reach", "--steps", "80", "--logdir",
                 str(tmp_path / "ft"), "--set", "coworld.target_ensemble=2"]) == 2
    assert "no separate target agent" in capsys.readouterr().err


def test_target_agent_takes_the_ensemble_and_penalty_from_the_coworld_section_only():
    from coworld.algos.offline_dv2 import OfflineDV2Agent
    from coworld.run.cotrain import target_agent

    cfg = load_config("tiny", ["coworld.target_ensemble=3", "coworld.target_penalty=0.25"])
    agent = target_agent(cfg, 2)
    assert isinstance(agent, OfflineDV2Agent) and len(agent.wm.rssm.prior_heads) == 3
    assert agent.cfg.train.offline_penalty == 0.25
    assert cfg.model.ensemble == 0 and cfg.train.offline_penalty == 0.0  # the shared config is untouched
    plain = target_agent(load_config("tiny"), 2)
    assert type(plain).__name__ == "DreamerAgent" and len(plain.wm.rssm.prior_heads) == 1


@pytest.mark.slow
def test_how_often_a_run_evaluates_does_not_change_what_it_learns(tmp_path, target_data):
    """Evaluations and the offline diagnostics (open-loop strip, reward fit on a dataset batch) draw from
    their own generators: a run evaluating before every target block ends with the same weights,
    optimizer states and torch RNG as one evaluating only at the start and the end."""
    from coworld.run.checkpoint import load_checkpoint

    algo = coworld_args(target_data)
    run(tmp_path / "often", 120, algo, SMALL + CO_SMALL + ["train.eval_every=1"])
    run(tmp_path / "rarely", 120, algo, SMALL + CO_SMALL + ["train.eval_every=100000"])
    often, rarely = load_checkpoint(tmp_path / "often"), load_checkpoint(tmp_path / "rarely")
    assert often["counters"]["evals"] > rarely["counters"]["evals"] >= 1
    for agent in ("target_agent", "source0_agent"):
        for part, tensors in often[agent].items():
            if isinstance(tensors, dict) and part.endswith(("wm", "actor", "critic")):
                for name, value in tensors.items():
                    assert torch.equal(value, rarely[agent][part][name]), f"{agent}.{part}.{name} differs"
    assert torch.equal(often["rng"]["torch"], rarely["rng"]["torch"])


def test_coworld_needs_source_and_dataset(tmp_path, capsys):
    assert main(["train", "--algo", "coworld", "--steps", "10", "--logdir", str(tmp_path / "x"),
                 "--target-dataset", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["train", "--algo", "coworld", "--source", "builtin:nope", "--steps", "10",
                 "--logdir", str(tmp_path / "y"), "--target-dataset", str(tmp_path)]) == 2
    assert "builtin:nope" in capsys.readouterr().err


@pytest.mark.slow
def test_small_run_makes_updates_in_every_stage_and_logs_them_under_their_agent(tmp_path, target_data):
    """--steps far below the preset's schedule: every phase after the prefill makes at least one update
    (the prefill holds a finished episode, so the source warm-up trains at once), eta decays over the
    reward-alignment stage to its floor, and every training-metric line carries the metrics of the agent
    it is logged under (no target metrics under source0/ after a target phase)."""
    logdir = tmp_path / "small"
    sets = SMALL + CO_SMALL + ["train.log_every=1", "train.eval_every=1000", "coworld.eta_schedule=linear"]
    code = main(["train", *coworld_args(target_data), "--source", "builtin:push-src", "--steps", "150",
                 "--logdir", str(logdir), "--no-progress", *sum((["--set", s] for s in sets), [])])
    assert code == 0
    schedule = json.loads((logdir / "schedule.json").read_text())
    assert [p["kind"] for p in schedule][:2] == ["prefill", "source"]
    assert all(p["updates"] == 0 for p in schedule if p["kind"] == "prefill")
    assert all(p["updates"] >= 1 for p in schedule if p["kind"] != "prefill"), schedule
    assert all(p["length"] >= 15 + 6 for p in schedule if p["kind"] == "prefill")  # one episode + one window
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        for key in r:
            if key.startswith("source"):
                assert not key.endswith(("align_loss", "value_constraint", "capped_frac")), (key, r)
            if key.startswith("target/"):
                assert not key.endswith(("eta", "reward_nll_target")), (key, r)
    # no training metrics from a step without an update: the prefill logs none
    prefill_units = schedule[0]["length"]
    assert not any(k.startswith("source0/model/") for r in lines if r["step"] <= prefill_units for k in r)
    # evaluations scale with the run: eval_every (1000 units) exceeds the run, so only the first
    # target block and the end are evaluated, not all 2 blocks + the end
    assert sum("target_eval/return" in r for r in lines) == 2
    etas = [v for r in lines for k, v in r.items() if k.endswith("/coworld/eta")]
    # one update every 4 steps: the first falls within 4 steps of the stage's start, the last within 4 of its end
    align = sum(p["length"] for p in schedule if p["kind"] == "source" and p["align"])
    assert etas == sorted(etas, reverse=True) and len(etas) >= 2
    assert etas[0] >= 1 - 0.8 * 4 / (align - 1) and etas[-1] <= 0.2 + 0.8 * 4 / (align - 1)


@pytest.mark.slow
def test_coworld_without_target_env_reports_offline_diagnostics(tmp_path, target_data):
    logdir = tmp_path / "noenv"
    args = ["train", "--algo", "coworld", "--source", "builtin:reach-src", "--target-dataset", str(target_data),
            "--steps", "60", "--logdir", str(logdir), "--no-progress", *small_sets(), "--set", "train.eval_every=1"]
    assert main(args) == 0
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert not any("target_eval/return" in r for r in lines)
    diag = [r for r in lines if "target_offline/reward_mse" in r]
    # one before each target block (2) and one at the end
    assert len(diag) == 3 and all("target_offline/value" in r for r in diag)
    assert len(list((logdir / "images").glob("target_openloop*"))) == 3
