"""Run logging: JSONL metrics, TensorBoard scalars, a progress bar, videos and image strips.

Metrics arrive as dicts of floats or (detached, possibly on-device) scalar
tensors; they are converted to floats here, at log time, so training updates
never synchronise with the device themselves. On resume the JSONL file is cut
back to the size it had at the checkpoint and TensorBoard purges the events
written after the checkpoint's step, so a resumed run's logs read as one run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

METRICS = "metrics.jsonl"


def to_float(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().cpu())
    return float(value)


class Logger:
    def __init__(self, run_dir: Path, *, total: int, start: int = 0, unit: str = "step",
                 jsonl_size: int | None = None, progress: bool = True, tensorboard: bool = True):
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
        self._jsonl.close()
