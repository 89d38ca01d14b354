"""A run directory and its life cycle: start, resume, stop on a signal, checkpoint.

    RUN/
      run.json        what was asked (algo, envs, dataset, preset, overrides, seed, steps)
      config.json     the resolved Config
      checkpoint.pt   the latest complete state (atomic; weights_only-loadable)
      metrics.jsonl   one JSON object per log line
      tb/             TensorBoard events
      replay/         online episodes, in the dataset format (a run's replay is a dataset)
      videos/ images/ evaluation videos, open-loop prediction strips, plots

Re-running the same command in the same directory resumes from the checkpoint;
a larger ``--steps`` extends a finished run. Any other difference from the
stored ``run.json`` is refused with a message, so a run cannot silently change
its settings half-way.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import torch

from coworld.algos.dreamer import resolve_device
from coworld.config import Config
from coworld.errors import UserError
from coworld.run.checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld.run.logger import Logger, to_float


class TrainingDiverged(UserError):
    pass


class Session:
    def __init__(self, logdir: str | Path, *, run_args: dict, cfg: Config, total: int, unit: str,
                 progress: bool = True, extendable: bool = True):
        self.dir = Path(logdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.dir / CHECKPOINT
        self.resuming = self.ckpt_path.exists()
        self.total = total
        self.unit = unit
        run_file = self.dir / "run.json"
        if self.resuming:
            stored = json.loads(run_file.read_text())
            free = {"steps"} if extendable else set()  # a larger --steps extends a finished run
            diff = {k for k in set(stored) | set(run_args) if k not in free and stored.get(k) != run_args.get(k)}
            if diff:
                detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {run_args.get(k)!r}" for k in sorted(diff))
                raise UserError(
                    f"{self.dir} holds a run with other settings ({detail}). Re-run the same command to "
                    f"resume{' (only --steps may change)' if extendable else ''}, or choose a new --logdir."
                )
            self.cfg = Config.from_dict(json.loads((self.dir / "config.json").read_text()))
            self.state = load_checkpoint(self.ckpt_path)
        else:
            self.cfg = cfg
            self.state = None
            (self.dir / "config.json").write_text(self.cfg.to_json())
        run_file.write_text(json.dumps(run_args, indent=2, sort_keys=True))
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        self.device = resolve_device(self.cfg.train.device)
        self.stop_signal: int | None = None
        self.logger: Logger | None = None
        self._progress = progress

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, position: int) -> Logger:
        """Open the logs at ``position`` (the resumed step, or 0) and trap SIGINT/SIGTERM."""
        jsonl_size = self.state["logger"]["jsonl_size"] if self.state else 0
        self.logger = Logger(self.dir, total=self.total, start=position, unit=self.unit,
                             jsonl_size=jsonl_size, progress=self._progress)
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
        self.save(components, counters)
        self.close()
        if self.stop_signal is not None:
            print(f"stopped by signal {self.stop_signal}; saved {self.ckpt_path}. "
                  "Re-run the same command to resume.", flush=True)
            return 128 + self.stop_signal
        return 0

    def close(self) -> None:
        """Close the logs and give SIGINT / SIGTERM back their default handlers."""
        self.logger.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, components: dict, counters: dict, metrics: dict | None = None) -> None:
        """Write a checkpoint of ``components`` (objects with state_dict / checkpoint_state).

        A diverged model is not saved: the run is closed and TrainingDiverged raised."""
        try:
            check_finite(components, metrics)
        except TrainingDiverged:
            self.close()
            raise
        state = {"format": 1, "counters": dict(counters), "rng": rng_state(),
                 "logger": {"jsonl_size": self.logger.jsonl_size()},
                 "dims": {n: o.action_dim for n, o in components.items() if hasattr(o, "action_dim")}}
        for name, obj in components.items():
            state[name] = obj.checkpoint_state() if hasattr(obj, "checkpoint_state") else obj.state_dict()
        save_checkpoint(self.ckpt_path, state)

    def restore(self, components: dict) -> dict:
        """Load the checkpoint into ``components``; returns its counters ({} for a fresh run)."""
        if self.state is None:
            return {}
        for name, obj in components.items():
            if hasattr(obj, "load_checkpoint_state"):
                obj.load_checkpoint_state(self.state[name])
            else:
                obj.load_state_dict(self.state[name])
        set_rng_state(self.state["rng"])
        return dict(self.state["counters"])


def check_finite(components: dict, metrics: dict | None) -> None:
    """Refuse to checkpoint a diverged model: the last good checkpoint stays in place."""
    for key, value in (metrics or {}).items():
        if not math.isfinite(to_float(value)):
            raise TrainingDiverged(
                f"{key} became {to_float(value)} (NaN/inf); stopped without overwriting the last good "
                "checkpoint. Lower the learning rates, disable AMP (--set train.amp=none) or check the data."
            )
    for name, obj in components.items():
        if isinstance(obj, torch.nn.Module):
            for pname, p in obj.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingDiverged(
                        f"parameter {name}.{pname} is NaN/inf; stopped without overwriting the last good "
                        "checkpoint. Lower the learning rates or disable AMP (--set train.amp=none)."
                    )
