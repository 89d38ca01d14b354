"""Reliability of a run directory (issue 14): one process per directory, inputs checked before the
first step, NaN/inf caught after every update and a documented way to continue with changed optimiser
settings, a full disk, re-running a finished run, and every environment closed at the end."""

import errno
import hashlib
import io
import json
import os
import socket
import subprocess
import time

import pytest
import torch

from coworld import cli, envs
from coworld.algos.dreamer import DreamerAgent
from coworld.config import load_config
from coworld.errors import UserError
from coworld.run.checkpoint import load_checkpoint
from tests.run.test_divergence import assert_default_signal_handlers, assert_finite_agent
from tests.run.test_resume import SMALL, command

DREAMER = ["--algo", "dreamer", "--env", "builtin:reach"]
# CoWorld with one block per stage: every stage runs, in a few seconds
COWORLD_SMALL = ["coworld.warmup_blocks=1", "coworld.wm_warmup_rounds=1", "coworld.outer_iters=1",
                 "coworld.target_blocks=1", "coworld.source_blocks=1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Tiny datasets: 64x64 builtin:reach, 84x84 builtin:reach, and builtin:reach-src (3-D actions)."""
    from coworld.data.make import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset("builtin:reach", "random", 2, root / "reach", time_limit=15)
    make_dataset("builtin:reach", "random", 2, root / "reach84", time_limit=15, image_size=84)
    make_dataset("builtin:reach-src", "random", 2, root / "src3d", time_limit=15)
    return root


def train(logdir, steps, *extra, algo=DREAMER, sets=()):
    args = ["train", *algo, "--preset", "tiny", "--steps", str(steps), "--logdir", str(logdir), "--seed", "3",
            "--no-progress", *extra]
    for item in SMALL + list(sets):
        args += ["--set", item]
    return cli.main(args)


def snapshot(directory):
    """Every file of a run (but the lock) with its mtime and content hash."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


# -- 1. one process per run directory -----------------------------------------------------------

def test_second_session_on_a_directory_is_refused_until_the_first_closes(tmp_path):
    from coworld.run.session import Session

    def session():
        return Session(tmp_path, run_args={"algo": "x"}, cfg=load_config("tiny"), total=10, unit="step",
                       progress=False)

    first = session()
    with pytest.raises(UserError, match=rf"in use by another coworld process \(pid {os.getpid()} on host "):
        session()
    first.close()
    session().close()  # released with the session


def test_second_process_exits_at_once_and_kill9_leaves_nothing_to_clean(tmp_path):
    logdir = tmp_path / "run"
    sets = SMALL + ["train.prefill=1000000", "train.eval_every=0"]  # random steps only, checkpoints every 10
    holder = subprocess.Popen(command(logdir, 10**6, DREAMER, sets), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (logdir / "checkpoint.pt").exists():
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        start = time.time()
        second = subprocess.run(command(logdir, 10**6, DREAMER, sets), capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{logdir} is in use by another coworld process (pid {holder.pid} on host {socket.gethostname()}" \
            in second.stderr
        assert time.time() - start < 30
        assert holder.poll() is None  # the holder works on, undisturbed
    finally:
        holder.kill()  # kill -9
        holder.wait()
    # Nothing to clean up: the same command resumes the directory (here extended by 5 steps).
    done = load_checkpoint(logdir)["collector"]["steps"]
    proc = subprocess.run(command(logdir, done + 5, DREAMER, sets), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(logdir)["collector"]["steps"] == done + 5


# -- 5. inputs checked before the first step ----------------------------------------------------

def test_offline_wrong_image_size_is_refused_before_anything_is_written(tmp_path, datasets, capsys):
    algo = ["--algo", "offline-dv2", "--dataset", str(datasets / "reach84"), "--env", "builtin:reach"]
    assert train(tmp_path / "run", 5, algo=algo) == 2
    err = capsys.readouterr().err
    assert "has 84x84x3 images but the model takes 64x64x3" in err and "--resize 64" in err
    assert not (tmp_path / "run").exists()


def test_offline_wrong_action_dim_is_refused_before_training(tmp_path, datasets, capsys):
    algo = ["--algo", "offline-dv2", "--dataset", str(datasets / "src3d"), "--env", "builtin:reach"]
    assert train(tmp_path / "run", 5, algo=algo) == 2
    assert "has 3-D actions but env builtin:reach has 2-D actions" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo", ["coworld", "dv2-finetune"])
def test_cotraining_wrong_image_size_is_refused_before_the_source_prefill(tmp_path, datasets, capsys, algo):
    args = ["--algo", algo, "--source", "builtin:reach-src", "--target-dataset", str(datasets / "reach84"),
            "--target-env", "builtin:reach"]
    assert train(tmp_path / "run", 60, algo=args, sets=COWORLD_SMALL) == 2
    assert "has 84x84x3 images" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("replay-source*/*.npz"))  # no source step was taken
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- 6. divergence: caught after every update, continued with changed settings ------------------

def test_huge_learning_rate_stops_cleanly_and_continues_with_changed_settings(tmp_path, capsys):
    logdir = tmp_path / "run"
    sets = ["train.checkpoint_every=50"]  # no checkpoint between the first updates and the next act
    assert train(logdir, 70, sets=sets + ["model.lr=1e30", "behaviour.actor_lr=1e30"]) == 2
    assert_default_signal_handlers()
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "last good checkpoint (step 0)" in err and "--continue-with-changes" in err
    assert "Traceback" not in err
    assert_finite_agent(load_checkpoint(logdir))

    # A lower rate alone is refused (the message names the flag) ...
    lower = sets + ["model.lr=1e-3", "behaviour.actor_lr=1e-4"]
    assert train(logdir, 70, sets=lower) == 2
    assert "add --continue-with-changes" in capsys.readouterr().err
    # ... and so is a change of the model, even with the flag.
    assert train(logdir, 70, "--continue-with-changes", sets=lower + ["model.deter=32"]) == 2
    assert "may change only the optimiser settings" in capsys.readouterr().err

    # With the flag the run continues from its last good checkpoint with the new rates, recorded.
    assert train(logdir, 70, "--continue-with-changes", sets=lower) == 0
    out = capsys.readouterr().out
    assert "continuing" in out and "model.lr 1e+30 -> 0.001" in out
    history = [json.loads(line) for line in (logdir / "history.jsonl").read_text().splitlines()]
    assert history == [{"time": history[0]["time"], "step": 0,
                        "changes": {"behaviour.actor_lr": {"from": 1e30, "to": 1e-4},
                                    "model.lr": {"from": 1e30, "to": 1e-3}}}]
    config = json.loads((logdir / "config.json").read_text())
    assert config["model"]["lr"] == 1e-3 and config["behaviour"]["actor_lr"] == 1e-4
    state = load_checkpoint(logdir)
    assert state["collector"]["steps"] == 70 and state["run"]["finished"]
    assert state["agent"]["model_opt"]["opt"]["param_groups"][0]["lr"] == 1e-3  # not the checkpoint's 1e30
    assert state["agent"]["actor_opt"]["opt"]["param_groups"][0]["lr"] == 1e-4
    # The new command is now the run's command: re-running it needs no flag.
    assert train(logdir, 70, sets=lower) == 0
    assert "finished run" in capsys.readouterr().out


def test_policy_going_nan_is_a_clean_stop_at_the_next_act(tmp_path, monkeypatch, capsys):
    """Weights that turn NaN after an update with finite metrics fail inside act (today's traceback:
    'normal expects all elements of std >= 0.0'); the act reports it as a divergence."""
    original = DreamerAgent.update

    def update_spoiling_actor(self, batch):
        metrics = original(self, batch)
        if self.updates == 3:  # the last pretraining update (step 30); its metrics stay finite
            with torch.no_grad():
                for p in self.actor.parameters():
                    p.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(DreamerAgent, "update", update_spoiling_actor)
    assert train(tmp_path, 70, sets=["train.checkpoint_every=50"]) == 2
    assert_default_signal_handlers()
    err = capsys.readouterr().err
    assert "parameter actor." in err and "became NaN/inf" in err and "last good checkpoint (step 0)" in err
    assert "--continue-with-changes" in err
    assert_finite_agent(load_checkpoint(tmp_path))


def test_offline_nan_stops_at_that_update_not_at_the_next_checkpoint(tmp_path, datasets, monkeypatch, capsys):
    from coworld.algos.offline_dv2 import OfflineDV2Agent

    original, calls = OfflineDV2Agent.update, []

    def update_going_nan(self, batch):
        metrics = original(self, batch)
        calls.append(self.updates)
        if len(calls) >= 3:
            metrics["model/loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(OfflineDV2Agent, "update", update_going_nan)
    algo = ["--algo", "offline-dv2", "--dataset", str(datasets / "reach"), "--env", "builtin:reach"]
    assert train(tmp_path, 40, algo=algo, sets=["train.checkpoint_every=1000"]) == 2
    assert len(calls) == 3  # not 40
    assert "model/loss became NaN/inf" in capsys.readouterr().err
    assert load_checkpoint(tmp_path)["agent"]["updates"] == 0


# -- 7. a full disk -----------------------------------------------------------------------------

class FillingFile(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: a write past that fails with ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


def test_full_disk_while_checkpointing(tmp_path, monkeypatch, capsys):
    assert train(tmp_path, 20) == 0
    real_save = torch.save
    # torch's zip writer gets the ENOSPC half-way and reports 'unexpected pos', as on a real full disk
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, FillingFile(f, 4096), *a, **k))
    capsys.readouterr()
    assert train(tmp_path, 40) == 2
    assert_default_signal_handlers()
    err = capsys.readouterr().err
    assert f"while writing {tmp_path / 'checkpoint.pt'}; the last checkpoint (step 20) is intact; free space " \
           "and re-run" in err
    assert "no space left on " in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.tmp"))
    assert load_checkpoint(tmp_path)["collector"]["steps"] == 20
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same command resumes
    assert train(tmp_path, 40) == 0
    assert load_checkpoint(tmp_path)["collector"]["steps"] == 40


def test_full_disk_never_leaves_an_empty_config(tmp_path, monkeypatch, capsys):
    from coworld.run import checkpoint

    logdir = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "_open", lambda path, mode: FillingFile(open(path, mode), 10), raising=False)
    assert train(logdir, 20) == 2
    err = capsys.readouterr().err
    assert f"while writing {logdir / 'config.json'}; no checkpoint has been written yet" in err
    assert not (logdir / "config.json").exists() and not list(logdir.glob("*.tmp"))

    monkeypatch.undo()
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path / "cache"))
    assert train(logdir, 20) == 0
    config = (logdir / "config.json").read_text()
    # Rewriting config.json for a continuation fails on a full disk: the old one stays, whole.
    monkeypatch.setattr(checkpoint, "_open", lambda path, mode: FillingFile(open(path, mode), 10))
    assert train(logdir, 30, "--continue-with-changes", sets=["model.lr=1e-4"]) == 2
    assert "the last checkpoint (step 20) is intact" in capsys.readouterr().err
    assert (logdir / "config.json").read_text() == config
    assert not (logdir / "history.jsonl").exists() and not list(logdir.glob("*.tmp"))


# -- 12. re-running a finished run --------------------------------------------------------------

def test_rerunning_a_finished_run_writes_nothing(tmp_path, capsys):
    assert train(tmp_path, 20) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tmp_path, 20) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path} holds a finished run (--steps 20); nothing to do. To train it further, re-run with " \
           "a larger --steps." in out
    assert snapshot(tmp_path) == before
    assert train(tmp_path, 30) == 0  # a larger --steps still extends it
    assert load_checkpoint(tmp_path)["collector"]["steps"] == 30


# -- 14. environments are closed ----------------------------------------------------------------

@pytest.fixture
def opened(monkeypatch):
    """Every env made through coworld.envs.make, marked when it is closed."""
    made, real = [], envs.make

    def make(*args, **kwargs):
        env = real(*args, **kwargs)
        close = env.close

        def closing():
            made.append(("closed", id(env)))
            close()

        env.close = closing
        made.append(("made", id(env)))
        return env

    monkeypatch.setattr(envs, "make", make)

    def unclosed():
        return {i for kind, i in made if kind == "made"} - {i for kind, i in made if kind == "closed"}

    return made, unclosed


def test_envs_are_closed_after_a_run_an_evaluation_and_a_crash(tmp_path, opened, monkeypatch):
    made, unclosed = opened
    assert train(tmp_path / "a", 20) == 0
    assert len(made) == 4 and not unclosed()  # training and evaluation env
    assert cli.main(["eval", str(tmp_path / "a"), "--episodes", "1"]) == 0
    assert len(made) == 6 and not unclosed()

    original = DreamerAgent.update

    def update_crashing(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(DreamerAgent, "update", update_crashing)
    with pytest.raises(RuntimeError, match="boom"):
        train(tmp_path / "b", 40)
    assert not unclosed()
    assert_default_signal_handlers()
    monkeypatch.setattr(DreamerAgent, "update", original)
    assert train(tmp_path / "b", 40) == 0  # the crashed run's lock went with it
    assert not unclosed()


def test_coworld_closes_its_envs_and_a_finished_run_is_a_noop(tmp_path, datasets, opened, capsys):
    made, unclosed = opened
    args = ["--algo", "coworld", "--source", "builtin:reach-src", "--target-dataset", str(datasets / "reach"),
            "--target-env", "builtin:reach"]
    assert train(tmp_path, 60, algo=args, sets=COWORLD_SMALL) == 0
    assert len(made) == 4 and not unclosed()  # source env and target evaluation env
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tmp_path, 60, algo=args, sets=COWORLD_SMALL) == 0
    assert "holds a finished run (--steps 60); nothing to do" in capsys.readouterr().out
    assert snapshot(tmp_path) == before
    assert not unclosed()
