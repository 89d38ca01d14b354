"""Experiment files: a grid of trials in one TOML file, validated whole before anything runs.

An experiment file (``experiments/*.toml``, docs/experiments.md) names

- ``[experiment]``: ``name``, ``description``, the ``preset``, the ``seeds`` (a count or a list),
  the budget ``steps`` (an integer, or a table per algorithm kind: ``source`` = source environment
  steps of the co-training algorithms, ``offline`` = gradient updates of the offline ones or
  ``"matched"`` = as many target updates as CoWorld's schedule makes, ``online`` = environment steps),
  ``evaluations`` (about how many evaluations each trial makes; optional), common ``overrides``
  (``section.key=value``) and the ``resources`` of one trial (``{cpus, gpus}``, gpus may be a fraction);
- ``[[needs]]``: the datasets, each with a ``name``, a ``path`` (relative to the data root,
  ``coworld sweep --data``) and how it is made: ``make`` (the command, with ``{data}`` for the data
  root) or ``scripted`` (``{env, level, episodes, seed, time_limit}``: the sweep makes it itself with
  ``coworld data make``'s code);
- ``[[methods]]``: ``label`` (shown in reports), ``algo`` (a registered algorithm), optional
  ``ablations`` (``no_state_align``, ``no_reward_align``, ``no_value_constraint``, ``no_max``),
  ``overrides``, ``preset``, ``steps``, ``resources``, ``group``, ``tasks`` (the task labels it
  runs on; all by default) and ``multi_source = true`` (it trains with the task's ``multi_source``
  candidates instead of its ``source``: multi-source CoWorld, docs/algorithms.md#multi-source);
- ``[[tasks]]``: ``label`` (the stratum), ``source`` (env ids), ``multi_source`` (candidate env ids),
  ``target_env``, ``target_dataset`` (a need's name), or ``env`` / ``dataset`` for single-domain
  tasks, optional ``overrides``, ``group`` and ``methods`` (the method labels that run on it; all by
  default);
- ``[variants.NAME]``: replacements of ``[experiment]`` keys (and ``needs`` entries, by name, and a
  ``methods`` list of labels to keep), picked with ``coworld sweep --variant NAME``.

:func:`load_experiment` checks everything it can without training (algorithms, inputs each method
needs, env ids, config keys, datasets) and raises one :class:`UserError` per problem;
:func:`expand` turns the experiment into trials, one per (method, task, seed), each a plain dict
(the sweep directory's ``trials/<id>.json``, see docs/experiments.md).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from coworld import envs
from coworld.config import ConfigError, load_config
from coworld.errors import UserError
from coworld.run import registry
from coworld.run.api import ABLATIONS

EXPERIMENT_KEYS = {"name", "description", "preset", "seeds", "steps", "evaluations", "overrides", "resources"}
NEED_KEYS = {"name", "path", "make", "scripted", "description"}
SCRIPTED_KEYS = {"env", "level", "episodes", "seed", "time_limit"}
METHOD_KEYS = {"label", "algo", "ablations", "overrides", "preset", "steps", "resources", "group", "tasks",
               "multi_source"}
TASK_KEYS = {"label", "source", "multi_source", "target_env", "target_dataset", "env", "dataset", "overrides",
             "group", "methods"}
STEP_KINDS = ("source", "offline", "online")
DATA_FIELDS = ("target_dataset", "dataset")


@dataclass
class Experiment:
    name: str
    file: str
    description: str
    preset: str
    seeds: list[int]
    steps: dict  # kind -> int (or "matched" for offline)
    evaluations: int | None
    overrides: list[str]
    resources: dict
    needs: dict  # name -> need table
    methods: list[dict]
    tasks: list[dict]
    data_root: Path = field(default_factory=lambda: Path("data"))
    cli_overrides: list[str] = field(default_factory=list)  # coworld sweep --set (and --wandb): after all others

    def dataset_path(self, name: str) -> Path:
        return (self.data_root / self.needs[name]["path"]).resolve()

    def make_command(self, name: str) -> str:
        """The command that makes the dataset ``name``, with the data root filled in."""
        need = self.needs[name]
        if "scripted" in need:
            s = need["scripted"]
            cmd = (f"coworld data make --env {s['env']} --level {s['level']} --episodes {s['episodes']} "
                   f"--seed {s.get('seed', 0)}")
            if s.get("time_limit"):
                cmd += f" --time-limit {s['time_limit']}"
            return cmd + f" --out {self.dataset_path(name)}"
        return need["make"].replace("{data}", str(self.data_root.resolve()))


def slug(text: str) -> str:
    """A readable, file-name-safe form of a label: ``"reach-src->reach"`` -> ``"reach-src-reach"``,
    ``"BP->DC*"`` -> ``"bp-dc-star"``, ``"DrQ+BC"`` -> ``"drq-plus-bc"``."""
    text = text.replace("+", " plus ").replace("*", " star ")
    out = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
    return out or "x"


def algo_kind(algo: registry.Algorithm) -> str:
    """Which budget of ``steps`` an algorithm takes: co-training (``source``: needs a source
    simulator), ``offline`` (trains on a dataset) or ``online`` (trains in an env)."""
    if "source" in algo.needs:
        return "source"
    if "dataset" in algo.needs or "target_dataset" in algo.needs:
        return "offline"
    return "online"


def _fail(where: str, text: str):
    raise UserError(f"{where}: {text}")


def _spec(env_id, where: str) -> None:
    try:
        envs.spec(env_id)
    except UserError as exc:
        _fail(where, str(exc))


def _table(data, where: str, allowed: set, required: tuple = ()) -> dict:
    if not isinstance(data, dict):
        _fail(where, f"must be a table, got {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in data:
            _fail(where, f"missing required key '{key}'")
    return data


def _str_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(where, f"must be a list of strings, got {value!r}")
    return list(value)


def _seeds(value, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            _fail(where, "seeds must be at least 1 (a count) or a list of seeds")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            _fail(where, f"seeds repeat: {value}")
        return list(value)
    _fail(where, f"seeds must be a count or a non-empty list of integers, got {value!r}")


def _steps(value, where: str) -> dict:
    if isinstance(value, int) and not isinstance(value, bool):
        value = {k: value for k in STEP_KINDS}
    if not isinstance(value, dict):
        _fail(where, f"steps must be an integer or a table with keys {', '.join(STEP_KINDS)}; got {value!r}")
    unknown = sorted(set(value) - set(STEP_KINDS))
    if unknown:
        _fail(where, f"steps: unknown kind(s) {', '.join(unknown)}; use {', '.join(STEP_KINDS)}")
    for kind, n in value.items():
        if kind == "offline" and n == "matched":
            continue
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            also = ' or "matched"' if kind == "offline" else ""
            _fail(where, f"steps.{kind} must be a positive integer{also}, got {n!r}")
    return dict(value)


def _resources(value, where: str) -> dict:
    _table(value, where + ".resources", {"cpus", "gpus"})
    cpus, gpus = value.get("cpus", 1), value.get("gpus", 0)
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        _fail(where, f"resources.cpus must be a positive integer, got {cpus!r}")
    if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0:
        _fail(where, f"resources.gpus must be a number >= 0 (a fraction shares a GPU), got {gpus!r}")
    return {"cpus": cpus, "gpus": gpus}


def read_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such experiment file (see experiments/*.toml and docs/experiments.md)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None


def apply_variant(data: dict, variant: str | None, where: str) -> dict:
    """``[variants.NAME]`` replaces ``[experiment]`` keys, replaces ``[[needs]]`` entries of the same
    name, and keeps only the methods whose labels it lists under ``methods``."""
    variants = data.get("variants", {})
    if variant is None:
        return data
    if variant not in variants:
        known = ", ".join(variants) or "none"
        raise UserError(f"{where}: no variant {variant!r} (variants in this file: {known})")
    table = _table(dict(variants[variant]), f"{where} [variants.{variant}]",
                   EXPERIMENT_KEYS - {"name"} | {"needs", "methods"})
    out = dict(data)
    exp = dict(data.get("experiment", {}))
    exp.update({k: v for k, v in table.items() if k in EXPERIMENT_KEYS})
    out["experiment"] = exp
    if "needs" in table:
        by_name = {n.get("name"): n for n in data.get("needs", [])}
        for need in table["needs"]:
            by_name[need.get("name")] = need
        out["needs"] = list(by_name.values())
    if "methods" in table:
        keep = _str_list(table["methods"], f"{where} [variants.{variant}].methods")
        labels = [m.get("label") for m in data.get("methods", [])]
        missing = [k for k in keep if k not in labels]
        if missing:
            raise UserError(f"{where} [variants.{variant}]: unknown method label(s) {missing}; methods: {labels}")
        out["methods"] = [m for m in data.get("methods", []) if m.get("label") in keep]
    return out


def load_experiment(path, *, variant: str | None = None, data_root="data", check_data: bool = True,
                    methods: list[str] | None = None, tasks: list[str] | None = None,
                    overrides=(), resources: dict | None = None) -> Experiment:
    """Read and validate an experiment file. ``check_data``: also require every dataset a trial uses
    to exist (scripted ones excepted: the sweep makes them). ``methods`` / ``tasks``: keep only these
    labels. ``overrides``: ``section.key=value`` settings added to every trial after the file's own
    (``coworld sweep --set``);
    ``resources``: ``{cpus, gpus}`` of every trial, over the file's (``--cpus`` / ``--gpus``)."""
    where = str(path)
    data = apply_variant(read_file(path), variant, where)
    unknown = sorted(set(data) - {"experiment", "needs", "methods", "tasks", "variants"})
    if unknown:
        _fail(where, f"unknown section(s) {', '.join(unknown)}; sections: [experiment], [[needs]], [[methods]], "
              "[[tasks]], [variants.NAME]")
    exp = _table(data.get("experiment"), f"{where} [experiment]", EXPERIMENT_KEYS, ("name", "steps"))
    if not isinstance(exp["name"], str) or not exp["name"]:
        _fail(where, "[experiment] name must be a non-empty string")
    preset = exp.get("preset", "tiny")
    evaluations = exp.get("evaluations")
    if evaluations is not None and (not isinstance(evaluations, int) or evaluations < 1):
        _fail(where, f"[experiment] evaluations must be a positive integer, got {evaluations!r}")
    experiment = Experiment(
        name=exp["name"], file=str(path), description=str(exp.get("description", "")), preset=preset,
        seeds=_seeds(exp.get("seeds", 1), f"{where} [experiment]"),
        steps=_steps(exp["steps"], f"{where} [experiment]"), evaluations=evaluations,
        overrides=_str_list(exp.get("overrides", []), f"{where} [experiment] overrides"),
        resources=_resources(exp.get("resources", {}), f"{where} [experiment]"),
        needs={}, methods=[], tasks=[], data_root=Path(data_root), cli_overrides=list(overrides),
    )
    for i, need in enumerate(data.get("needs", [])):
        w = f"{where} [[needs]] #{i + 1}"
        _table(need, w, NEED_KEYS, ("name", "path"))
        if ("make" in need) == ("scripted" in need):
            _fail(w, f"dataset {need['name']!r} needs exactly one of 'make' (the command that makes it) or "
                  "'scripted' (made by the sweep with a scripted policy)")
        if "scripted" in need:
            s = _table(need["scripted"], w + ".scripted", SCRIPTED_KEYS, ("env", "level", "episodes"))
            _spec(s["env"], w)
        if need["name"] in experiment.needs:
            _fail(w, f"dataset name {need['name']!r} is declared twice")
        experiment.needs[need["name"]] = dict(need)
    for i, task in enumerate(data.get("tasks", [])):
        w = f"{where} [[tasks]] #{i + 1}"
        _table(task, w, TASK_KEYS, ("label",))
        task = dict(task)
        for key in ("source", "multi_source"):
            if key in task:
                task[key] = _str_list(task[key], f"{w} {key}")
        for key in ("target_env", "env"):
            if key in task:
                _spec(task[key], w)
        for env_id in task.get("source", []) + task.get("multi_source", []):
            _spec(env_id, w)
        task["methods"] = _str_list(task["methods"], w + " methods") if "methods" in task else None
        for key in DATA_FIELDS:
            if key in task and task[key] not in experiment.needs:
                _fail(w, f"{key} = {task[key]!r} is not a dataset declared in [[needs]] "
                      f"(declared: {', '.join(experiment.needs) or 'none'})")
        task["overrides"] = _str_list(task.get("overrides", []), w + " overrides")
        experiment.tasks.append(task)
    for i, method in enumerate(data.get("methods", [])):
        w = f"{where} [[methods]] #{i + 1}"
        _table(method, w, METHOD_KEYS, ("label", "algo"))
        method = dict(method)
        try:
            algo = registry.get(method["algo"])
        except UserError as exc:
            _fail(f"{w} ({method['label']})", str(exc))
        ablations = method.get("ablations", {})
        _table(ablations, w + " ablations", set(ABLATIONS))
        if ablations and "source" not in algo.needs:
            _fail(w, f"ablations are CoWorld's stages; algorithm {algo.name} has none")
        method["ablations"] = {k: bool(v) for k, v in ablations.items()}
        method["overrides"] = _str_list(method.get("overrides", []), w + " overrides")
        if "steps" in method:
            method["steps"] = _steps(method["steps"], w)
        if "resources" in method:
            method["resources"] = _resources(method["resources"], w)
        method["tasks"] = _str_list(method["tasks"], w + " tasks") if "tasks" in method else None
        method["multi_source"] = bool(method.get("multi_source", False))
        if method["multi_source"] and "source" not in algo.needs:
            _fail(w, f"multi_source = true needs an algorithm that trains with sources; {algo.name} takes none")
        experiment.methods.append(method)
    _check_labels(experiment, where)
    if resources:
        given = {k: v for k, v in resources.items() if v is not None}
        experiment.resources = _resources({**experiment.resources, **given}, "--cpus / --gpus")
        for m in experiment.methods:
            if "resources" in m:
                m["resources"] = _resources({**m["resources"], **given}, "--cpus / --gpus")
    if methods:
        experiment.methods = _keep(experiment.methods, methods, "method", where)
    if tasks:
        experiment.tasks = _keep(experiment.tasks, tasks, "task", where)
    trials = expand(experiment)  # checks inputs, steps and config keys of every combination
    if not trials:
        _fail(where, "no trials: every method is restricted to tasks that are not selected")
    if check_data:
        check_datasets(experiment, trials)
    return experiment


