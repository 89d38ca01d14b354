"""Bit-exact resume: a run killed at any moment (kill -9, SIGTERM) and re-run with the same command
ends in the same state as an uninterrupted run; a larger --steps extends a finished run exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coworld.run.checkpoint import load_checkpoint
from coworld.run.session import busy_cores as REAL_BUSY_CORES  # captured before conftest replaces it

SMALL = [
    "model.depth=4", "model.stoch=4", "model.deter=16", "model.hidden=16", "model.units=16",
    "behaviour.actor_units=16", "behaviour.critic_units=16", "behaviour.horizon=3",
    "behaviour.slow_critic_every=7", "train.batch=2", "train.length=6", "train.prefill=30",
    "train.pretrain=3", "train.train_every=4", "train.checkpoint_every=10", "train.log_every=10",
    "train.eval_every=60", "train.eval_episodes=1", "train.threads=1", "env.time_limit=15",
]


def command(logdir, steps, algo_args, sets=SMALL):
    args = [sys.executable, "-m", "coworld", "train", *algo_args, "--preset", "tiny", "--steps", str(steps),
            "--logdir", str(logdir), "--seed", "3", "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args


def run(logdir, steps, algo_args, sets=SMALL):
    proc = subprocess.run(command(logdir, steps, algo_args, sets), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_and_kill(logdir, steps, algo_args, sig, after_checkpoints, sets=SMALL):
    """Start the run, wait until it has rewritten its checkpoint a few times, then send ``sig``."""
    proc = subprocess.Popen(command(logdir, steps, algo_args, sets), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt = Path(logdir) / "checkpoint.pt"
    seen, last = 0, None
    deadline = time.time() + 240
    while proc.poll() is None and seen < after_checkpoints and time.time() < deadline:
        mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        if mtime != last and mtime is not None:
            seen, last = seen + 1, mtime
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


def assert_same_state(a_dir, b_dir):
    a, b = load_checkpoint(a_dir), load_checkpoint(b_dir)
    assert a["counters"] == b["counters"]

    def walk(x, y, path):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{path} differs"
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, str) and x.endswith(".npz"):  # episode files: same sequence number and length
            assert x.split("-")[1][:8] + x.split("-")[-1] == y.split("-")[1][:8] + y.split("-")[-1], path
        else:
            assert x == y, f"{path}: {x!r} != {y!r}"

    for key in a:
        if key not in ("rng", "logger"):
            walk(a[key], b[key], key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


DREAMER = ["--algo", "dreamer", "--env", "builtin:reach"]


@pytest.mark.slow
def test_dreamer_kill9_and_sigterm_resume_bit_identical(tmp_path):
    steps = 140
    run(tmp_path / "ref", steps, DREAMER)
    # kill -9 mid-run (possibly mid-episode or mid-write), then SIGTERM, then finish
    proc = run_and_kill(tmp_path / "cut", steps, DREAMER, signal.SIGKILL, after_checkpoints=4)
    assert proc.returncode == -signal.SIGKILL
    proc = run_and_kill(tmp_path / "cut", steps, DREAMER, signal.SIGTERM, after_checkpoints=3)
    assert proc.returncode in (0, 128 + signal.SIGTERM), proc.stderr[-2000:]
    run(tmp_path / "cut", steps, DREAMER)
    assert_same_state(tmp_path / "ref", tmp_path / "cut")
    ref_files = sorted(p.name for p in (tmp_path / "ref" / "replay").glob("*.npz"))
    cut_files = sorted(p.name for p in (tmp_path / "cut" / "replay").glob("*.npz"))
    assert [f.split("-")[-1] for f in ref_files] == [f.split("-")[-1] for f in cut_files]


@pytest.mark.slow
def test_dreamer_extend_finished_run_equals_longer_run(tmp_path):
    run(tmp_path / "long", 120, DREAMER)
    run(tmp_path / "ext", 70, DREAMER)
    run(tmp_path / "ext", 120, DREAMER)
    assert_same_state(tmp_path / "long", tmp_path / "ext")


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tmp_path / "r", 20, DREAMER)
    args = command(tmp_path / "r", 20, ["--algo", "dreamer", "--env", "builtin:wall"])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "other settings" in proc.stderr and "builtin:wall" in proc.stderr


def test_free_cores_counts_the_cores_other_jobs_keep_busy(monkeypatch):
    from coworld.run import session

    monkeypatch.setattr(session.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(session.os, "getloadavg", lambda: (3.0, 0.0, 0.0))  # lagging: not used when busy is known
    for busy, want in ((0.0, 4), (1.4, 3), (2.6, 1), (10.0, 1)):
        monkeypatch.setattr(session, "busy_cores", lambda busy=busy: busy)
        assert session.free_cores() == (want, 4, busy)
    monkeypatch.setattr(session, "busy_cores", lambda: None)  # no /proc/stat: the load average
    assert session.free_cores() == (1, 4, 3.0)


def test_busy_cores_reads_the_non_idle_share_of_proc_stat(tmp_path, monkeypatch):
    """Two reads of the cpu line 0.3 s apart: (busy ticks) / (all ticks) x CPU count; idle and iowait are idle."""
    from coworld.run import session

    busy_cores = REAL_BUSY_CORES  # tests/conftest.py replaces session.busy_cores in every test
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    # 0.3 s later: +60 user, +20 system (busy 80), +100 idle, +20 iowait: 200 ticks, 40% busy
    monkeypatch.setattr(session.time, "sleep", lambda s: stat.write_text("cpu  160 0 70 900 70 0 0 0 0 0\n"))
    monkeypatch.setattr(session.os, "cpu_count", lambda: 2)
    assert busy_cores(stat=str(stat)) == 0.4 * 2
    assert busy_cores(stat=str(tmp_path / "missing")) is None


def test_threads_zero_is_resolved_once_and_recorded(tmp_path):
    """train.threads=0 picks the free cores at the start and writes the choice into config.json, which a
    resumed run reads (so it keeps the thread count it started with)."""
    import json

    sets = [s for s in SMALL if not s.startswith("train.threads")]
    proc = subprocess.run(command(tmp_path / "r", 40, ["--algo", "dreamer", "--env", "builtin:reach"], sets),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["threads"]
    assert 1 <= threads <= (os.cpu_count() or 1)
    assert f"using {threads} of" in proc.stdout
