"""Run logging: JSONL metrics, TensorBoard scalars, a progress bar, videos and image strips.

Metrics arrive as dicts of floats or (detached, possibly on-device) scalar
tensors; they are converted to floats here, at log time, so training updates
never synchronise with the device themselves. On resume the JSONL file is cut
back to the size it had at the checkpoint and TensorBoard purges the events
written after the checkpoint's step, so a resumed run's logs read as one run.

Weights & Biases (``train.wandb = true``, the ``[wandb]`` extra) receives the same scalars, to
follow runs live; ``wandb`` is imported only when it is switched on. A run keeps one W&B run id
(RUN/wandb_id.txt), so a resumed run continues the same W&B run; W&B drops points at steps it has
already seen, so the segment between the last checkpoint and a crash keeps its first values there.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import torch

METRICS = "metrics.jsonl"


WANDB_ID = "wandb_id.txt"


def wandb_settings(cfg) -> dict | None:
    """The W&B options of a run's config, or None when ``train.wandb`` is off."""
    t = cfg.train
    if not t.wandb:
        return None
    return {"project": t.wandb_project, "group": t.wandb_group or None, "config": cfg.to_dict()}


def start_wandb(run_dir: Path, project: str, group: str | None = None, config: dict | None = None):
    """Open (or resume) the W&B run of ``run_dir``; a clear error when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        from coworld.errors import MissingDependency

        raise MissingDependency("wandb", "wandb", "train.wandb=true (logging to Weights & Biases)") from None
    id_file = run_dir / WANDB_ID
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
    return wandb.init(project=project, group=group, name=run_dir.name, id=run_id, resume="allow",
                      dir=str(run_dir), config=config or {})


def to_float(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().cpu())
    return float(value)


class Logger:
    def __init__(self, run_dir: Path, *, total: int, start: int = 0, unit: str = "step",
                 jsonl_size: int | None = None, progress: bool = True, tensorboard: bool = True,
                 wandb: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS
        if jsonl_size is not None and path.exists() and path.stat().st_size > jsonl_size:
            with open(path, "r+b") as f:  # drop lines written after the checkpoint
                f.truncate(jsonl_size)
        self._jsonl = open(path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start if start else None)
        self._wandb = start_wandb(self.run_dir, **wandb) if wandb else None  # wandb_settings(cfg)
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit=unit, dynamic_ncols=True, smoothing=0.05)
        self._last = start
        self._rates: dict[str, tuple[float, float]] = {}

    @property
    def position(self) -> int:
        """The step (or update, unit) last passed to :meth:`progress`: where the run stands."""
        return self._last

    def jsonl_size(self) -> int:
        self._jsonl.flush()
        return self._jsonl.tell()

    def progress(self, step: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(step - self._last)
            if postfix:
                self._bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in postfix.items()},
                                      refresh=False)
        self._last = step

    def rate(self, name: str, count: int) -> float | None:
        """Events per second of wall time since the previous call with this name."""
        now = time.perf_counter()
        prev = self._rates.get(name)
        self._rates[name] = (now, count)
        if prev is None or now <= prev[0]:
            return None
        return (count - prev[1]) / (now - prev[0])

    def scalars(self, step: int, metrics: dict, prefix: str = "") -> dict:
        values = {}
        for key, value in metrics.items():
            v = to_float(value)
            values[f"{prefix}{key}"] = v
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(f"{prefix}{key}", v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)
        record = {"step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        return values

    def record(self, step: int, values: dict) -> None:
        """A JSON-only line (lists allowed, e.g. per-episode returns); not sent to TensorBoard."""
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()

    def video(self, step: int, name: str, frames: np.ndarray, fps: int = 20) -> Path:
        """frames (T, H, W, 3) uint8 -> RUN/videos/{name}-{step}.gif (TensorBoard's video needs moviepy,
        so videos stay files)."""
        import imageio.v2 as imageio

        out = self.run_dir / "videos" / f"{name}-{step:09d}.gif"
        out.parent.mkdir(exist_ok=True)
        imageio.mimsave(out, list(frames), duration=1000 / fps, loop=0)
        return out

    def image(self, step: int, name: str, image: np.ndarray) -> Path:
        import imageio.v2 as imageio

        out = self.run_dir / "images" / f"{name}-{step:09d}.png"
        out.parent.mkdir(exist_ok=True)
        imageio.imwrite(out, image)
        if self._tb is not None:
            self._tb.add_image(name, image, step, dataformats="HWC")
        return out

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        self._jsonl.close()
