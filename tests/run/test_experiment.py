"""Experiment files: validation (one clear error per problem), expansion into trials, and every
shipped file under experiments/ validates against the registry and the config as they are."""

from pathlib import Path

import pytest

from coworld.config import load_config
from coworld.errors import UserError
from coworld.run import registry
from coworld.run.cotrain import build_schedule
from coworld.run.experiment import expand, load_experiment, slug, trial_cost

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "experiments").glob("*.toml"))

BASE = """
[experiment]
name = "t"
preset = "tiny"
seeds = 2
steps = { source = 1000, offline = "matched" }
overrides = ["coworld.outer_iters=2", "coworld.target_blocks=3"]

[[needs]]
name = "d"
path = "reach-mr"
make = "coworld data make --env builtin:reach --level medium-replay --episodes 5 --out {data}/reach-mr"

[[methods]]
label = "CoWorld"
algo = "coworld"

[[methods]]
label = "Offline DV2"
algo = "offline-dv2"

[[tasks]]
label = "reach-src->reach"
source = ["builtin:reach-src"]
target_env = "builtin:reach"
target_dataset = "d"
"""


def write(tmp_path, text, name="e.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path, text, **kw):
    kw.setdefault("check_data", False)
    return load_experiment(write(tmp_path, text), data_root=tmp_path / "data", **kw)


def test_expansion_ids_inputs_and_matched_budget(tmp_path):
    exp = load(tmp_path, BASE)
    trials = expand(exp)
    # seed-major: a sweep stopped half-way has the first seeds of every method
    assert [t["id"] for t in trials] == ["coworld__reach-src-reach__s0", "offline-dv2__reach-src-reach__s0",
                                         "coworld__reach-src-reach__s1", "offline-dv2__reach-src-reach__s1"]
    co, off = trials[0], trials[1]
    data = str((tmp_path / "data" / "reach-mr").resolve())
    assert co["inputs"] == {"source": ["builtin:reach-src"], "target_dataset": data, "target_env": "builtin:reach"}
    assert off["inputs"] == {"dataset": data, "env": "builtin:reach"}  # trained on the target data, evaluated there
    assert co["steps"] == 1000 and co["target"] == off["target"] == "builtin:reach" and off["source"] is None
    cfg = load_config("tiny", ["coworld.outer_iters=2", "coworld.target_blocks=3"])
    matched = sum(p.length for p in build_schedule(cfg, 1000, 1) if p.kind in ("target", "target_wm"))
    assert off["steps"] == matched  # "matched": as many updates as CoWorld makes on the target
    assert co["overrides"][-1] == "train.threads=1"  # the trial's CPUs
    assert expand(load(tmp_path, BASE)) == trials  # stable: a re-run maps to the same trials


def test_costliest_trial_first_within_a_seed(tmp_path):
    # Offline DV2 listed first but given more updates than CoWorld makes in all: it starts first in
    # every seed, and seed-major order holds
    text = BASE.replace('algo = "coworld"', 'algo = "offline-dv2"\nsteps = { offline = 5000 }', 1)
    text = text.replace('label = "CoWorld"', 'label = "Long"').replace(
        'label = "Offline DV2"\nalgo = "offline-dv2"', 'label = "CoWorld"\nalgo = "coworld"')
    trials = expand(load(tmp_path, text))
    assert [t["id"] for t in trials] == ["long__reach-src-reach__s0", "coworld__reach-src-reach__s0",
                                         "long__reach-src-reach__s1", "coworld__reach-src-reach__s1"]
    cfg = load_config("tiny", ["coworld.outer_iters=2", "coworld.target_blocks=3"])
    co_updates = sum(p.length for p in build_schedule(cfg, 1000, 1) if p.kind in ("target", "target_wm"))
    assert co_updates + 1000 // cfg.train.train_every < 5000  # the premise: CoWorld is the cheaper trial
    # with fewer offline updates than CoWorld's the file's order comes back
    cheap = expand(load(tmp_path, text.replace("offline = 5000", "offline = 10")))
    assert [t["method"] for t in cheap] == ["CoWorld", "Long"] * 2
    assert trial_cost("offline", 300, 5) == 300
    assert trial_cost("online", 300, 5) == 60
    assert trial_cost("source", 300, 5, 40) == 100


def test_set_overrides_come_after_the_files_own(tmp_path):
    # coworld sweep --set applies over the experiment's, the task's and the method's overrides
    text = BASE.replace('algo = "offline-dv2"', 'algo = "offline-dv2"\noverrides = ["train.batch=4"]')
    off = expand(load(tmp_path, text))[1]
    assert load_config("tiny", off["overrides"]).train.batch == 4
    off = expand(load(tmp_path, text, overrides=["train.batch=3"]))[1]
    assert load_config("tiny", off["overrides"]).train.batch == 3


def test_evaluations_set_eval_every_in_each_unit(tmp_path):
    exp = load(tmp_path, BASE.replace('preset = "tiny"', 'preset = "tiny"\nevaluations = 4'))
    co, off = expand(exp)[0], expand(exp)[1]
    assert f"train.eval_every={off['steps'] // 4}" in off["overrides"]
    assert f"train.eval_every={off['steps'] // 4 * 5}" in co["overrides"]  # progress units: train_every per update


def test_ablations_multi_source_and_restrictions(tmp_path):
    text = BASE + """
[[methods]]
label = "CoWorld w/o max"
algo = "coworld"
ablations = { no_max = true }
tasks = ["reach-src->reach"]

[[methods]]
label = "CoWorld (multi-source)"
algo = "coworld"
multi_source = true
steps = { source = 2000 }

[[tasks]]
label = "reach only"
env = "builtin:reach"
dataset = "d"
methods = ["Offline DV2"]
"""
    text = text.replace('target_dataset = "d"\n', 'target_dataset = "d"\nmulti_source = ["builtin:reach-src", "builtin:reach"]\n', 1)
    trials = {t["id"]: t for t in expand(load(tmp_path, text))}
    assert trials["coworld-w-o-max__reach-src-reach__s0"]["ablations"] == {"no_max": True}
    multi = trials["coworld-multi-source__reach-src-reach__s1"]
    assert multi["source"] == ["builtin:reach-src", "builtin:reach"] and multi["steps"] == 2000
    assert multi["task"] == "reach-src->reach"  # same stratum as the single-source trials
    assert "offline-dv2__reach-only__s0" in trials and not any("coworld__reach-only" in i for i in trials)
    assert len(trials) == 2 * (1 + 1 + 1 + 1) + 2  # 4 methods on the pair, Offline DV2 on "reach only"


@pytest.mark.parametrize("change, message", [
    (('algo = "offline-dv2"', 'algo = "ofline-dv2"'), "unknown algorithm 'ofline-dv2'; did you mean offline-dv2"),
    (('algo = "offline-dv2"', 'algo = "nope"'), "Known: dreamer, offline-dv2, coworld"),
    (('source = ["builtin:reach-src"]\n', ''), "algorithm coworld needs source, which task 'reach-src->reach' lacks"),
    (('target_dataset = "d"', 'target_dataset = "e"'), "not a dataset declared in [[needs]] (declared: d)"),
    (('seeds = 2', 'seeds = 0'), "seeds must be at least 1"),
    (('preset = "tiny"', 'preset = "tiny"\nbudget = 3'), "unknown key(s) budget"),
    (('["coworld.outer_iters=2"', '["coworld.outer_iter=2"'), "did you mean coworld.outer_iters"),
    (('target_env = "builtin:reach"', 'target_env = "builtin:rech"'), "builtin:rech"),
    (('offline = "matched"', 'offline = -3'), "steps.offline must be a positive integer or \"matched\""),
    (('label = "Offline DV2"', 'label = "CoWorld"'), "give the same trial id part 'coworld'"),
    (('algo = "offline-dv2"', 'algo = "offline-dv2"\nablations = { no_max = true }'), "ablations are CoWorld's"),
])
def test_one_clear_error_per_problem(tmp_path, change, message):
    old, new = change
    assert old in BASE
    with pytest.raises(UserError) as err:
        load(tmp_path, BASE.replace(old, new, 1))
    assert message in str(err.value)
    assert str(tmp_path / "e.toml") in str(err.value)  # says which file


@pytest.mark.parametrize("algo", ["dv2-finetune", "dv2-finetune-ewc", "lompo-finetune", "multitask-dv2"])
def test_single_source_methods_refuse_a_task_with_several_sources(tmp_path, algo):
    text = BASE.replace('algo = "coworld"', f'algo = "{algo}"', 1).replace(
        'source = ["builtin:reach-src"]', 'source = ["builtin:reach-src", "builtin:reach"]', 1)
    with pytest.raises(UserError, match=f"{algo} takes one source; task 'reach-src->reach' has 2"):
        expand(load(tmp_path, text))


def test_missing_dataset_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(UserError) as err:
        load(tmp_path, BASE, check_data=True)
    text = str(err.value)
    assert "missing dataset(s)" in text
    assert f"coworld data make --env builtin:reach --level medium-replay --episodes 5 --out {tmp_path / 'data'}/reach-mr" in text
    (tmp_path / "data" / "reach-mr").mkdir(parents=True)
    load(tmp_path, BASE, check_data=True)  # there now: no error


def test_variant_replaces_keys_and_filters_methods(tmp_path):
    text = BASE + """
[variants.small]
seeds = [7]
steps = { source = 500, offline = 9 }
methods = ["Offline DV2"]
"""
    trials = expand(load(tmp_path, text, variant="small"))
    assert [t["id"] for t in trials] == ["offline-dv2__reach-src-reach__s7"] and trials[0]["steps"] == 9
    with pytest.raises(UserError, match="no variant 'big'"):
        load(tmp_path, text, variant="big")


def test_label_filters(tmp_path):
    assert {t["method"] for t in expand(load(tmp_path, BASE, methods=["CoWorld"]))} == {"CoWorld"}
    with pytest.raises(UserError, match="no method labelled 'DrQ'"):
        load(tmp_path, BASE, methods=["DrQ"])


def test_slug():
    assert slug("reach-src->reach") == "reach-src-reach"
    assert slug("CoWorld (multi-source)") == "coworld-multi-source"
    assert slug("BP->DC*") == "bp-dc-star" != slug("BP->DC")  # drawer-close and door-close stay apart
    assert slug("DrQ+BC") == "drq-plus-bc"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiment_files_validate(path, tmp_path):
    """Every shipped file loads against today's registry and config (datasets not required), names
    how to make each dataset it uses, and lists the paper's methods that are not registered yet."""
    exp = load_experiment(path, data_root=tmp_path, check_data=False)
    trials = expand(exp)
    assert trials and exp.description
    for name in exp.needs:
        assert exp.make_command(name).startswith("coworld data ")
    for t in trials:
        assert t["algo"] in registry.names()
    text = path.read_text()
    if "# not yet registered:" in text:
        line = next(x for x in text.splitlines() if x.startswith("# not yet registered:"))
        for name in line.split(":", 1)[1].replace(",", " ").split():
            assert name not in registry.names(), f"{name} is registered now: add its [[methods]] to {path.name}"


def test_builtin_is_shipped():
    assert ROOT / "experiments" / "builtin.toml" in SHIPPED


def test_resources_from_the_command_line(tmp_path):
    trials = expand(load(tmp_path, BASE, resources={"cpus": 3, "gpus": 0.5}))
    assert all(t["resources"] == {"cpus": 3, "gpus": 0.5} and "train.threads=3" in t["overrides"] for t in trials)
    with pytest.raises(UserError, match="resources.gpus must be a number >= 0"):
        load(tmp_path, BASE, resources={"gpus": -1})


def test_experiment_compute_scales_table12_by_budget():
    """scripts/experiment_compute.py: a trial is charged its method's Table 12 minutes scaled by its budget."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "experiment_compute.py"
    spec = importlib.util.spec_from_file_location("experiment_compute", path)
    ec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ec)
    trials = [{"algo": "coworld", "steps": 155_000},  # the full Meta-World budget: 3,346 min
              {"algo": "offline-dv2", "steps": 40_000},  # half of 80,000 updates: 2,054 / 2 min
              {"algo": "curl", "steps": 80_000}]  # charged as Offline DV2: 2,054 min
    assert ec.gpu_hours(trials) == pytest.approx((3346 + 1027 + 2054) / 60)
