"""A run directory and its life cycle: lock, start, resume, stop on a signal, checkpoint.

    RUN/
      .lock           held (flock) by the one process working in RUN; names its pid and host
      run.json        what was asked (algo, envs, dataset, preset, overrides, seed, steps)
      config.json     the resolved Config (written atomically)
      checkpoint.pt   the latest complete state (atomic; weights_only-loadable)
      history.jsonl   settings changed on resume with --continue-with-changes, one line per change
      metrics.jsonl   one JSON object per log line
      tb/             TensorBoard events
      replay/         online episodes, in the dataset format (a run's replay is a dataset)
      videos/ images/ evaluation videos, open-loop prediction strips, plots

Re-running the same command in the same directory resumes from the checkpoint;
a larger ``--steps`` extends a finished run, and re-running a finished run is a
no-op (:class:`RunFinished`). Any other difference from the stored ``run.json``
is refused with a message, so a run cannot silently change its settings
half-way; the optimiser settings in :data:`CHANGEABLE` may change when the user
asks for it with ``--continue-with-changes`` (recorded in ``history.jsonl``).

Only one process at a time may work in a run directory: the session holds an
exclusive ``flock`` on ``RUN/.lock`` for its whole life. The OS drops the lock
when the process ends in any way (kill -9 included), so nothing is left to
clean up; a second process is refused at once with the holder's pid and host.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import math
import os
import platform
import signal
import socket
import sys
import time
import weakref
from pathlib import Path

import torch

from coworld.algos.dreamer import resolve_device
from coworld.config import Config, load_config, parse_override
from coworld.errors import TrainingDiverged, UserError
from coworld.run.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_text_atomic,
)
from coworld.run.logger import Logger, to_float, wandb_settings

__all__ = ["Session", "RunFinished", "TrainingDiverged", "CHANGEABLE", "track", "close_tracked", "diverged"]

LOCK = ".lock"
HISTORY = "history.jsonl"
CONTINUE_FLAG = "--continue-with-changes"

# What --continue-with-changes may change: settings of the optimisers and of mixed precision.
# None of them changes a tensor's shape, so the checkpoint still loads into the agent.
CHANGEABLE = ("model.lr", "model.weight_decay", "behaviour.actor_lr", "behaviour.critic_lr",
              "behaviour.eps", "behaviour.grad_clip", "train.amp")

# On an accelerator, reading the finiteness flag forces a host sync; it is read every this
# many updates (and always before acting or saving). On CPU it is read after every update.
FINITE_CHECK_EVERY = 32


class RunFinished(Exception):
    """The directory holds a finished run of this command: nothing to do (the CLI exits 0)."""


# -- what a command opened, closed when it ends (also on errors) -------------------------------

_opened: list[weakref.ref] = []
_active: weakref.ref | None = None  # the session of the running command


def track(obj):
    """Register ``obj`` (an env, a session) to be closed by :func:`close_tracked`; returns it."""
    _opened.append(weakref.ref(obj))
    return obj


def close_tracked() -> None:
    """Close everything registered with :func:`track`, newest first (envs before their session)."""
    while _opened:
        obj = _opened.pop()()
        if obj is None:
            continue
        try:
            obj.close()
        except Exception as exc:  # closing must not hide the command's own outcome
            print(f"warning: closing {type(obj).__name__} failed: {exc}", file=sys.stderr)


def active_session() -> "Session | None":
    session = _active() if _active is not None else None
    return session if session is not None and not session.closed else None


def busy_cores(seconds: float = 0.3, stat: str = "/proc/stat") -> float | None:
    """How many cores the machine kept busy over the next ``seconds`` (the non-idle share of the
    ``cpu`` line of /proc/stat times the CPU count); None where /proc/stat cannot be read."""
    def read() -> tuple[int, int]:
        with open(stat) as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    try:
        busy0, total0 = read()
        time.sleep(seconds)
        busy1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def free_cores() -> tuple[int, int, float]:
    """(threads to use, cores this process may run on, cores busy with other jobs): the cores minus
    the busy ones, rounded, at least 1. What ``train.threads = 0`` resolves to. "Busy" is measured
    now (:func:`busy_cores`), not the 1-minute load average, which lags: just after a test run ended it
    still read 0.6 on an idle 2-core machine and left the demo one core. The load average is the
    fallback where /proc/stat is missing."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(cores, round(cores - busy))), cores, busy


