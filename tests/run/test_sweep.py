"""`coworld sweep`: the sweep directory, the local fallback, and on a local Ray (2 CPUs) a built-in
sweep of 2 methods x 2 seeds that survives a SIGKILL of one trial's worker with the same final state
as an uninterrupted run, and a re-run that trains nothing."""

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from coworld.errors import UserError
from coworld.run import sweep
from coworld.run.checkpoint import load_checkpoint
from coworld.run.experiment import expand, load_experiment
from tests.run.test_resume import assert_same_state

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ROOT / "experiments" / "builtin.toml"
VICTIM = "coworld__reach-src-reach__s0"
PREEMPTED = "offline-dv2__reach-src-reach__s0"


def quick(data, **kw):
    return load_experiment(BUILTIN, variant="quick", data_root=data, **kw)


def test_sweep_directory_layout_and_conflicts(tmp_path):
    exp = quick(tmp_path / "data", check_data=False)
    trials = expand(exp)
    sweep.write_sweep(exp, trials, tmp_path / "out", "quick")
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert record["experiment"] == "builtin" and record["file"] == str(BUILTIN)
    assert [t["id"] for t in record["trials"]] == [t["id"] for t in trials]
    one = json.loads((tmp_path / "out" / "trials" / f"{VICTIM}.json").read_text())
    for key in ("id", "experiment", "method", "algo", "task", "source", "target", "dataset", "seed", "preset",
                "overrides", "ablations", "steps", "resources", "group"):
        assert key in one, key
    assert one["method"] == "CoWorld" and one["task"] == "reach-src->reach" and one["source"] == ["builtin:reach-src"]
    assert one["resources"] == {"cpus": 1, "gpus": 0} and "train.threads=1" in one["overrides"]
    # the same sweep again is fine; the same directory with other settings is refused
    sweep.write_sweep(exp, trials, tmp_path / "out", "quick")
    other = quick(tmp_path / "data", check_data=False, overrides=["train.batch=3"])
    with pytest.raises(UserError, match="other settings"):
        sweep.write_sweep(other, expand(other), tmp_path / "out", "quick")


def test_trial_stopped_survives_pickling():
    # a Ray task's exception travels to the driver pickled; it must come back whole
    import pickle

    back = pickle.loads(pickle.dumps(sweep.TrialStopped("m__t__s0", 143)))
    assert isinstance(back, sweep.TrialStopped) and back.code == 143 and "m__t__s0" in str(back)


def test_bad_retries_is_one_clear_error(tmp_path, capsys):
    from coworld.cli import main

    assert main(["sweep", str(BUILTIN), "--out", str(tmp_path / "out"), "--retries", "-1"]) == 2
    assert "--retries must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_progress_eta_weighs_each_trial_by_its_cost_and_its_methods_rate(tmp_path):
    trials = [{"id": i, "method": i[0]} for i in ("A0", "B0", "A1", "B1", "A2", "B2", "C0")]
    costs = {"A0": 100, "A1": 100, "A2": 100, "B0": 1000, "B1": 1000, "B2": 1000, "C0": 110}
    p = sweep.Progress(slots=2, out=tmp_path, trials=trials, costs=costs)
    assert "ETA" not in p.line(0, 2, {})  # nothing finished: no estimate yet
    p.finished({"id": "A0", "wall_s": 20.0})  # method A: 0.2 s per unit of cost
    p.finished({"id": "B0", "wall_s": 50.0})  # method B: 0.05 s per unit
    line = p.line(done=2, running=2, failed={})
    assert "done 2/7, running 2, failed 0, pending 3" in line
    # A1 20 + B1 50 (running: half) + A2 20 + B2 50 + C0 110 * (70 / 1100) = 7 (no C finished: the overall
    # rate); (147 - 35) / 2 slots = 56 s
    assert "ETA ~56s (2 at a time)" in line
    line = p.line(done=2, running=2, failed={"B2": "boom"})  # a failed trial is not waited for
    assert "failed 1, pending 2" in line and "ETA ~31s" in line  # (97 - 35) / 2
    for i in ("A1", "B1", "A2", "B2", "C0"):
        p.finished({"id": i, "wall_s": 1.0})
    assert "ETA" not in p.line(7, 0, {})


