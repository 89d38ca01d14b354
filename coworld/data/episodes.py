"""Episode files: the on-disk format, atomic writes, the dataset.json sidecar and EpisodeBuilder.

The native format is the one the community already uses (V-D4RL 64px, the CoWorld authors' data,
DreamerV2 replays; docs/algorithms.md#benchmarks-and-data), so those datasets load unchanged:

- one compressed ``.npz`` per episode, named ``{timestamp}-{uuid}-{length}.npz`` where the timestamp
  looks like ``20240101T120000``, the uuid is 32 hex digits and ``length`` is T, the number of agent
  steps;
- keys ``image (T+1, 64, 64, 3) uint8``, ``action (T+1, A) float32``, ``reward (T+1,) float32``,
  ``discount (T+1,) float32``, ``is_first / is_last / is_terminal (T+1,) bool`` and optional extra
  keys (``state``, ``success``, ...);
- entry 0 is the reset frame, with a zero action and a zero reward (``action[t]`` led to ``image[t]``).

Each directory may hold a ``dataset.json`` sidecar (how the data was made, counts, per-file sha256).
It is optional when reading and always written by this library.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np

from coworld.errors import UserError

REQUIRED_KEYS = ("image", "action", "reward", "discount", "is_first", "is_last", "is_terminal")
BOOL_KEYS = ("is_first", "is_last", "is_terminal")
SIDECAR = "dataset.json"
SIDECAR_FORMAT = "coworld-episodes/1"
NAME_PATTERN = re.compile(r"^(?P<time>\d{8}T\d{6})-(?P<uuid>[0-9a-f]{32})-(?P<length>\d+)\.npz$")


class DatasetError(UserError):
    """An episode file or dataset directory is malformed; the message names the file and key."""


# --------------------------------------------------------------------------------------------------
# Names


def episode_name(length: int, seq: int | None = None) -> str:
    """A file name ``{timestamp}-{uuid}-{length}.npz`` for an episode of ``length`` agent steps.

    With ``seq`` the uuid's first 8 hex digits hold the sequence number, so that files written by
    one replay within the same second still sort in write order.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    hexid = uuid.uuid4().hex
    if seq is not None:
        hexid = f"{seq:08x}" + hexid[8:]
    return f"{stamp}-{hexid}-{int(length)}.npz"


def name_length(name: str) -> int | None:
    """The length T encoded in a file name, or None when the name does not follow the pattern."""
    match = NAME_PATTERN.match(Path(name).name)
    return int(match["length"]) if match else None


def bad_listed_name(name) -> str | None:
    """Why ``name`` (a key of dataset.json's ``files``) is not a bare episode file name, or None.

    Names listed in a sidecar are joined to the dataset directory; a name with a separator, ``..``
    or an absolute path would point outside it (e.g. ``/etc/passwd`` or ``/dev/zero``), so such
    names are never opened.
    """
    if not isinstance(name, str) or not name:
        return "an episode name must be a non-empty string"
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or Path(name).is_absolute():
        return "an episode name must be a bare file name (no '/', no '..', not absolute); it is never opened"
    if not name.endswith(".npz"):
        return "an episode name must end in .npz; it is never opened"
    return None


def list_episode_files(directory) -> list[Path]:
    """The episode files of a directory, sorted by name (= by time for well-named files). Hidden
    files (``.tmp-*`` writes in progress or cut short) are not episodes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory; pass a directory of episode .npz files")
    return sorted(p for p in directory.iterdir() if p.suffix == ".npz" and not p.name.startswith(".")
                  and p.is_file())


# --------------------------------------------------------------------------------------------------
# Save / load


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_episode(directory, episode: dict, *, name: str | None = None) -> Path:
    """Write ``episode`` as a compressed .npz into ``directory`` (created if needed), atomically.

    The default name is :func:`episode_name` of the episode's length. Returns the file's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in episode.items()}
    if "reward" not in arrays:
        raise DatasetError("save_episode: the episode has no 'reward' key")
    if name is None:
        name = episode_name(len(arrays["reward"]) - 1)
    path = directory / name
    _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def read_npz(data: bytes | os.PathLike | str, label: str = "") -> dict[str, np.ndarray]:
    """Read every array of an .npz without pickle; any failure becomes a DatasetError."""
    label = label or str(data)
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        npz = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{label}: file not found") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{label}: not a readable .npz file (truncated or corrupt: {exc}); delete or re-create it"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{label}: not an .npz archive (a single .npy array?)")
    out = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise DatasetError(
                        f"{label}: key '{key}' holds Python objects that need pickle to load; "
                        "refusing to unpickle. Re-save the episode with plain numeric arrays."
                    ) from None
                raise DatasetError(f"{label}: key '{key}' cannot be read: {exc}") from None
            except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
                raise DatasetError(
                    f"{label}: key '{key}' cannot be read (truncated or corrupt file: {exc}); "
                    "delete or re-create it"
                ) from None
            if not isinstance(out[key], np.ndarray):  # a member that is not in .npy format: raw bytes
                raise DatasetError(
                    f"{label}: key '{key}' is raw bytes, not a NumPy array; re-save the episode with "
                    "numeric arrays (np.savez_compressed)"
                )
    return out