def _keep(items: list[dict], labels: list[str], what: str, where: str) -> list[dict]:
    known = [x["label"] for x in items]
    missing = [x for x in labels if x not in known]
    if missing:
        raise UserError(f"{where}: no {what} labelled {', '.join(map(repr, missing))}; {what}s: {', '.join(known)}")
    return [x for x in items if x["label"] in labels]


def _check_labels(experiment: Experiment, where: str) -> None:
    if not experiment.methods:
        _fail(where, "no [[methods]]")
    if not experiment.tasks:
        _fail(where, "no [[tasks]]")
    for what, items in (("method", experiment.methods), ("task", experiment.tasks)):
        seen: dict[str, str] = {}
        for item in items:
            key = slug(item["label"])
            if key in seen:
                _fail(where, f"{what} labels {seen[key]!r} and {item['label']!r} give the same trial id part {key!r}")
            seen[key] = item["label"]
    task_labels = {t["label"] for t in experiment.tasks}
    for m in experiment.methods:
        bad = [t for t in m["tasks"] or [] if t not in task_labels]
        if bad:
            _fail(where, f"method {m['label']!r} names unknown task(s) {bad}; tasks: {sorted(task_labels)}")
    method_labels = {m["label"] for m in experiment.methods}
    for t in experiment.tasks:
        bad = [m for m in t["methods"] or [] if m not in method_labels]
        if bad:
            _fail(where, f"task {t['label']!r} names unknown method(s) {bad}; methods: {sorted(method_labels)}")


