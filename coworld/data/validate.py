"""Validation of episode files and dataset directories.

Each defect becomes one :class:`Problem` naming the file and the key, never a traceback. Loading is
forgiving about harmless variants (float64 rewards, a missing ``is_terminal``; see
:func:`coworld.data.episodes.normalize_episode`); validation reports what would corrupt training.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from coworld.data.episodes import (
    BOOL_KEYS,
    REQUIRED_KEYS,
    SIDECAR,
    DatasetError,
    bad_listed_name,
    list_episode_files,
    load_episode,
    normalize_episode,
    read_sidecar,
    sha256_file,
)

ACTION_TOLERANCE = 1e-3  # actions may exceed [-1, 1] by this much (float rounding in stored data)


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str  # file (or directory) the problem is in
    key: str  # array key, or "-" when it concerns the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


def check_episode(ep: dict[str, np.ndarray], file: str = "<episode>") -> list[Problem]:
    """The defects of an (already normalised) episode dict."""
    problems = []

    def report(key, message):
        problems.append(Problem(file, key, message))

    missing = [k for k in REQUIRED_KEYS if k not in ep]
    for key in missing:
        report(key, "required key is missing")
    for key, value in ep.items():
        if np.ndim(value) == 0:
            report(key, f"expected one entry per time step, got a scalar of dtype {value.dtype}")
    if "reward" in ep and np.ndim(ep["reward"]) >= 1:
        size = len(ep["reward"])
    else:
        sizes = collections.Counter(len(v) for v in ep.values() if np.ndim(v) >= 1)
        size = sizes.most_common(1)[0][0] if sizes else 0
    for key, value in ep.items():
        if np.ndim(value) >= 1 and len(value) != size:
            report(key, f"has {len(value)} entries but 'reward' has {size}; all keys need T+1 entries")
    if size < 2:
        report("reward", f"episode has {size} entries; it needs the reset frame and at least one step")

    if "image" in ep:
        image = ep["image"]
        if image.dtype != np.uint8:
            report("image", f"dtype is {image.dtype}, expected uint8 (0-255)")
        if image.ndim == 4 and image.shape[1] == 3 and image.shape[-1] != 3:
            report("image", f"shape {image.shape} is channels-first; expected (T+1, H, W, 3) channels-last")
        elif image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] != image.shape[2]:
            report("image", f"shape {image.shape}, expected (T+1, S, S, 3) such as (T+1, 64, 64, 3)")
    if "action" in ep:
        action = ep["action"]
        if action.dtype.kind != "f":
            report("action", f"dtype is {action.dtype}, expected float32")
        elif action.ndim != 2:
            report("action", f"shape {action.shape}, expected (T+1, A)")
        else:
            if not np.isfinite(action).all():
                report("action", "contains NaN or inf")
            elif np.abs(action).max(initial=0) > 1 + ACTION_TOLERANCE:
                report("action", f"values reach {np.abs(action).max():.4g}; actions must lie in [-1, 1]")
    for key in ("reward", "discount"):
        if key not in ep:
            continue
        value = ep[key]
        if value.dtype.kind != "f":
            report(key, f"dtype is {value.dtype}, expected float32")
        elif value.ndim != 1:
            report(key, f"shape {value.shape}, expected (T+1,)")
        elif not np.isfinite(value).all():
            report(key, "contains NaN or inf")
    discount = ep.get("discount")
    if discount is not None and discount.dtype.kind == "f" and discount.ndim == 1 and np.isfinite(discount).all():
        outside = discount[(discount < 0) | (discount > 1)]
        if len(outside):
            report("discount", f"value {outside[0]:.4g} lies outside [0, 1]; discount is 1 - is_terminal")
    flags_ok = {}
    for key in BOOL_KEYS:
        if key in ep and (ep[key].dtype != bool or ep[key].ndim != 1):
            report(key, f"dtype {ep[key].dtype} shape {ep[key].shape}, expected bool (T+1,)")
        elif key in ep and len(ep[key]) == size and size >= 2:
            flags_ok[key] = ep[key]
    # One episode per file: it starts at entry 0 (the reset frame) and ends at its final entry.
    if "is_first" in flags_ok:
        first = flags_ok["is_first"]
        if not first[0]:
            report("is_first", "entry 0 (the reset frame) must be true")
        if first[1:].any():
            report("is_first", f"true at entry {np.flatnonzero(first[1:])[0] + 1}; only entry 0 starts the episode")
    if "is_last" in flags_ok:
        last = flags_ok["is_last"]
        if not last[-1]:
            report("is_last", f"the final entry ({size - 1}) must be true")
        if last[:-1].any():
            report("is_last", f"true at entry {np.flatnonzero(last[:-1])[0]} before the final entry {size - 1}; "
                              "an episode ends only at its final entry")
    if "is_terminal" in flags_ok and flags_ok["is_terminal"][:-1].any():
        report("is_terminal", f"true at entry {np.flatnonzero(flags_ok['is_terminal'][:-1])[0]} before the final "
                              f"entry {size - 1}; the task can only end at the episode's final entry")
    return problems


def validate_episode(path_or_dict, file: str | None = None) -> list[Problem]:
    """Problems of one episode, given as a path to an .npz or as a dict of arrays."""
    if isinstance(path_or_dict, dict):
        return check_episode(normalize_episode(path_or_dict), file or "<episode>")
    label = file or str(path_or_dict)
    try:
        ep = load_episode(path_or_dict)
    except DatasetError as exc:
        return [Problem(label, "-", str(exc).removeprefix(f"{path_or_dict}: "))]
    return check_episode(ep, label)


def validate_directory(directory) -> list[Problem]:
    """Problems of every episode of a directory, across episodes, and against its dataset.json."""
    directory = Path(directory)
    try:
        files = list_episode_files(directory)
        side = read_sidecar(directory)
    except DatasetError as exc:
        return [Problem(str(directory), "-", str(exc).removeprefix(f"{directory}: "))]
    if not files:
        return [Problem(str(directory), "-", "no episode files (*.npz) in this directory")]

    problems = []
    action_dims, image_shapes = {}, {}
    for path in files:
        try:
            ep = load_episode(path)
        except DatasetError as exc:
            problems.append(Problem(str(path), "-", str(exc).removeprefix(f"{path}: ")))
            continue
        problems += check_episode(ep, str(path))
        if "action" in ep and ep["action"].ndim == 2:
            action_dims[path] = ep["action"].shape[1]
        if "image" in ep and ep["image"].ndim == 4:
            image_shapes[path] = ep["image"].shape[1:]
    for key, values in (("action", action_dims), ("image", image_shapes)):
        if len(set(values.values())) > 1:
            common = collections.Counter(values.values()).most_common(1)[0][0]
            what = "action dimension" if key == "action" else "image shape"
            for path, value in values.items():
                if value != common:
                    problems.append(
                        Problem(str(path), key, f"{what} {value} differs from the dataset's {common}")
                    )

    if side is not None:
        problems += _check_listed(directory, side, files)
    return problems


def _check_listed(directory: Path, side: dict, files: list[Path]) -> list[Problem]:
    """Problems of dataset.json's ``files`` entry. Only bare names of regular files inside the
    directory are opened (to compare checksums); any other name is a problem and is never opened."""
    sidecar = str(directory / SIDECAR)
    listed = side.get("files", {})
    if not isinstance(listed, dict):
        return [Problem(sidecar, "files", "must map episode file names to {sha256, length} entries")]
    problems = []
    for name, entry in listed.items():
        why = bad_listed_name(name)
        if why:
            problems.append(Problem(sidecar, "files", f"{name!r}: {why}"))
            continue
        path = directory / name
        if not isinstance(entry, dict):
            problems.append(Problem(str(path), "-", f"its {SIDECAR} entry must be an object with sha256 and length"))
        elif not path.exists() and not path.is_symlink():
            problems.append(Problem(str(path), "-", f"listed in {SIDECAR} but missing"))
        elif not path.is_file():
            problems.append(Problem(str(path), "-", "not a regular file; an episode must be an .npz file"))
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(Problem(str(path), "-", f"sha256 does not match {SIDECAR}; the file was changed"))
    for path in files:
        if path.name not in listed:
            problems.append(Problem(str(path), "-", f"not listed in {SIDECAR}"))
    return problems