def normalize_episode(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bring the variants found in the wild to the native dtypes, filling keys that can be derived.

    float64 rewards/discounts/actions become float32, 0/1 integer flags become bool, ``(T+1, 1)``
    columns are flattened, a missing ``is_terminal`` is derived from ``discount == 0`` (and a missing
    ``discount`` from ``is_terminal``), missing ``is_first``/``is_last`` mark the first/last entry.
    Defects that cannot be repaired (unequal lengths, bad shapes) are left for validation to report.
    """
    ep = dict(arrays)
    for key in ("reward", "discount"):
        if key in ep:
            value = ep[key]
            if value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if value.dtype.kind in "fiub" and value.dtype != np.float32:
                value = value.astype(np.float32)
            ep[key] = value
    if "action" in ep and ep["action"].dtype.kind in "fiu" and ep["action"].dtype != np.float32:
        ep["action"] = ep["action"].astype(np.float32)
    for key in BOOL_KEYS:
        if key in ep and ep[key].dtype.kind in "iuf":
            ep[key] = ep[key] != 0
        if key in ep and ep[key].ndim == 2 and ep[key].shape[1] == 1:
            ep[key] = ep[key][:, 0]
    if "is_terminal" not in ep and "discount" in ep and ep["discount"].ndim == 1:
        ep["is_terminal"] = ep["discount"] == 0
    if "discount" not in ep and "is_terminal" in ep and ep["is_terminal"].ndim == 1:
        ep["discount"] = 1.0 - ep["is_terminal"].astype(np.float32)
    size = next((len(ep[k]) for k in ("reward", "image", "action") if k in ep and np.ndim(ep[k]) >= 1), None)
    if size is not None and "is_first" not in ep:
        ep["is_first"] = np.zeros(size, bool)
        ep["is_first"][:1] = True
    if size is not None and "is_last" not in ep:
        ep["is_last"] = np.zeros(size, bool)
        ep["is_last"][-1:] = True
    return ep


def load_episode(path) -> dict[str, np.ndarray]:
    """Load one episode file (never unpickling), normalised with :func:`normalize_episode`.

    Raises DatasetError when the file cannot be read; use :func:`coworld.data.validate.validate_episode`
    to find the defects of a readable file.
    """
    return normalize_episode(read_npz(Path(path)))


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Whole datasets written atomically

PARTIAL_TAG = ".partial-"


def check_new_output(out) -> Path:
    """``out`` as a Path, after checking it is new or an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new or empty output directory")
    return out


def partial_dir(out) -> Path:
    """The staging directory of ``out`` for this process: a hidden sibling named after the host and pid."""
    out = Path(out)
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())
    return out.parent / f".{out.name}{PARTIAL_TAG}{host}-{os.getpid()}"


def remove_dead_partials(out) -> None:
    """Remove staging directories of ``out`` left by killed processes of this host (pid no longer alive)."""
    out = Path(out)
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())
    prefix = f".{out.name}{PARTIAL_TAG}{host}-"
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        pid = path.name[len(prefix):] if path.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staged, out) -> Path:
    """Rename the finished ``staged`` directory to ``out`` (which must be absent or an empty directory)."""
    out = Path(out)
    try:
        os.replace(staged, out)
    except OSError as exc:
        raise UserError(f"cannot move the finished dataset to {out} ({exc.strerror}); it was left in {staged}. "
                        f"Move it by hand, or delete it and re-run") from None
    return out


@contextlib.contextmanager
def staged_output(out):
    """Yield a fresh staging directory beside ``out``; when the block succeeds, rename it to ``out``.

    An interrupted or failed write leaves nothing at ``out`` (the staging directory is removed on an
    exception, and one left by a killed process is removed by the next write of the same ``out``),
    so a directory that exists at ``out`` is always complete.
    """
    out = check_new_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out)
    staged = partial_dir(out)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish(staged, out)


# --------------------------------------------------------------------------------------------------
# Sidecar


def read_json_object(path: Path, fix: str) -> dict:
    """A JSON file holding an object; one DatasetError line (ending in ``fix``) when it does not."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return meta


def read_sidecar(directory) -> dict | None:
    """The directory's dataset.json as a dict, or None when there is none."""
    path = Path(directory) / SIDECAR
    return read_json_object(path, "fix it or delete it") if path.exists() else None