def task_inputs(task: dict, algo: registry.Algorithm, experiment: Experiment, multi_source: bool = False) -> dict:
    """The keyword inputs of ``coworld.train`` a method gets from a task: a single-domain method
    trains on the task's target data and is evaluated in the target env; a co-training one gets the
    sources too (the ``multi_source`` candidates for a multi-source method). Raises a UserError
    naming what the task lacks."""
    dataset = task.get("dataset") or task.get("target_dataset")
    target_data = task.get("target_dataset") or task.get("dataset")
    avail = {"env": task.get("env") or task.get("target_env"),
             "dataset": str(experiment.dataset_path(dataset)) if dataset else None,
             "source": (task.get("multi_source") if multi_source else task.get("source")) or None,
             "target_dataset": str(experiment.dataset_path(target_data)) if target_data else None,
             "target_env": task.get("target_env") or task.get("env")}
    missing = [k for k in algo.needs if not avail[k]]
    if multi_source and not avail["source"]:
        raise UserError(f"{experiment.file}: a multi-source method needs the task's multi_source list, which task "
                        f"{task['label']!r} lacks")
    if missing:
        raise UserError(f"{experiment.file}: algorithm {algo.name} needs {', '.join(missing)}, which task "
                        f"{task['label']!r} lacks; give the task {' and '.join(missing)}, or list the method's "
                        "tasks (tasks = [...]) to leave this one out")
    if algo.one_source and len(avail["source"]) > 1:
        raise UserError(f"{experiment.file}: {algo.name} takes one source; task {task['label']!r} has "
                        f"{len(avail['source'])}")
    return {k: avail[k] for k in algo.needs + algo.optional if avail[k]}


