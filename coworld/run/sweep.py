"""``coworld sweep FILE --out DIR``: run an experiment file's grid of trials, on Ray or here.

The sweep directory (docs/experiments.md; read by ``coworld report``)::

    OUT/sweep.json          {"experiment", "file", "trials": [trial, ...], ...}
    OUT/trials/<id>.json    one trial (experiment.py, expand)
    OUT/runs/<id>/          its run directory, as `coworld train --logdir` makes it, plus
                            worker.pid (the process training it), stdout.log, and done.json once finished

Each trial is one :func:`coworld.run.api.train` call in its own run directory. With Ray (the
``[ray]`` extra) every trial is a ``ray.remote`` task declaring its CPUs and GPUs; a task whose
worker dies (kill -9, a lost node) is retried by Ray (``max_retries``) and the retry resumes the run
from its checkpoint, bit-exactly (docs/reliability.md). Without Ray the trials run one after
another in this process. Re-running a sweep skips the trials that have ``done.json`` and resumes the
others.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import traceback
from pathlib import Path

from coworld.errors import MissingDependency, UserError
from coworld.run.experiment import Experiment, expand, expand_costed, load_experiment, make_scripted, missing_datasets

RAY_HINT = "pip install 'coworld[ray]'"
DONE = "done.json"
PID = "worker.pid"


# exit codes of a run stopped by Ctrl-C / SIGTERM after saving its checkpoint (128 + signal number)
INTERRUPTED, PREEMPTED = 128 + signal.SIGINT, 128 + signal.SIGTERM


class TrialStopped(UserError):
    """A trial's training returned without finishing (stopped by a signal)."""

    def __init__(self, trial_id: str, code: int):
        super().__init__(f"trial {trial_id} stopped (exit code {code}); re-run the sweep to resume it")
        self.trial_id, self.code = trial_id, code

    def __reduce__(self):  # Ray pickles a task's exception to the driver; the default would call cls(message)
        return type(self), (self.trial_id, self.code)


class TrialPreempted(TrialStopped):
    """A trial stopped by SIGTERM (a preempted node, `ray stop`) after saving its checkpoint: Ray
    retries it like a dead worker, and the retry resumes."""


def run_dir(out, trial: dict) -> Path:
    return Path(out) / "runs" / trial["id"]


def is_done(out, trial: dict) -> bool:
    return (run_dir(out, trial) / DONE).exists()


def _add_partial_wall(directory: Path, seconds: float, cpu: float) -> dict:
    """Wall and CPU (process) time of a trial summed over its segments (a segment killed with -9 is
    not counted)."""
    path = directory / "wall_partial.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    total = {"wall_s": old.get("wall_s", 0.0) + seconds, "cpu_s": old.get("cpu_s", 0.0) + cpu}
    path.write_text(json.dumps(total))
    return total


