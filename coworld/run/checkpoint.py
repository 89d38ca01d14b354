"""The one way in for checkpoints: atomic, pickle-free, complete.

A checkpoint is a nested dict of tensors, numbers, strings, lists and dicts,
written with ``torch.save`` to a temporary file and moved into place with
``os.replace``: a crash mid-write leaves the previous good checkpoint intact.
Loading always uses ``torch.load(weights_only=True)`` (no pickle of arbitrary
objects), so checkpoints from others are safe to open.

The random-number state of torch, NumPy's global generator and Python's
``random`` is captured in a weights-only-safe form by :func:`rng_state`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from coworld.errors import UserError

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give a run directory or a checkpoint .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or foreign file
        raise UserError(
            f"cannot read checkpoint {path} with weights_only=True ({type(exc).__name__}: {exc}); "
            "it is damaged or not a coworld checkpoint"
        ) from None


def rng_state() -> dict:
    """torch / NumPy-global / Python ``random`` states, as weights-only-loadable values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))


def generator_state(gen: np.random.Generator) -> dict:
    """A NumPy Generator's state with its 128-bit integers as strings (weights-only safe)."""
    return _stringify(gen.bit_generator.state)


def set_generator_state(gen: np.random.Generator, state: dict) -> None:
    gen.bit_generator.state = _unstringify(state)


def _stringify(obj):
    if isinstance(obj, dict):
        return {k: _stringify(v) for k, v in obj.items()}
    if isinstance(obj, int) and not isinstance(obj, bool):
        return f"int:{obj}"
    return obj


def _unstringify(obj):
    if isinstance(obj, dict):
        return {k: _unstringify(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("int:"):
        return int(obj[4:])
    return obj