def write_sidecar(directory, meta: dict) -> Path:
    """Write dataset.json atomically (format tag added, keys sorted)."""
    path = Path(directory) / SIDECAR
    meta = {"format": SIDECAR_FORMAT, **meta}
    text = json.dumps(meta, indent=1, sort_keys=True) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))
    return path


def update_sidecar(directory, new_files=(), removed=(), **meta) -> dict:
    """Add the checksums and lengths of ``new_files``, drop ``removed`` names, merge ``meta``
    (env, observation_space, action_space, action_repeat, collection, ...) and recount.

    Returns the sidecar written.
    """
    directory = Path(directory)
    side = read_sidecar(directory) or {}
    side.update(meta)
    files = dict(side.get("files", {}))
    for name in removed:
        files.pop(Path(name).name, None)
    for path in new_files:
        path = directory / Path(path).name
        length = name_length(path.name)
        if length is None:
            length = len(load_episode(path)["reward"]) - 1
        files[path.name] = {"sha256": sha256_file(path), "length": length}
    side["files"] = files
    side["counts"] = {"episodes": len(files), "steps": sum(f["length"] for f in files.values())}
    write_sidecar(directory, side)
    return side


def space_info(space) -> dict:
    """A JSON-friendly description of a gymnasium space (Dict and Box are enough for our envs)."""
    if hasattr(space, "spaces") and isinstance(space.spaces, dict):
        return {k: space_info(v) for k, v in space.spaces.items()}
    info = {"type": type(space).__name__}
    if hasattr(space, "shape"):
        info["shape"] = list(space.shape)
    if hasattr(space, "dtype") and space.dtype is not None:
        info["dtype"] = str(space.dtype)
    if hasattr(space, "low") and np.ndim(space.low) > 0:
        low, high = np.asarray(space.low), np.asarray(space.high)
        info["low"], info["high"] = float(low.min()), float(high.max())
    return info


# --------------------------------------------------------------------------------------------------
# Building episodes from an environment


class EpisodeBuilder:
    """Collects one episode step by step in the native format.

    ``reset(obs)`` starts an episode (entry 0: zero action, zero reward, discount 1, is_first);
    ``step(action, obs, reward, terminated, truncated, info)`` appends one agent step;
    ``episode()`` returns the arrays once ``done``.
    """

    def __init__(self, action_dim: int):
        self.action_dim = int(action_dim)
        self._rows: dict[str, list] = {}

    def reset(self, obs: dict) -> None:
        self._rows = {key: [] for key in REQUIRED_KEYS}
        self._rows["state"] = []
        self._rows["success"] = []
        self._append(obs, np.zeros(self.action_dim, np.float32), 0.0, False, False, first=True, success=None)

    def step(self, action, obs: dict, reward: float, terminated: bool, truncated: bool, info=None) -> None:
        if not self._rows:
            raise RuntimeError("EpisodeBuilder.step called before reset")
        action = np.clip(np.asarray(action, np.float32).reshape(self.action_dim), -1.0, 1.0)
        success = (info or {}).get("success")
        self._append(obs, action, reward, bool(terminated), bool(truncated), first=False, success=success)

    def _append(self, obs, action, reward, terminated, truncated, first, success) -> None:
        rows = self._rows
        rows["image"].append(np.asarray(obs["image"], np.uint8))
        rows["action"].append(action)
        rows["reward"].append(np.float32(reward))
        rows["discount"].append(np.float32(1.0 - terminated))
        rows["is_first"].append(first)
        rows["is_last"].append(terminated or truncated)
        rows["is_terminal"].append(terminated)
        if "state" in obs:
            rows["state"].append(np.asarray(obs["state"], np.float32))
        rows["success"].append(success)

    @property
    def done(self) -> bool:
        return bool(self._rows) and self._rows["is_last"][-1]

    def __len__(self) -> int:
        """Agent steps T so far."""
        return max(len(self._rows.get("reward", [])) - 1, 0)

    def episode(self) -> dict[str, np.ndarray]:
        rows = self._rows
        ep = {
            "image": np.stack(rows["image"]),
            "action": np.stack(rows["action"]).astype(np.float32),
            "reward": np.asarray(rows["reward"], np.float32),
            "discount": np.asarray(rows["discount"], np.float32),
            "is_first": np.asarray(rows["is_first"], bool),
            "is_last": np.asarray(rows["is_last"], bool),
            "is_terminal": np.asarray(rows["is_terminal"], bool),
        }
        if rows["state"] and len(rows["state"]) == len(rows["reward"]):
            ep["state"] = np.stack(rows["state"])
        if any(s is not None for s in rows["success"][1:]):
            ep["success"] = np.asarray([bool(s) for s in rows["success"]], bool)
        return ep
