"""The one way in for checkpoints: atomic, pickle-free, complete.

A checkpoint is a nested dict of tensors, numbers, strings, lists and dicts,
written with ``torch.save`` to a temporary file and moved into place with
``os.replace``: a crash mid-write leaves the previous good checkpoint intact.
A failed write (a full disk above all) removes its temporary file; running out
of space raises :class:`~coworld.errors.DiskFull` with a one-line message.
Loading always uses ``torch.load(weights_only=True)`` (no pickle of arbitrary
objects), so checkpoints from others are safe to open.

The random-number state of torch, NumPy's global generator and Python's
``random`` is captured in a weights-only-safe form by :func:`rng_state`.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from coworld.errors import DiskFull, UserError

CHECKPOINT = "checkpoint.pt"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

_open = open  # the file opener of atomic_write; tests swap it for one that runs out of space


def atomic_write(path: str | Path, write, *, note: str = "") -> Path:
    """Write ``path`` through ``path.tmp`` + ``os.replace`` with ``write(binary_file)``.

    On any failure the temporary file is removed and ``path`` is left as it was. When the
    cause is a full disk (or quota), DiskFull is raised instead, its message ending with
    ``note`` (what is still intact, what to do).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = out_of_space(exc, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(disk_full_message(path, note)) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, note: str = "") -> Path:
    """A text file that is either the old or the new content, never empty or half written."""
    return atomic_write(path, lambda f: f.write(text.encode()), note=note)


def out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` comes from a full disk.

    torch's zip writer turns the OSError of a failed write into a RuntimeError ("unexpected
    pos"), keeping the OSError only as its context, so the whole chain is searched.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def mount_of(path: Path) -> tuple[str, str]:
    """(device, mount point) of the file system holding ``path``; device may be ''."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and fields[1] == str(mount):
                    device = fields[0]
    except OSError:
        pass
    return device, str(mount)


def disk_full_message(path: Path, note: str = "") -> str:
    device, mount = mount_of(path.parent)
    where = f"{device} (mounted at {mount})" if device else mount
    try:
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    text = f"no space left on {where}{free} while writing {path}"
    return f"{text}; {note}" if note else f"{text}; free space and re-run"


def save_checkpoint(path: str | Path, state: dict, *, note: str = "") -> Path:
    """Write ``state`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(state, f), note=note)


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
    """torch (CPU, and every CUDA device's once CUDA is in use) / NumPy-global / Python ``random``
    states, as weights-only-loadable values. A run on a GPU draws its augmentations, action noise and
    latent samples from the CUDA generators, so a resumed GPU run needs them too; a CPU-only process
    never initialises CUDA for this."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "cuda": list(cuda),
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
    cuda = state.get("cuda") or []  # (absent from checkpoints written before it was saved)
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))


def forked_rng(device="cpu"):
    """``torch.random.fork_rng`` over the CPU generator and, on a CUDA ``device``, that device's: the
    random draws inside (evaluation, diagnostics) leave training's generators as they were."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


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