@pytest.mark.slow
def test_local_fallback_runs_and_skips_finished(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "_ray", lambda: None)  # as if ray were not installed
    exp = quick(tmp_path / "data", methods=["Offline DV2"])
    exp.seeds = [0]
    out = tmp_path / "out"
    result = sweep.run_sweep(exp, out, every=1000)
    assert result == {"done": 1, "failed": {}, "trials": 1, "backend": "local"}
    text = capsys.readouterr().out
    assert "ray is not installed" in text and "pip install 'coworld[ray]'" in text
    run = out / "runs" / "offline-dv2__reach-src-reach__s0"
    done = json.loads((run / "done.json").read_text())
    assert done["wall_s"] > 0 and 0 < done["cpu_s"] and len(done["final_returns"]) == 1
    assert load_checkpoint(run)["run"]["finished"]
    mtime = (run / "checkpoint.pt").stat().st_mtime_ns
    result = sweep.run_sweep(exp, out, every=1000)
    assert result["done"] == 1 and (run / "checkpoint.pt").stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _kill_after_checkpoint(run: Path, killed: list, deadline: float, sig=signal.SIGKILL) -> None:
    """Send ``sig`` to the worker training ``run`` once it has checkpointed past its start."""
    while time.time() < deadline and not (run / "done.json").exists():
        try:
            position = load_checkpoint(run)["run"]["position"] if (run / "checkpoint.pt").exists() else 0
            pid = int((run / "worker.pid").read_text())
        except (OSError, ValueError, KeyError, RuntimeError, EOFError):
            position = 0
        if position > 0:
            os.kill(pid, sig)
            killed.append((pid, position))
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_ray_sweep_survives_sigkill_and_rerun_trains_nothing(local_ray, tmp_path):
    out = tmp_path / "out"
    exp = quick(tmp_path / "data")
    run = out / "runs" / VICTIM
    killed: list = []
    killer = threading.Thread(target=_kill_after_checkpoint, args=(run, killed, time.time() + 120), daemon=True)
    # a second trial's worker gets SIGTERM (a preempted node): it saves, and Ray retries it too
    preempted_run, preempted = out / "runs" / PREEMPTED, []
    stopper = threading.Thread(target=_kill_after_checkpoint, daemon=True,
                               args=(preempted_run, preempted, time.time() + 120, signal.SIGTERM))
    killer.start()
    stopper.start()
    t0 = time.time()
    result = sweep.run_sweep(exp, out, backend="ray", every=5)
    killer.join(timeout=5)
    stopper.join(timeout=5)
    print(f"ray sweep of 4 trials with one SIGKILL and one SIGTERM: {time.time() - t0:.1f} s")
    assert killed, "the victim's worker was not killed"
    assert preempted, "the second trial's worker was not stopped"
    assert (preempted_run / "stdout.log").read_text().count("--- ") == 2  # stopped, then resumed by the retry
    assert result["failed"] == {} and result["done"] == 4 and result["backend"] == "ray"
    ids = [t["id"] for t in expand(exp)]
    assert all((out / "runs" / i / "done.json").exists() for i in ids)
    assert int((run / "worker.pid").read_text()) != killed[0][0]  # the retry ran in another worker
    assert "Traceback" not in (run / "stdout.log").read_text()

    # the killed trial ends exactly as an uninterrupted run of the same trial
    trial = json.loads((out / "trials" / f"{VICTIM}.json").read_text())
    sweep.run_trial(trial, str(tmp_path / "reference"))
    assert_same_state(run, tmp_path / "reference" / "runs" / VICTIM)

    # re-running the finished sweep trains nothing
    stamps = {i: (out / "runs" / i / "checkpoint.pt").stat().st_mtime_ns for i in ids}
    t1 = time.time()
    again = sweep.run_sweep(exp, out, backend="ray", every=5)
    assert again["done"] == 4 and again["failed"] == {}
    assert {i: (out / "runs" / i / "checkpoint.pt").stat().st_mtime_ns for i in ids} == stamps
    assert time.time() - t1 < 10


def test_a_failing_trial_is_reported_and_the_command_exits_1(tmp_path, monkeypatch, capsys):
    from coworld.cli import main

    monkeypatch.setattr(sweep, "_ray", lambda: None)
    text = BUILTIN.read_text().replace('scripted = { env = "builtin:reach", level = "medium-replay", episodes = 6, seed = 0, '
                                       'time_limit = 30 }', 'make = "coworld data make --out {data}/x"')
    assert text != BUILTIN.read_text()
    path = tmp_path / "broken.toml"
    path.write_text(text)
    (tmp_path / "data" / "builtin" / "reach-medium-replay-6ep-30steps").mkdir(parents=True)  # there, but empty
    code = main(["sweep", str(path), "--variant", "quick", "--methods", "Offline DV2", "--out", str(tmp_path / "out"),
                 "--data", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 trial(s) failed" in out and "offline-dv2__reach-src-reach__s0:" in out and "re-run the same command" in out
    assert not (tmp_path / "out" / "runs" / "offline-dv2__reach-src-reach__s0" / "done.json").exists()


@pytest.mark.slow
def test_ray_refuses_resources_it_does_not_have(local_ray, tmp_path):
    exp = quick(tmp_path / "data", resources={"gpus": 1})  # this Ray has no GPU: the tasks would wait forever
    with pytest.raises(UserError, match="asks for 1 CPUs and 1 GPUs, but this Ray has 2 CPUs and 0 GPUs"):
        sweep.run_sweep(exp, tmp_path / "out", backend="ray")
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_rerun_after_the_driver_is_killed_resumes_the_unfinished_trial(tmp_path):
    """kill -9 of a local (no Ray) sweep mid-trial; the same command again resumes that trial from its
    checkpoint and finishes the sweep."""
    import subprocess
    import sys

    out, data = tmp_path / "out", tmp_path / "data"
    cmd = [sys.executable, "-m", "coworld", "sweep", str(BUILTIN), "--variant", "quick", "--methods", "Offline DV2",
           "--out", str(out), "--data", str(data), "--backend", "local"]
    run = out / "runs" / "offline-dv2__reach-src-reach__s0"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed: list = []
    _kill_after_checkpoint(run, killed, time.time() + 120)  # the driver runs the trial itself: kill it
    proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL
    assert not (run / "done.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "all 2 trials finished" in rerun.stdout
    log = (run / "stdout.log").read_text()
    assert log.count("--- ") == 2  # two segments: the killed one and the resumed one
    state = load_checkpoint(run)["run"]
    assert state["finished"] and state["position"] == 80


@pytest.mark.slow
def test_ctrl_c_of_a_local_sweep_saves_and_says_how_to_resume(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "coworld", "sweep", str(BUILTIN), "--variant", "quick", "--methods", "Offline DV2",
           "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), "--backend", "local"]
    run = tmp_path / "out" / "runs" / "offline-dv2__reach-src-reach__s0"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(run)["run"]["position"] > 0:
                break
        except Exception:  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "sweep interrupted during offline-dv2__reach-src-reach__s0 (saved)" in err
    assert 0 < load_checkpoint(run)["run"]["position"] < 80 and not (run / "done.json").exists()
