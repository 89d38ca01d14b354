"""Replay: episodes packed end to end in flat arrays, with vectorised window sampling.

One class serves both uses:

- offline (``readonly=True``): every episode of ``directory`` is validated once and written, streaming
  episode by episode, into a packed cache of ``.npy`` files that is then memory-mapped. The dataset
  directory is never written to: the cache lives in a user cache directory (:func:`default_cache_root`),
  keyed by the dataset's location and content (dataset.json's bytes, file names, sizes and times), so
  a changed dataset rebuilds it. It is built under an OS file lock and renamed into place, so processes
  opening one dataset at once wait for a single build and share it. A dataset larger than RAM works
  because only the pages a batch touches are read.
- online (``readonly=False``): ``add_episode`` appends to in-memory arrays (grown by doubling) and saves
  the episode atomically into ``directory`` (when given) with a sequence-numbered name, updating
  dataset.json. Existing episodes of the directory are loaded first.

Episodes are stored one after another; episode ``e`` occupies entries ``start[e] .. start[e] + n[e] - 1``
of the packed arrays (``n = T + 1``). ``sample`` picks episodes, then a window start, and gathers all
``B * L`` entries with one fancy index per key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from coworld.data.episodes import (
    SIDECAR,
    DatasetError,
    bad_listed_name,
    episode_name,
    list_episode_files,
    normalize_episode,
    read_npz,
    read_sidecar,
    save_episode,
    update_sidecar,
)
from coworld.config import cache_root
from coworld.data.validate import check_episode
from coworld.errors import UserError

KEYS = ("image", "action", "reward", "discount", "is_first", "is_terminal")
CACHE_VERSION = 2
LOCK_NAME = ".lock"


def default_cache_root() -> Path:
    """Where offline caches live: ``replay/`` in the user cache (:func:`coworld.config.cache_root`)."""
    return cache_root() / "replay"


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive OS lock on ``path`` (created if needed). The kernel drops it when the
    process dies, so a killed holder never leaves a lock to clean up; other processes wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Replay:
    def __init__(
        self,
        directory=None,
        *,
        seed: int = 0,
        capacity: int | None = None,
        cache_dir=None,
        skip_bad: bool = False,
        readonly: bool = True,
        extra_keys: tuple[str, ...] = (),
    ):
        """
        directory: episode directory (offline dataset, or where an online replay saves its episodes);
            None with readonly=False gives a purely in-memory online replay.
        seed: seed of the sampler's numpy Generator (PCG64).
        capacity: online only: most entries (steps + 1 per episode) kept in memory; the oldest episodes
            are dropped from sampling beyond it (their files stay on disk). None = unbounded.
        cache_dir: root of the packed offline caches; default $COWORLD_CACHE/replay, else
            $XDG_CACHE_HOME/coworld/replay, else ~/.cache/coworld/replay. Never the dataset directory.
        skip_bad: skip malformed (or listed but missing) episodes with a warning instead of raising
            DatasetError.
        readonly: True for an offline dataset (memory-mapped), False for a growing online replay.
        extra_keys: optional episode keys sampled besides the standard ones, e.g. ``("state",)`` (the
            low-dimensional observation a state-input CoWorld source reads); an episode without one of
            them is refused. The offline cache of a dataset is keyed by them too.
        """
        self.directory = Path(directory) if directory is not None else None
        self.readonly = readonly
        self.capacity = capacity
        self.skip_bad = skip_bad
        self.rng = np.random.default_rng(seed)
        self.keys = KEYS + tuple(k for k in extra_keys if k not in KEYS)
        self._names: list[str] = []
        self._ep_start: list[int] = []  # physical start of each live episode
        self._ep_len: list[int] = []  # entries (T + 1) of each live episode
        self._index_cache = None
        self._data: dict[str, np.ndarray] = {}
        self._offset = 0  # physical index of the first live entry
        self._size = 0  # live entries
        self._action_dim: int | None = None
        self._image_shape: tuple | None = None
        self._next_seq = 0
        if readonly:
            if self.directory is None:
                raise UserError("Replay(readonly=True) needs a dataset directory")
            self._open_offline(cache_dir)
        elif self.directory is not None:
            files = []
            if self.directory.exists():
                for tmp in self.directory.glob(".tmp-*"):  # a write cut short by a kill (the run dir is locked)
                    tmp.unlink(missing_ok=True)
                files = list_episode_files(self.directory)
            self._next_seq = len(files)
            for path in files:
                ep = self._read(path, None)
                if ep is not None:
                    self._append(ep, path.name)

    # ----------------------------------------------------------------------------------------------
    # Properties

    @property
    def num_episodes(self) -> int:
        return len(self._names)

    @property
    def num_steps(self) -> int:
        """Agent steps T summed over the live episodes."""
        return self._size - len(self._names)

    @property
    def action_dim(self) -> int | None:
        return self._action_dim

    @property
    def names(self) -> list[str]:
        """File names of the live episodes, in storage order."""
        return list(self._names)

    def episodes(self):
        """Yield each live episode as a dict of arrays (the sampled keys), oldest first."""
        for start, n in zip(self._ep_start, self._ep_len):
            yield {key: np.asarray(self._data[key][start : start + n]) for key in self.keys}

    # ----------------------------------------------------------------------------------------------
    # Sampling

    def sample(self, batch: int, length: int, device="cpu", mode: str | None = None,
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """B windows of L consecutive entries, batch-major tensors (docs/architecture.md).

        mode "uniform" (default): an episode uniformly, then a window start uniformly among those that
        keep the window inside the episode. mode "length": episodes weighted by their length. An episode
        shorter than L starts its window at entry 0 and the window runs on into the next stored episode
        (the last one wraps to the first); ``is_first`` marks where each episode starts and position 0.
        ``rng`` draws with another generator (diagnostics), leaving the replay's own stream untouched.
        """
        rng = self.rng if rng is None else rng
        if not self._names:
            raise UserError("the replay holds no episodes yet; add or load episodes before sampling")
        start, n = self._index()
        mode = mode or "uniform"
        if mode == "uniform":
            ep = rng.integers(0, len(n), size=batch)
        elif mode == "length":
            ends = np.cumsum(n)
            ep = np.searchsorted(ends, rng.integers(0, ends[-1], size=batch), side="right")
        else:
            raise UserError(f"unknown sampling mode '{mode}'; use 'uniform' or 'length'")
        room = np.maximum(n[ep] - length, 0)
        first = start[ep] + rng.integers(0, room + 1)
        # (B, L) physical indices; wrap inside the live region [offset, offset + size).
        idx = self._offset + (first[:, None] - self._offset + np.arange(length)) % self._size
        out = {key: torch.from_numpy(np.asarray(self._data[key][idx])) for key in self.keys}
        out["is_first"][:, 0] = True
        if str(device) != "cpu":
            out = {key: value.to(device, non_blocking=True) for key, value in out.items()}
        return out

    def _index(self):
        if self._index_cache is None:
            self._index_cache = (np.asarray(self._ep_start, np.int64), np.asarray(self._ep_len, np.int64))
        return self._index_cache

    # ----------------------------------------------------------------------------------------------
    # Online: adding episodes

    def add_episode(self, episode: dict) -> str:
        """Append an episode (validated); save it into ``directory`` when there is one. Returns its name."""
        if self.readonly:
            raise UserError("this replay is read-only (an offline dataset); create it with readonly=False")
        ep = normalize_episode({k: np.asarray(v) for k, v in episode.items()})
        problems = check_episode(ep, "<new episode>")
        if problems:
            raise DatasetError("; ".join(str(p) for p in problems))
        self._check_consistent(ep, "<new episode>")
        name = episode_name(len(ep["reward"]) - 1, seq=self._next_seq)
        self._next_seq += 1
        if self.directory is not None:
            path = save_episode(self.directory, ep, name=name)
            update_sidecar(self.directory, [path])
        self._append(ep, name)
        return name

    def _append(self, ep: dict, name: str) -> None:
        self._check_consistent(ep, name)
        n = len(ep["reward"])
        end = self._offset + self._size
        if not self._data or end + n > len(self._data["reward"]):
            self._make_room(n, ep)
            end = self._offset + self._size
        for key in self.keys:
            self._data[key][end : end + n] = ep[key]
        self._data["is_first"][end] = True
        self._names.append(name)
        self._ep_start.append(end)
        self._ep_len.append(n)
        self._size += n
        while self.capacity and self._size > self.capacity and len(self._names) > 1:
            self._names.pop(0)
            self._ep_start.pop(0)
            dropped = self._ep_len.pop(0)
            self._offset += dropped
            self._size -= dropped
        self._index_cache = None

    def _make_room(self, n: int, ep: dict) -> None:
        """Compact the live region to index 0 and grow the arrays (doubling) so that n more entries fit."""
        allocated = len(self._data["reward"]) if self._data else 0
        needed = self._size + n
        new_size = allocated if needed <= allocated // 2 else max(2 * allocated, needed, 1024)
        if self.capacity:
            new_size = min(new_size, max(needed, self.capacity + n))
        live = slice(self._offset, self._offset + self._size)
        fresh = {}
        for key in self.keys:
            template = np.asarray(ep[key])
            fresh[key] = np.zeros((new_size,) + template.shape[1:], template.dtype)
            if self._data:
                fresh[key][: self._size] = self._data[key][live]
        self._ep_start = [s - self._offset for s in self._ep_start]
        self._offset = 0
        self._data = fresh

    def _check_consistent(self, ep: dict, name: str) -> None:
        missing = [k for k in self.keys if k not in ep]
        if missing:
            raise DatasetError(f"{name}: lacks the key(s) {', '.join(missing)} that this replay samples")
        action_dim, image_shape = ep["action"].shape[1], ep["image"].shape[1:]
        if self._action_dim is None:
            self._action_dim, self._image_shape = action_dim, image_shape
        elif action_dim != self._action_dim:
            raise DatasetError(f"{name}: action: dimension {action_dim} differs from the replay's {self._action_dim}")
        elif image_shape != self._image_shape:
            raise DatasetError(f"{name}: image: shape {image_shape} differs from the replay's {self._image_shape}")

    def _read(self, path: Path, sidecar_files: dict | None) -> dict | None:
        """Read, checksum and validate one file; None (with a warning) for a bad one when skip_bad."""
        try:
            raw = path.read_bytes()
            expected = (sidecar_files or {}).get(path.name, {}).get("sha256")
            if expected and hashlib.sha256(raw).hexdigest() != expected:
                raise DatasetError(f"{path}: -: sha256 does not match {SIDECAR}; the file was changed")
            ep = normalize_episode(read_npz(raw, str(path)))
            problems = check_episode(ep, str(path))
            if problems:
                raise DatasetError("; ".join(str(p) for p in problems))
            if self._action_dim is not None:
                self._check_consistent(ep, str(path))
            return ep
        except DatasetError as exc:
            if not self.skip_bad:
                raise DatasetError(f"{exc} (`coworld data validate {self.directory}` lists every problem)") from None
            warnings.warn(f"skipping bad episode: {exc}", stacklevel=3)
            return None

    # ----------------------------------------------------------------------------------------------
    # Offline: the packed, memory-mapped cache

    def _open_offline(self, cache_dir) -> None:
        files = list_episode_files(self.directory)
        if not files:
            raise DatasetError(f"{self.directory}: no episode files (*.npz); is this the right directory?")
        side = read_sidecar(self.directory)
        sidecar_files = self._listed_files(side, files)
        side_path = self.directory / SIDECAR
        side_digest = hashlib.sha256(side_path.read_bytes()).hexdigest() if side is not None else None
        extra = [list(self.keys)] if self.keys != KEYS else []  # (unchanged keys for caches of the standard keys)
        fingerprint = [CACHE_VERSION, self.skip_bad, side_digest, *extra, [[p.name, *self._stat(p)] for p in files]]
        key = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:24]
        group = self._cache_group(cache_dir)
        cache = group / key
        with _locked(group / LOCK_NAME):
            # Holding the lock: no other process is building here, so any build directory is left
            # over from a killed build and can go.
            if not (cache / "meta.json").exists():
                for stale in group.glob(".build-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                self._build_cache(files, sidecar_files, group, cache)
            # Mapped under the lock too, so that a concurrent rebuild cannot remove the entry
            # between the check and the mapping (mapped files stay readable once removed).
            meta = json.loads((cache / "meta.json").read_text())
            self._data = {k: np.load(cache / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in self.keys}
        self._names, self._ep_len = meta["names"], meta["lengths"]
        self._ep_start = np.concatenate([[0], np.cumsum(self._ep_len)[:-1]]).astype(int).tolist()
        self._size = int(sum(self._ep_len))
        self._action_dim, self._image_shape = meta["action_dim"], tuple(meta["image_shape"])

    def _listed_files(self, side: dict | None, files) -> dict:
        """dataset.json's ``files`` entry, after checking that every listed name is a bare file name
        and that every listed file is present (a missing one is refused unless skip_bad)."""
        listed = (side or {}).get("files", {})
        if not isinstance(listed, dict):
            raise DatasetError(f"{self.directory / SIDECAR}: 'files' must map episode names to entries; "
                               "fix or delete dataset.json")
        present = {p.name for p in files}
        for name in listed:
            why = bad_listed_name(name)
            if why:
                raise DatasetError(f"{self.directory / SIDECAR}: lists {name!r}: {why}; fix or delete dataset.json")
            if name not in present:
                message = (f"{self.directory / name}: listed in {SIDECAR} but missing; restore the file, or "
                           f"remove its entry from {SIDECAR} if the dataset is meant to be without it")
                if not self.skip_bad:
                    raise DatasetError(message)
                warnings.warn(f"skipping missing episode: {message}", stacklevel=4)
        return {name: entry for name, entry in listed.items() if isinstance(entry, dict)}

    @staticmethod
    def _stat(path: Path):
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def _cache_group(self, cache_dir) -> Path:
        """The cache directory of this dataset: ``<root>/<dir name>-<hash of its path>``, where root is
        ``cache_dir`` or :func:`default_cache_root`. Never inside the dataset directory."""
        root = Path(cache_dir) if cache_dir is not None else default_cache_root()
        where = self.directory.resolve()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in where.name)[:40] or "dataset"
        group = root / f"{safe}-{hashlib.sha256(str(where).encode()).hexdigest()[:12]}"
        if group.resolve().is_relative_to(where):
            raise UserError(f"the replay cache {group} would lie inside the dataset {where}; datasets are "
                            f"never written to: choose a cache_dir (or $COWORLD_CACHE) outside it")
        try:
            group.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the replay cache directory {group} ({exc.strerror}); "
                            f"set $COWORLD_CACHE to a writable directory") from None
        return group

    def _build_cache(self, files, sidecar_files, root: Path, cache: Path) -> None:
        """Stream every episode into raw per-key files, then give them .npy headers; never holds
        more than one episode in memory. Called with the cache lock held; the entry is assembled in a
        ``.build-*`` directory and renamed into place, so readers only ever see complete entries."""
        build = root / f".build-{cache.name}-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        raw = {key: open(build / f"{key}.raw", "wb") for key in self.keys}
        names, lengths, dtypes, shapes = [], [], {}, {}
        ok = False
        try:
            for path in files:
                ep = self._read(path, sidecar_files)
                if ep is None:
                    continue
                self._check_consistent(ep, str(path))
                ep["is_first"] = ep["is_first"].copy()
                ep["is_first"][0] = True
                for key in self.keys:
                    value = np.ascontiguousarray(ep[key])
                    dtypes[key], shapes[key] = value.dtype, value.shape[1:]
                    raw[key].write(value.tobytes())
                names.append(path.name)
                lengths.append(len(ep["reward"]))
            ok = True
        finally:
            for f in raw.values():
                f.close()
            if not ok:
                shutil.rmtree(build, ignore_errors=True)
        if not names:
            shutil.rmtree(build, ignore_errors=True)
            raise DatasetError(f"{self.directory}: every episode was skipped as bad; nothing to load")
        total = sum(lengths)
        for key in self.keys:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtypes[key]),
                "fortran_order": False,
                "shape": (total,) + tuple(shapes[key]),
            }
            with open(build / f"{key}.npy", "wb") as out, open(build / f"{key}.raw", "rb") as src:
                np.lib.format.write_array_header_2_0(out, header)
                shutil.copyfileobj(src, out, 1 << 22)
            (build / f"{key}.raw").unlink()
        meta = {
            "names": names,
            "lengths": lengths,
            "action_dim": self._action_dim,
            "image_shape": list(self._image_shape),
        }
        (build / "meta.json").write_text(json.dumps(meta))  # written last: an entry with it is complete
        for old in root.iterdir():  # caches of earlier versions of this dataset (we hold the lock)
            if old.is_dir() and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        os.replace(build, cache)

    # ----------------------------------------------------------------------------------------------
    # Checkpointing

    def state_dict(self) -> dict:
        """Sampler RNG state and the live episode names; safe for torch.load(weights_only=True)."""
        state = self.rng.bit_generator.state
        rng = {
            "bit_generator": state["bit_generator"],
            "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }
        return {"rng": rng, "episodes": list(self._names), "next_seq": self._next_seq}

    def load_state_dict(self, state: dict) -> None:
        """Restore the sampler and make the replay hold exactly the listed episodes, in order.

        For an online replay with a directory, episode files written after the state was taken (a run
        killed after its checkpoint) are deleted, since they will be collected again.
        """
        names = list(state["episodes"])
        if names != self._names:
            if self.readonly or self.directory is None:
                raise DatasetError(
                    "the replay's episodes differ from the checkpoint's "
                    f"({len(self._names)} here, {len(names)} saved); the dataset changed since the checkpoint"
                )
            self._restore_online(names)
        rng = state["rng"]
        self.rng.bit_generator.state = {
            "bit_generator": rng["bit_generator"],
            "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
            "has_uint32": int(rng["has_uint32"]),
            "uinteger": int(rng["uinteger"]),
        }
        self._next_seq = int(state.get("next_seq", self._next_seq))

    def _restore_online(self, names: list[str]) -> None:
        files = {p.name: p for p in list_episode_files(self.directory)}
        missing = [name for name in names if name not in files]
        if missing:
            raise DatasetError(
                f"{self.directory}: {len(missing)} episode file(s) of the checkpoint are missing, "
                f"e.g. {missing[0]}; cannot resume this replay"
            )
        keep = set(names)
        last = max(names) if names else ""
        stale = [p for name, p in files.items() if name not in keep and name > last]
        for path in stale:
            path.unlink()
        if stale:
            update_sidecar(self.directory, removed=[p.name for p in stale])
        self._names, self._ep_start, self._ep_len = [], [], []
        self._data, self._offset, self._size = {}, 0, 0
        self._action_dim = self._image_shape = None
        for name in names:
            ep = self._read(files[name], None)
            if ep is None:
                raise DatasetError(f"{files[name]}: this episode of the checkpoint is now malformed; cannot resume")
            self._append(ep, name)