def keep_freed_memory(mode: str) -> bool:
    """``train.malloc``: with "heap", on Linux with glibc, serve every allocation from the C heap
    (no separate mapping for large blocks) and return freed memory to the system only above 2 GiB
    of free heap top. An update then reuses the previous update's memory instead of mapping fresh
    pages and taking a page fault for every 4 KiB of each large tensor. Returns whether it applied."""
    if mode != "heap" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters (malloc.h)
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def nonfinite_parameter(modules: dict, prefix: bool = True) -> str | None:
    """'parameter NAME' of the first NaN/inf parameter among the torch modules of ``modules``
    (name -> object; other objects are skipped), NAME prefixed with the module's name when
    ``prefix``; None when all are finite."""
    for name, module in modules.items():
        if isinstance(module, torch.nn.Module):
            for pname, p in module.named_parameters():
                if not torch.isfinite(p).all():
                    return f"parameter {name}.{pname}" if prefix else f"parameter {pname}"
    return None


def diverged(what: str) -> TrainingDiverged:
    """The error for a NaN/inf found outside the session (e.g. in the policy's actions)."""
    session = active_session()
    if session is not None:
        return session.diverged(what)
    return TrainingDiverged(f"{what}: this policy cannot act; use an earlier checkpoint")


# -- the lock ---------------------------------------------------------------------------------