def target_updates(cfg, source_steps: int, n_sources: int = 1) -> int:
    """Target gradient updates CoWorld's schedule makes for ``source_steps`` source env steps
    (world-model warm-up included; docs/algorithms.md#schedule): the "matched" offline budget."""
    from coworld.run.cotrain import build_schedule

    return sum(p.length for p in build_schedule(cfg, source_steps, n_sources) if p.kind in ("target", "target_wm"))


def trial_cost(kind: str, steps: int, train_every: int, target_updates: int = 0) -> int:
    """A run's cost in gradient updates, to start the costliest first: an ``offline`` run's ``steps``
    are updates; an ``online`` one updates once every ``train_every`` env steps; a co-training one
    (``source``) does that in its source and ``target_updates`` on the target."""
    if kind == "offline":
        return steps
    return steps // train_every + (target_updates if kind == "source" else 0)


def _has(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def expand(experiment: Experiment) -> list[dict]:
    """One trial per (method, task, seed), seed-major (all of seed 0 first), the costliest first within a
    seed (:func:`trial_cost`); ids ``<method>__<task>__s<seed>``."""
    return [t for _, t in expand_costed(experiment)]


def expand_costed(experiment: Experiment) -> list[tuple[int, dict]]:
    """:func:`expand`'s trials in the same order, each with its :func:`trial_cost` (not in the trial
    record, so that sweep directories written before the cost existed still resume)."""
    ranked = []  # (cost, trial)
    for method in experiment.methods:
        algo = registry.get(method["algo"])
        kind = algo_kind(algo)
        steps_table = {**experiment.steps, **method.get("steps", {})}
        preset = method.get("preset", experiment.preset)
        resources = method.get("resources", experiment.resources)
        where = f"{experiment.file}: method {method['label']!r}"
        for task in experiment.tasks:
            if method["tasks"] is not None and task["label"] not in method["tasks"]:
                continue
            if task["methods"] is not None and method["label"] not in task["methods"]:
                continue
            inputs = task_inputs(task, algo, experiment, method["multi_source"])
            overrides = experiment.overrides + task["overrides"] + method["overrides"] + experiment.cli_overrides
            try:
                cfg = load_config(preset, overrides, defaults=algo.defaults)
            except ConfigError as exc:
                raise UserError(f"{where}, task {task['label']!r}: {exc}") from None
            if kind not in steps_table:
                raise UserError(f"{where}: [experiment] steps has no '{kind}' budget for algorithm {algo.name}")
            steps = steps_table[kind]
            co_updates = None  # target updates of CoWorld's schedule at the source budget
            n_sources = len(inputs.get("source") or task.get("source") or [None])
            if "source" in steps_table and (steps == "matched" or experiment.evaluations):
                # CoWorld's schedule at the experiment's preset, whatever this method's preset is
                co_cfg = load_config(experiment.preset, experiment.overrides + task["overrides"]
                                     + experiment.cli_overrides)
                co_updates = target_updates(co_cfg, steps_table["source"], n_sources)
            if steps == "matched":
                if co_updates is None:
                    raise UserError(f"{where}: steps.offline = \"matched\" needs a steps.source budget to match")
                steps = co_updates
            extra = []
            if not _has(overrides, "train.threads"):
                extra.append(f"train.threads={resources['cpus']}")
            if experiment.evaluations and not _has(overrides, "train.eval_every"):
                if kind == "source":
                    every = max(1, co_updates // experiment.evaluations) * cfg.train.train_every
                else:
                    every = max(1, steps // experiment.evaluations)
                extra.append(f"train.eval_every={every}")
            # its own schedule's target updates (a method may change the schedule, e.g. its warm-up)
            own = target_updates(cfg, int(steps), n_sources) if kind == "source" else 0
            cost = trial_cost(kind, int(steps), cfg.train.train_every, own)
            target = inputs.get("target_env") or inputs.get("env")
            dataset = inputs.get("target_dataset") or inputs.get("dataset")
            for seed in experiment.seeds:
                ranked.append((cost, {
                    "id": f"{slug(method['label'])}__{slug(task['label'])}__s{seed}",
                    "experiment": experiment.name, "method": method["label"], "algo": algo.name,
                    "task": task["label"], "source": inputs.get("source"), "target": target,
                    "dataset": dataset, "seed": seed, "preset": preset, "overrides": overrides + extra,
                    "ablations": method["ablations"], "steps": int(steps), "resources": dict(resources),
                    "group": method.get("group") or task.get("group"), "inputs": inputs,
                }))
    # seed-major: the first seeds of every method finish first, so a partial sweep is balanced; within a
    # seed the costliest first (stable), so that the sweep does not end with one long trial alone on a slot
    ranked.sort(key=lambda ct: (experiment.seeds.index(ct[1]["seed"]), -ct[0]))
    seen = set()
    for _, t in ranked:
        if t["id"] in seen:
            raise UserError(f"{experiment.file}: two trials get the id {t['id']}; make the labels differ")
        seen.add(t["id"])
    return ranked


def used_datasets(experiment: Experiment, trials: list[dict]) -> list[str]:
    """Names of the declared datasets some trial reads."""
    paths = {str(experiment.dataset_path(n)): n for n in experiment.needs}
    used = []
    for t in trials:
        for key in ("dataset", "target_dataset"):
            name = paths.get(t["inputs"].get(key) or "")
            if name and name not in used:
                used.append(name)
    return used


def missing_datasets(experiment: Experiment, trials: list[dict], scripted: bool = False) -> list[str]:
    """Names of the datasets some trial needs that are not on disk (scripted ones only if asked)."""
    return [n for n in used_datasets(experiment, trials)
            if (scripted or "scripted" not in experiment.needs[n]) and not experiment.dataset_path(n).exists()]


def check_datasets(experiment: Experiment, trials: list[dict]) -> None:
    missing = missing_datasets(experiment, trials)
    if missing:
        lines = "; ".join(f"{experiment.dataset_path(n)} (make it with: {experiment.make_command(n)})"
                          for n in missing)
        raise UserError(f"{experiment.file}: missing dataset(s) under the data root {experiment.data_root}: "
                        f"{lines}. Or point --data at the directory that holds them.")


def make_scripted(experiment: Experiment, trials: list[dict]) -> None:
    """Make the scripted datasets the trials need and that are not there yet (deterministic per seed)."""
    from coworld.data.make import make_dataset

    check_datasets(experiment, trials)  # the others must be there already
    for name in missing_datasets(experiment, trials, scripted=True):
        s = experiment.needs[name]["scripted"]
        out = experiment.dataset_path(name)
        print(f"making dataset {name}: {experiment.make_command(name)}", flush=True)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        options = {"time_limit": s["time_limit"]} if s.get("time_limit") else {}
        make_dataset(s["env"], s["level"], s["episodes"], tmp, seed=s.get("seed", 0), **options)
        tmp.rename(out)