def run_trial(trial: dict, out: str) -> dict:
    """Train one trial in OUT/runs/<id> (resuming what is there) and write its done.json.

    The unit of work of a sweep: a Ray task, or a plain call without Ray. The trial's output goes to
    RUN/stdout.log; its process id to RUN/worker.pid (so a test, or a person, can find the worker).
    """
    import torch

    from coworld.run import api
    from coworld.run.checkpoint import write_text_atomic

    directory = run_dir(out, trial)
    done = directory / DONE
    if done.exists():
        return json.loads(done.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PID).write_text(str(os.getpid()))
    torch.set_num_threads(int(trial["resources"]["cpus"]))
    start, cpu = time.time(), time.process_time()
    with open(directory / "stdout.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", flush=True)
        try:
            result = api.train(trial["algo"], directory, trial["steps"], preset=trial["preset"],
                               overrides=trial["overrides"], seed=trial["seed"], progress=False,
                               **trial["inputs"], **trial["ablations"])
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            spent = _add_partial_wall(directory, time.time() - start, time.process_time() - cpu)
    if result["exit_code"] != 0:
        stopped = TrialPreempted if result["exit_code"] == PREEMPTED else TrialStopped
        raise stopped(trial["id"], result["exit_code"])
    record = {"id": trial["id"], "wall_s": spent["wall_s"], "cpu_s": spent["cpu_s"],
              "final_returns": result["final_returns"], "host": socket.gethostname(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text_atomic(done, json.dumps(record, indent=1))
    return record


def write_sweep(experiment: Experiment, trials: list[dict], out: Path, variant: str | None) -> None:
    """OUT/sweep.json and OUT/trials/<id>.json, before anything is launched. A trial already recorded
    there must be the same trial (else the directory belongs to another sweep); new trials are added."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials").mkdir(exist_ok=True)
    path = out / "sweep.json"
    known: dict[str, dict] = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("experiment") != experiment.name:
            raise UserError(f"{out} holds the sweep of experiment {old.get('experiment')!r}, not "
                            f"{experiment.name!r}; choose another --out")
        known = {t["id"]: t for t in old.get("trials", [])}
    for t in trials:
        before = known.get(t["id"])
        if before is not None and before != t:
            diff = sorted(k for k in set(before) | set(t) if before.get(k) != t.get(k))
            raise UserError(f"{out} holds trial {t['id']} with other settings ({', '.join(diff)}); re-run with the "
                            "same file, variant and --set / --data, or choose another --out")
        known[t["id"]] = t
    record = {"experiment": experiment.name, "file": experiment.file, "description": experiment.description,
              "variant": variant, "data_root": str(experiment.data_root.resolve()), "trials": list(known.values())}
    from coworld.run.checkpoint import write_text_atomic

    for t in trials:
        write_text_atomic(out / "trials" / f"{t['id']}.json", json.dumps(t, indent=1))
    write_text_atomic(path, json.dumps(record, indent=1))


class Progress:
    """done / running / failed / pending, and an ETA for the trials not finished.

    A trial's expected wall time is its cost (gradient updates, :func:`trial_cost`) times the seconds per
    unit of cost of its method's finished trials, or of all finished trials while its method has none;
    per method, because a model-free update costs far less than a world-model one. The running trials
    are taken to be the first unfinished ones in sweep order, half done."""

    def __init__(self, slots: int, out: Path, trials: list[dict], costs: dict[str, int]):
        self.slots, self.trials, self.costs = max(1, slots), trials, costs
        self.start = time.time()
        self.walls = {t["id"]: json.loads((run_dir(out, t) / DONE).read_text()).get("wall_s", 0.0)
                      for t in trials if is_done(out, t)}

    def finished(self, record: dict) -> None:
        self.walls[record["id"]] = float(record.get("wall_s", 0.0))

    def line(self, done: int, running: int, failed: dict[str, str]) -> str:
        total = len(self.trials)
        pending = total - done - running - len(failed)
        text = (f"[sweep {time.time() - self.start:6.0f}s] done {done}/{total}, running {running}, "
                f"failed {len(failed)}, pending {pending}")
        left = [t for t in self.trials if t["id"] not in self.walls and t["id"] not in failed]
        if self.walls and left:
            spent: dict[str | None, list[float]] = {None: [0.0, 0.0]}  # method -> [wall seconds, cost]
            for t in self.trials:
                if t["id"] in self.walls:
                    for key in (None, t["method"]):
                        acc = spent.setdefault(key, [0.0, 0.0])
                        acc[0] += self.walls[t["id"]]
                        acc[1] += self.costs[t["id"]]
            rate = {key: wall / max(cost, 1) for key, (wall, cost) in spent.items()}
            est = [self.costs[t["id"]] * rate.get(t["method"], rate[None]) for t in left]
            eta = (sum(est) - 0.5 * sum(est[:running])) / self.slots
            text += f"; ETA ~{_duration(eta)} ({self.slots} at a time)"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _ray():
    try:
        import ray
    except ImportError:
        return None
    return ray


def run_local(trials: list[dict], out: Path, costs: dict[str, int]) -> dict:
    """One trial after another in this process; the progress line comes before each trial (a trial's
    own progress is in its stdout.log)."""
    progress = Progress(1, out, trials, costs)
    done = sum(is_done(out, t) for t in trials)
    failed: dict[str, str] = {}
    for t in trials:
        if is_done(out, t):
            continue
        print(progress.line(done, 1, failed) + f"; now {t['id']}", flush=True)
        try:
            record = run_trial(t, str(out))
        except TrialStopped as exc:
            if exc.code in (INTERRUPTED, PREEMPTED):  # the run saved its checkpoint
                raise UserError(f"sweep interrupted during {t['id']} (saved); re-run the same command to "
                                "resume") from None
            failed[t["id"]] = str(exc)
            print(f"trial {t['id']} failed: {exc}", flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - one trial's error stops only that trial, as under Ray
            failed[t["id"]] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"trial {t['id']} failed: {failed[t['id']]} (log: {run_dir(out, t) / 'stdout.log'})", flush=True)
            continue
        done += 1
        progress.finished(record)
        print(f"finished {t['id']} in {_duration(record['wall_s'])}", flush=True)
    print(progress.line(done, 0, failed), flush=True)
    return {"done": done, "failed": failed}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _running(out: Path, trials: list[dict], since: float, local: bool) -> int:
    """Trials whose worker has started in this sweep (wrote worker.pid) and not finished; on a local
    Ray, a worker that died (its retry still queued) does not count."""
    count = 0
    for t in trials:
        path = run_dir(out, t) / PID
        try:
            if path.stat().st_mtime < since - 1 or is_done(out, t):
                continue
            if local and not _alive(int(path.read_text())):
                continue
        except (OSError, ValueError):
            continue
        count += 1
    return count


def run_ray(ray, trials: list[dict], out: Path, costs: dict[str, int], every: float, retries: int,
            local: bool = True) -> dict:
    """One Ray task per unfinished trial; a worker that dies is retried (``retries`` times) and resumes."""
    task = ray.remote(run_trial)
    have = ray.cluster_resources()
    need_cpus = max(t["resources"]["cpus"] for t in trials)
    need_gpus = max(t["resources"]["gpus"] for t in trials)
    if local and (need_cpus > have.get("CPU", 0) or need_gpus > have.get("GPU", 0)):
        raise UserError(f"a trial asks for {need_cpus} CPUs and {need_gpus} GPUs, but this Ray has "
                        f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs, so it would wait forever; "
                        "pass --cpus / --gpus (e.g. --gpus 0 on a machine without a GPU)")
    slots = int(have.get("CPU", 1) // need_cpus)
    if need_gpus:
        slots = min(slots, int(have.get("GPU", 0) // need_gpus))
    slots = max(1, slots)
    progress = Progress(slots, out, trials, costs)
    done = sum(is_done(out, t) for t in trials)
    refs = {}
    for t in trials:
        if is_done(out, t):
            continue
        opts = {"num_cpus": t["resources"]["cpus"], "num_gpus": t["resources"]["gpus"], "max_retries": retries,
                "retry_exceptions": [TrialPreempted], "name": t["id"]}
        refs[task.options(**opts).remote(t, str(out.resolve()))] = t
    failed: dict[str, str] = {}
    start, last = time.time(), time.time()
    print(progress.line(done, 0, {}), flush=True)
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in ready:
            t = refs.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task's error, or its retries ran out
                cause = getattr(exc, "cause", None) or exc
                failed[t["id"]] = f"{type(cause).__name__}: {cause}".splitlines()[0]
                print(f"trial {t['id']} failed: {failed[t['id']]} (log: {run_dir(out, t) / 'stdout.log'})", flush=True)
                continue
            done += 1
            progress.finished(record)
            print(f"finished {t['id']} in {_duration(record['wall_s'])} on {record.get('host')}", flush=True)
        if time.time() - last >= every and refs:
            last = time.time()
            print(progress.line(done, _running(out, list(refs.values()), start, local), failed), flush=True)
    print(progress.line(done, 0, failed), flush=True)
    return {"done": done, "failed": failed}


def run_sweep(experiment: Experiment, out, *, backend: str = "auto", address: str | None = None,
              num_cpus: int | None = None, retries: int = 3, every: float = 30.0, variant: str | None = None) -> dict:
    """Make the scripted datasets, write the sweep directory, run the unfinished trials.
    Returns ``{"trials", "done", "failed": {id: error}, "backend"}``."""
    out = Path(out)
    costed = expand_costed(experiment)
    trials, costs = [t for _, t in costed], {t["id"]: c for c, t in costed}
    make_scripted(experiment, trials)
    write_sweep(experiment, trials, out, variant)
    todo = [t for t in trials if not is_done(out, t)]
    print(f"sweep {experiment.name}: {len(trials)} trials ({len(trials) - len(todo)} finished before) in {out}",
          flush=True)
    ray = _ray() if backend in ("auto", "ray") else None
    if backend == "ray" and ray is None:
        raise UserError(f"--backend ray: ray is not installed; {RAY_HINT}")
    if not todo:
        result = {"done": len(trials), "failed": {}}
    elif ray is None:
        if backend == "auto":
            print(f"note: ray is not installed, so the trials run one after another in this process; "
                  f"{RAY_HINT} to run them in parallel or on a cluster", flush=True)
        result = run_local(trials, out, costs)
    else:
        started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False)
            started = True
        try:
            result = run_ray(ray, trials, out, costs, every, retries, local=not address)
        finally:
            if started:
                ray.shutdown()
    result.update(trials=len(trials), backend="local" if ray is None else "ray")
    return result


def _importable(name: str) -> bool:
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def cmd_sweep(args) -> int:
    if args.retries < 0 or args.progress_every <= 0:  # Ray reads max_retries=-1 as "retry forever"
        raise UserError("--retries must be 0 or more and --progress-every above 0")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    overrides = list(args.overrides)
    if args.wandb:
        if not _importable("wandb"):  # before any trial starts, not in each of them
            raise MissingDependency("wandb", "wandb", "coworld sweep --wandb")
        overrides += ["train.wandb=true", f"train.wandb_project={args.wandb}"]
    experiment = load_experiment(args.file, variant=args.variant, data_root=args.data, check_data=not args.dry_run,
                                 methods=methods, tasks=tasks, overrides=overrides,
                                 resources={"cpus": args.cpus, "gpus": args.gpus})
    if args.wandb:
        experiment.cli_overrides.append(f"train.wandb_group={experiment.name}")
    trials = expand(experiment)
    if args.dry_run:
        for t in trials:
            src = f" source {','.join(t['source'])}" if t["source"] else ""
            print(f"{t['id']}: {t['algo']} {t['steps']} steps{src} target {t['target']} seed {t['seed']}")
        for name in missing_datasets(experiment, trials, scripted=True):
            made = "made by the sweep" if "scripted" in experiment.needs[name] else "missing"
            print(f"dataset {name} ({made}): {experiment.make_command(name)}")
        print(f"{len(trials)} trials; nothing was run (--dry-run)")
        return 0
    result = run_sweep(experiment, args.out, backend=args.backend, address=args.address, num_cpus=args.num_cpus,
                       retries=args.retries, every=args.progress_every, variant=args.variant)
    if result["failed"]:
        lines = "\n".join(f"  {k}: {v}" for k, v in result["failed"].items())
        print(f"{len(result['failed'])} trial(s) failed:\n{lines}\nFix the cause and re-run the same command: "
              "finished trials are skipped, the others resume.", flush=True)
        return 1
    print(f"all {result['trials']} trials finished; runs in {Path(args.out) / 'runs'}; "
          f"summarise with `coworld report {args.out}`")
    return 0


def register(sub, groups=None) -> None:
    p = sub.add_parser("sweep", help="run an experiment file's grid of trials (on Ray if installed)",
                       description="Run the trials of an experiment file (experiments/*.toml, docs/experiments.md), "
                       "each a `coworld train` in OUT/runs/<id>. With Ray installed (pip install 'coworld[ray]') "
                       "they run in parallel, locally or on a cluster (--address), and a trial whose worker dies "
                       "is retried from its checkpoint; without it, one after another. Re-running the same "
                       "command skips finished trials and resumes the others.")
    p.add_argument("file", help="experiment file, e.g. experiments/builtin.toml")
    p.add_argument("--out", required=True, help="sweep directory (created, or resumed)")
    p.add_argument("--data", default="data", help="root of the datasets' paths in the file (default ./data)")
    p.add_argument("--variant", help="a [variants.NAME] of the file, e.g. quick")
    p.add_argument("--methods", help="comma-separated method labels to run (default all)")
    p.add_argument("--tasks", help="comma-separated task labels to run (default all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override added to every trial (repeatable), e.g. --set train.device=cuda")
    p.add_argument("--cpus", type=int, help="CPUs of each trial (default: the file's resources)")
    p.add_argument("--gpus", type=float, help="GPUs of each trial, e.g. 1, or 0.5 to put two on a GPU "
                   "(default: the file's resources)")
    p.add_argument("--backend", choices=("auto", "ray", "local"), default="auto",
                   help="ray, local (one trial after another here), or auto: ray if installed (default)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto, or ray://HOST:10001); default: a local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine's)")
    p.add_argument("--retries", type=int, default=3, help="times Ray retries a trial whose worker died (default 3)")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines on Ray (default 30; without Ray, one line per trial)")
    p.add_argument("--wandb", nargs="?", const="coworld", metavar="PROJECT",
                   help="also log every trial to Weights & Biases (pip install 'coworld[wandb]'), project PROJECT "
                   "(default coworld), grouped by experiment")
    p.add_argument("--dry-run", action="store_true", help="list the trials and the datasets to make; run nothing")
    p.set_defaults(func=cmd_sweep)