class RunLock:
    """An exclusive, non-blocking flock on ``directory/.lock``, released by :meth:`release` or
    by the OS when the process dies. The holder writes its pid and host into the file."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{directory} is in use by another coworld process ({self.holder()}); wait for it to "
                    "finish or stop it, or choose another --logdir"
                ) from None
            # A file system without flock support: run, but say that nothing guards the directory.
            print(f"warning: cannot lock {self.path} ({exc.strerror}); make sure no other process uses "
                  f"{directory}", file=sys.stderr)
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:  # e.g. a full disk: the lock holds all the same, only the holder's name is missing
            pass

    def holder(self) -> str:
        """'pid P on host H since T' of the process holding the lock (as it wrote it)."""
        for _ in range(20):  # the holder writes its name just after locking: give it a moment
            try:
                info = json.loads(self.path.read_text())
                return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return f"pid unknown, see {self.path}"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# -- settings that change on resume -----------------------------------------------------------

def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _set(cfg: Config, key: str, value) -> None:
    *path, last = key.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def setting_changes(stored: Config, new: Config, old_overrides: list, new_overrides: list) -> dict:
    """{key: (stored value, new value)} for every overridden key whose value differs; refuses any
    key outside :data:`CHANGEABLE`."""
    keys = set()
    for text in list(old_overrides) + list(new_overrides):
        keys.update(_flat_keys(parse_override(text)))
    changes = {}
    for key in sorted(keys):
        try:
            before, after = _get(stored, key), _get(new, key)
        except AttributeError:
            continue  # not a config setting (e.g. seed, compared as its own argument)
        if before != after:
            changes[key] = (before, after)
    refused = [k for k in changes if k not in CHANGEABLE]
    if refused:
        detail = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise UserError(
            f"{CONTINUE_FLAG} may change only the optimiser settings ({', '.join(CHANGEABLE)}); "
            f"{detail} would change the model or the schedule. Choose a new --logdir for that."
        )
    return changes


def adopt_optimiser_settings(saved, fresh) -> None:
    """Copy the hyper-parameters (lr, eps, weight decay, ...) of every optimizer state found in
    ``fresh`` (an agent built from the current config) into the matching one of ``saved``
    (the checkpoint), keeping the saved moments and step counts."""
    if not isinstance(saved, dict) or not isinstance(fresh, dict):
        return
    if "param_groups" in saved and "param_groups" in fresh:
        for group, new in zip(saved["param_groups"], fresh["param_groups"]):
            group.update({k: v for k, v in new.items() if k != "params"})
        return
    for key, value in saved.items():
        if key in fresh:
            adopt_optimiser_settings(value, fresh[key])


def _describe_difference(key: str, stored, now) -> str:
    if key == "overrides" and isinstance(stored, list) and isinstance(now, list):
        gone, new = [o for o in stored if o not in now], [o for o in now if o not in stored]
        return f"overrides: stored {gone!r}, now {new!r}" if gone or new else f"overrides: order {stored!r} -> {now!r}"
    return f"{key}: stored {stored!r}, now {now!r}"


def _lower_lr_example(cfg: Config) -> str:
    """'--set model.lr=... ...' with a tenth of the current rates (at most the preset's own)."""
    try:
        preset = load_config(cfg.preset)
    except UserError:
        preset = cfg
    parts = []
    for key in ("model.lr", "behaviour.actor_lr", "behaviour.critic_lr"):
        parts.append(f"--set {key}={min(_get(cfg, key) / 10, _get(preset, key)):.3g}")
    return " ".join(parts)


# -- the session ------------------------------------------------------------------------------

class Session:
    def __init__(self, logdir: str | Path, *, run_args: dict, cfg: Config, total: int, unit: str,
                 progress: bool = True, extendable: bool = True):
        global _active
        self.dir = Path(logdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logger: Logger | None = None
        self.closed = False
        self._lock = RunLock(self.dir)  # before anything in the directory is read or written
        track(self)
        _active = weakref.ref(self)
        try:
            self._open(dict(run_args), cfg, total, unit, extendable)
        except BaseException:
            self.close()
            raise
        self.stop_signal: int | None = None
        self._progress = progress
        self._watched: dict[str, torch.nn.Module] = {}
        self._flag: torch.Tensor | None = None  # per metric key: became NaN/inf since the last read
        self._flag_keys: tuple = ()
        self._pending = 0  # updates folded into the flag since it was last read

    def _open(self, run_args: dict, cfg: Config, total: int, unit: str, extendable: bool) -> None:
        allow_changes = bool(run_args.pop("continue_with_changes", False))
        self.ckpt_path = self.dir / CHECKPOINT
        self.resuming = self.ckpt_path.exists()
        self.total = self.steps = total  # trainers may rescale total; steps stays what was asked
        self.unit = unit
        self.changes: dict = {}
        self.saved_step: int | None = None  # position of the checkpoint on disk
        run_file, config_file = self.dir / "run.json", self.dir / "config.json"
        if self.resuming:
            stored = json.loads(run_file.read_text())
            free = {"steps"} if extendable else set()  # a larger --steps extends a finished run
            if allow_changes:
                free.add("overrides")
            diff = {k for k in set(stored) | set(run_args) if k not in free and stored.get(k) != run_args.get(k)}
            if diff:
                detail = "; ".join(_describe_difference(k, stored.get(k), run_args.get(k)) for k in sorted(diff))
                hint = ""
                if diff == {"overrides"}:
                    hint = (f" To continue it with changed optimiser settings ({', '.join(CHANGEABLE)}), "
                            f"add {CONTINUE_FLAG}.")
                raise UserError(
                    f"{self.dir} holds a run with other settings ({detail}). Re-run the same command to "
                    f"resume{' (only --steps may change)' if extendable else ''}, or choose a new --logdir.{hint}"
                )
            self.cfg = Config.from_dict(json.loads(config_file.read_text()))
            if allow_changes:
                self.changes = setting_changes(self.cfg, cfg, stored.get("overrides") or [],
                                               run_args.get("overrides") or [])
            self.state = load_checkpoint(self.ckpt_path)
            info = self.state.get("run", {})
            self.saved_step = info.get("position")
            if info.get("finished") and total <= info.get("steps", total):
                more = ("To train it further, re-run with a larger --steps." if extendable else
                        "Its schedule is fixed by --steps: train longer in a new --logdir.")
                raise RunFinished(f"{self.dir} holds a finished run (--steps {info['steps']}); nothing to do. {more}")
            # (co-training runs count progress in their own units and cannot change --steps)
            if extendable and self.saved_step is not None and total < self.saved_step:
                raise UserError(f"{self.dir} is already at {unit} {self.saved_step}; --steps {total} would train "
                                f"nothing. Re-run with --steps above {self.saved_step} to go on, or choose a new --logdir.")
            if self.changes:
                self._apply_changes(config_file)
        else:
            self.cfg = cfg
            self.state = None
            if not cfg.train.threads:
                # chosen once, recorded in config.json: a resumed run keeps it (bit-exact resume)
                cfg.train.threads, cores, load = free_cores()
                print(f"[threads] train.threads=0: using {cfg.train.threads} of {cores} cores ({load:.1f} busy "
                      f"with other jobs); set train.threads to fix it", flush=True)
            write_text_atomic(config_file, self.cfg.to_json(), note=self._disk_note())
        write_text_atomic(run_file, json.dumps(run_args, indent=2, sort_keys=True), note=self._disk_note())
        # Optimiser settings come from the config, not the checkpoint, once the run has been changed.
        self._adopt = bool(self.changes) or (self.dir / HISTORY).exists()
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        keep_freed_memory(self.cfg.train.malloc)
        self.device = resolve_device(self.cfg.train.device)

    def _apply_changes(self, config_file: Path) -> None:
        for key, (_, after) in self.changes.items():
            _set(self.cfg, key, after)
        entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), self.unit: self.saved_step,
                 "changes": {k: {"from": a, "to": b} for k, (a, b) in self.changes.items()}}
        # The history line goes first: once it exists, optimiser settings are taken from config.json
        # on every resume (see restore), so a crash between the two writes cannot mix old and new.
        history = self.dir / HISTORY
        size = history.stat().st_size if history.exists() else None
        try:
            with open(history, "a") as f:
                f.write(json.dumps(entry) + "\n")
            write_text_atomic(config_file, self.cfg.to_json(), note=self._disk_note())
        except BaseException:
            if size is None:  # the change did not happen: take its line back
                history.unlink(missing_ok=True)
            else:
                os.truncate(history, size)
            raise
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.changes.items())
        print(f"continuing {self.dir} from {self.unit} {self.saved_step} with {text} "
              f"(recorded in {self.dir / HISTORY})", flush=True)

    def _disk_note(self) -> str:
        if self.saved_step is None and not self.resuming:
            return "no checkpoint has been written yet; free space and re-run"
        where = f" ({self.unit} {self.saved_step})" if self.saved_step is not None else ""
        return f"the last checkpoint{where} is intact; free space and re-run the same command to resume"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, position: int) -> Logger:
        """Open the logs at ``position`` (the resumed step, or 0) and trap SIGINT/SIGTERM."""
        jsonl_size = self.state["logger"]["jsonl_size"] if self.state else 0
        if self.resuming:
            self.saved_step = position
        self.logger = Logger(self.dir, total=self.total, start=position, unit=self.unit,
                             jsonl_size=jsonl_size, progress=self._progress, wandb=wandb_settings(self.cfg))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        return self.logger

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def finish(self, components: dict, counters: dict) -> int:
        """Save and close; returns the exit code (130/143 when stopped by a signal)."""
        self.save(components, counters, finished=self.stop_signal is None)
        self.close()
        from coworld.run.plots import plot_run

        print(f"plots: {plot_run(self.dir)}")
        if self.stop_signal is not None:
            print(f"stopped by signal {self.stop_signal}; saved {self.ckpt_path}. "
                  "Re-run the same command to resume.", flush=True)
            return 128 + self.stop_signal
        return 0

    def close(self) -> None:
        """Close the logs, give SIGINT / SIGTERM back their default handlers, release the lock.
        Safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        if self.logger is not None:
            self.logger.close()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._lock.release()

    # -- divergence --------------------------------------------------------------------------
    def watch(self, metrics: dict) -> None:
        """Fold one update's metrics into the NaN/inf flag.

        Tensor metrics are reduced on their device into one flag per key, without a host sync;
        the flag is read at once on CPU (no cost there) and every FINITE_CHECK_EVERY updates on
        an accelerator. Trainers read it too before acting and before saving (:meth:`check_updates`).
        """
        tensors = {}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            elif isinstance(value, (int, float)) and not math.isfinite(value):
                raise self.diverged(f"{key} became {value}")
        if not tensors:
            return
        keys = tuple(tensors)
        if keys != self._flag_keys:
            self.check_updates()
            self._flag, self._flag_keys = None, keys
        bad = ~torch.isfinite(torch.stack([t.detach().float().sum().to(self.device) for t in tensors.values()]))
        self._flag = bad if self._flag is None else self._flag | bad
        self._pending += 1
        if self.device.type == "cpu" or self._pending >= FINITE_CHECK_EVERY:
            self.check_updates()

    def check_updates(self) -> None:
        """Read the flag of :meth:`watch`; TrainingDiverged when an update gave NaN/inf."""
        if self._flag is None or not self._pending:
            return
        bad, self._flag, self._pending = self._flag.tolist(), None, 0
        if any(bad):
            key = self._flag_keys[bad.index(True)]
            raise self.diverged(f"{key} became NaN/inf")

    def nonfinite_parameter(self) -> str | None:
        """'parameter NAME' of the first NaN/inf parameter of the restored modules, or None."""
        return nonfinite_parameter(self._watched)

    def diverged(self, what: str) -> TrainingDiverged:
        """Close the run and return the error to raise for ``what`` ('X became NaN/inf')."""
        self.close()
        where = f" ({self.unit} {self.saved_step})" if self.saved_step is not None else ""
        amp = " or disable AMP (--set train.amp=none)" if self.cfg.train.amp != "none" else ""
        if "NaN/inf" not in what:
            what += " (NaN/inf)"
        return TrainingDiverged(
            f"{what}; stopped without overwriting the last good checkpoint{where}. To continue "
            f"from it with lower learning rates{amp}, re-run the same command with e.g. "
            f"{_lower_lr_example(self.cfg)} {CONTINUE_FLAG} (see docs/reliability.md), or check the data."
        )

    def _check_finite(self, components: dict, metrics: dict | None) -> None:
        for key, value in (metrics or {}).items():
            if not math.isfinite(to_float(value)):
                raise self.diverged(f"{key} became {to_float(value)}")
        what = nonfinite_parameter(components)
        if what is not None:
            raise self.diverged(f"{what} became NaN/inf")

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, components: dict, counters: dict, metrics: dict | None = None, finished: bool = False) -> None:
        """Write a checkpoint of ``components`` (objects with state_dict / checkpoint_state).

        A diverged model is not saved: the run is closed and TrainingDiverged raised. On a full
        disk the temporary file is removed, the run closed and DiskFull raised."""
        self.check_updates()
        self._check_finite(components, metrics)
        position = self.logger.position
        state = {"format": 1, "counters": dict(counters), "rng": rng_state(),
                 "logger": {"jsonl_size": self.logger.jsonl_size()},
                 "run": {"finished": bool(finished), "steps": self.steps, "position": position},
                 "dims": {n: o.action_dim for n, o in components.items() if hasattr(o, "action_dim")}}
        for name, obj in components.items():
            state[name] = obj.checkpoint_state() if hasattr(obj, "checkpoint_state") else obj.state_dict()
        try:
            save_checkpoint(self.ckpt_path, state, note=self._disk_note())
        except BaseException:
            self.close()
            raise
        self.saved_step = position

    def restore(self, components: dict) -> dict:
        """Load the checkpoint into ``components``; returns its counters ({} for a fresh run)."""
        self._watched = {n: o for n, o in components.items() if isinstance(o, torch.nn.Module)}
        if self.state is None:
            return {}
        for name, obj in components.items():
            saved = self.state[name]
            if self._adopt and name in self._watched and hasattr(obj, "checkpoint_state"):
                adopt_optimiser_settings(saved, obj.checkpoint_state())
            if hasattr(obj, "load_checkpoint_state"):
                obj.load_checkpoint_state(saved)
            else:
                obj.load_state_dict(saved)
        set_rng_state(self.state["rng"])
        return dict(self.state["counters"])
