"""Import and export of community dataset formats (docs/collection.md, "Interop").

- ``npz``: directories of per-episode ``.npz`` files (V-D4RL 64px, the CoWorld authors' data,
  DreamerV2 replays; SPEC section 11). They already load natively; importing copies them into a
  clean dataset with our file names and a sidecar, and with ``repair="truncate"`` mends the known
  V-D4RL defect of keys of unequal length (500 vs 501 entries) by cutting every key to the shortest.
- ``vd4rl-hdf5``: V-D4RL 84px HDF5 shards with ``observation (N, 3, 84, 84) uint8``, ``action``,
  ``reward``, ``discount`` and ``step_type`` (0 first, 1 mid, 2 last) for all episodes end to end.
  Episodes are split on ``step_type`` (also across shards), images turned channels-last and
  optionally area-resized (:func:`area_resize`).
- ``minari``: Minari (0.4 / 0.5) datasets, through the ``minari`` package. Export writes raw,
  lossless image arrays (Minari 0.5.4 JPEG-encodes images unless told not to); import warns when a
  dataset holds JPEG-encoded (lossy) images.

Every import writes episodes in the native format (``coworld/data/episodes.py``) into a new or
empty directory, with a ``dataset.json`` whose ``collection`` entry records the source.
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import numpy as np

from coworld.data.episodes import (
    REQUIRED_KEYS,
    DatasetError,
    episode_name,
    list_episode_files,
    load_episode,
    normalize_episode,
    read_npz,
    read_sidecar,
    save_episode,
    update_sidecar,
)
from coworld.data.validate import check_episode
from coworld.errors import MissingDependency, UserError

IMPORT_FORMATS = ("npz", "vd4rl-hdf5", "minari")
EXPORT_FORMATS = ("minari",)
REPAIRS = ("truncate",)
HDF5_KEYS = ("observation", "action", "reward", "discount", "step_type")
FIRST, MID, LAST = 0, 1, 2  # dm_env step types used by V-D4RL's HDF5 shards


# --------------------------------------------------------------------------------------------------
# Helpers


def _new_output(out) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new or empty output directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _space_meta(ep: dict) -> dict:
    """observation_space / action_space entries of the sidecar, from one episode."""
    obs = {"image": {"type": "Box", "shape": list(ep["image"].shape[1:]), "dtype": "uint8", "low": 0.0, "high": 255.0}}
    if "state" in ep:
        obs["state"] = {"type": "Box", "shape": list(ep["state"].shape[1:]), "dtype": str(ep["state"].dtype)}
    action = {"type": "Box", "shape": [ep["action"].shape[1]], "dtype": "float32", "low": -1.0, "high": 1.0}
    return {"observation_space": obs, "action_space": action}


class _Writer:
    """Writes episodes in order (sequence-numbered names) and the sidecar at the end."""

    def __init__(self, out):
        self.out = _new_output(out)
        self.paths: list[Path] = []
        self.first: dict | None = None

    def add(self, ep: dict) -> None:
        problems = check_episode(ep, f"episode {len(self.paths)}")
        if problems:
            raise DatasetError("; ".join(str(p) for p in problems[:3]))
        if self.first is None:
            self.first = {k: v[:1] for k, v in ep.items()}
        T = len(ep["reward"]) - 1
        self.paths.append(save_episode(self.out, ep, name=episode_name(T, seq=len(self.paths))))

    def finish(self, collection: dict, env: str | None, **meta) -> dict:
        if not self.paths:
            raise DatasetError(f"no complete episode found in the source; nothing was written to {self.out}")
        meta = {**_space_meta(self.first), **meta}
        return update_sidecar(self.out, self.paths, env=env, collection=collection, **meta)


# --------------------------------------------------------------------------------------------------
# npz directories (V-D4RL 64px, the authors' data)


def truncate_episode(ep: dict) -> dict:
    """Cut every key to the shortest key's length (the V-D4RL 500-vs-501 defect).

    Entries are dropped at the end, so entry 0 (the reset frame) stays aligned; the new last entry
    is marked ``is_last`` (the episode now ends there, as at a time limit).
    """
    n = min(len(v) for v in ep.values() if np.ndim(v) >= 1)
    out = {k: (v[:n] if np.ndim(v) >= 1 else v) for k, v in ep.items()}
    if "is_last" in out and n > 0:
        out["is_last"] = out["is_last"].copy()
        out["is_last"][-1] = True
    return out


def import_npz(sources, out, *, repair: str | None = None, env: str | None = None) -> dict:
    """Copy the episodes of npz directories (or files) into ``out`` in the native format.

    Files are taken in name order (= time order for well-named files). With ``repair="truncate"``
    episodes whose keys have unequal lengths are cut to the shortest key, with a warning; any other
    defect raises DatasetError. Returns the sidecar written.
    """
    if repair not in (None, *REPAIRS):
        raise UserError(f"unknown repair '{repair}'; the only repair is: truncate")
    files = []
    for src in map(Path, sources):
        files += [src] if src.is_file() else list_episode_files(src)
    if not files:
        raise UserError(f"no .npz episode files in {', '.join(map(str, sources))}")
    first_side = next((read_sidecar(s) for s in map(Path, sources) if s.is_dir() and read_sidecar(s)), None) or {}
    writer = _Writer(out)
    repaired = []
    for path in files:
        ep = normalize_episode(read_npz(path))
        lengths = {k: len(v) for k, v in ep.items() if np.ndim(v) >= 1}
        if len(set(lengths.values())) > 1:
            if repair != "truncate":
                raise DatasetError(
                    f"{path}: keys have unequal lengths ({_describe_lengths(lengths)}); re-run with "
                    "--repair truncate to cut every key to the shortest length"
                )
            warnings.warn(f"{path.name}: keys have unequal lengths ({_describe_lengths(lengths)}); "
                          f"truncated to {min(lengths.values())} entries", stacklevel=2)
            ep = truncate_episode(ep)
            repaired.append(path.name)
        try:
            writer.add(ep)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from None
    collection = {
        "method": "import",
        "format": "npz",
        "sources": [str(Path(s).resolve()) for s in sources],
        "repair": repair,
        "repaired_files": repaired,
        "source_collection": first_side.get("collection"),
    }
    return writer.finish(collection, env or first_side.get("env"))


def _describe_lengths(lengths: dict) -> str:
    groups: dict[int, list[str]] = {}
    for key, n in lengths.items():
        groups.setdefault(n, []).append(key)
    return ", ".join(f"{n}: {' '.join(sorted(keys))}" for n, keys in sorted(groups.items()))


# --------------------------------------------------------------------------------------------------
# V-D4RL 84px HDF5 shards


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` uint8 images to ``(N, size, size, C)`` by area averaging.

    Each output pixel is the mean of the input area it covers, fractional pixels weighted by the
    covered fraction (the exact box filter, like OpenCV's INTER_AREA for downscaling), rounded to
    the nearest integer. Done in NumPy as two matrix products, so no image library is needed.
    """

    def weights(n_in: int) -> np.ndarray:
        scale = n_in / size
        lo = np.arange(size)[:, None] * scale  # output pixel i covers [i * scale, (i + 1) * scale)
        j = np.arange(n_in)[None, :]
        overlap = np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0, None)
        return (overlap / scale).astype(np.float32)  # (size, n_in), rows sum to 1

    wh, ww = weights(images.shape[1]), weights(images.shape[2])
    out = np.einsum("ij,njkc,lk->nilc", wh, images.astype(np.float32), ww, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _shard_sort_key(path: Path):
    """Shards named 0.hdf5, 1.hdf5, ..., 10.hdf5 sort numerically; other names by text."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def _hdf5_files(sources) -> list[Path]:
    files = []
    for src in map(Path, sources):
        if src.is_dir():
            files += sorted((p for p in src.iterdir() if p.suffix in (".hdf5", ".h5")), key=_shard_sort_key)
        elif src.is_file():
            files.append(src)
        else:
            raise UserError(f"{src}: no such file or directory")
    if not files:
        raise UserError(f"no .hdf5 shards in {', '.join(map(str, sources))}")
    return files


def _vd4rl_episode(obs, action, reward, discount, resize: int | None) -> dict:
    """Native episode from the arrays of one episode's steps (first .. last)."""
    image = np.asarray(obs, np.uint8)
    if image.ndim == 4 and image.shape[1] == 3 and image.shape[-1] != 3:
        image = image.transpose(0, 2, 3, 1)  # channels-first -> channels-last
    if resize and image.shape[1] != resize:
        image = area_resize(image, resize)
    n = len(image)
    discount = np.asarray(discount, np.float32).reshape(n)
    is_first, is_last = np.zeros(n, bool), np.zeros(n, bool)
    is_first[0], is_last[-1] = True, True
    is_terminal = discount == 0
    is_terminal[0] = False
    return {
        "image": np.ascontiguousarray(image),
        "action": np.asarray(action, np.float32).reshape(n, -1),
        "reward": np.asarray(reward, np.float32).reshape(n),
        "discount": discount,
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_terminal,
    }


def import_vd4rl_hdf5(sources, out, *, resize: int | None = None, env: str | None = None) -> dict:
    """Split V-D4RL HDF5 shards into native episodes in ``out``; returns the sidecar written.

    ``sources`` are shard files or directories of them (taken in numeric name order, as V-D4RL's
    splitting script numbers them). An episode runs from a ``step_type`` 0 to the next 2 and may
    continue into the next shard; steps outside complete episodes are dropped with a warning.
    Shards are read episode by episode, so large shards need little memory.
    """
    try:
        import h5py
    except ImportError:
        raise MissingDependency("h5py", "hdf5", what="importing V-D4RL HDF5 shards") from None
    if resize is not None and resize < 8:
        raise UserError(f"--resize must be at least 8 pixels (got {resize})")
    files = _hdf5_files(sources)
    writer = _Writer(out)
    dropped = 0
    pending: list[dict] = []  # pieces of an episode begun in an earlier shard

    def emit(pieces):
        parts = {k: np.concatenate([p[k] for p in pieces]) for k in ("observation", "action", "reward", "discount")}
        writer.add(_vd4rl_episode(parts["observation"], parts["action"], parts["reward"], parts["discount"], resize))

    for path in files:
        with h5py.File(path, "r") as f:
            missing = [k for k in HDF5_KEYS if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing dataset(s) {', '.join(missing)}; expected {', '.join(HDF5_KEYS)}")
            sizes = {k: len(f[k]) for k in HDF5_KEYS}
            if len(set(sizes.values())) > 1:
                raise DatasetError(f"{path}: datasets have unequal lengths ({_describe_lengths(sizes)})")
            step_type = np.asarray(f["step_type"][:]).reshape(-1).astype(np.int64)
            if not np.isin(step_type, (FIRST, MID, LAST)).all():
                raise DatasetError(f"{path}: step_type holds values other than 0 (first), 1 (mid), 2 (last)")

            def piece(a, b):  # steps a .. b-1 of this shard
                return {k: f[k][a:b] for k in ("observation", "action", "reward", "discount")}

            n = len(step_type)
            bounds = np.flatnonzero(step_type != MID)  # the firsts and lasts; mids lie between
            i = 0  # first step of this shard not yet assigned
            if pending:
                nxt = bounds[0] if len(bounds) else n
                if nxt == n:  # the whole shard continues the pending episode
                    pending.append(piece(0, n))
                    continue
                if step_type[nxt] == LAST:
                    pending.append(piece(0, nxt + 1))
                    emit(pending)
                    i = nxt + 1
                else:  # a new episode starts before the pending one ended
                    dropped += sum(len(p["action"]) for p in pending) + nxt
                    i = nxt
                pending = []
            for b in bounds[np.searchsorted(bounds, i):]:
                if b < i:
                    continue
                if step_type[b] == LAST:  # a last without its first: orphan steps
                    dropped += b + 1 - i
                    i = b + 1
                    continue
                dropped += b - i  # steps before this first belong to no episode
                later = bounds[bounds > b]
                if len(later) == 0:  # runs on into the next shard
                    pending = [piece(b, n)]
                    i = n
                    break
                end = later[0]
                if step_type[end] == FIRST:  # an episode without its last
                    dropped += end - b
                    i = end
                    continue
                emit([piece(b, end + 1)])
                i = end + 1
            if i < n and not pending:
                dropped += n - i
    if pending:
        dropped += sum(len(p["action"]) for p in pending)
    if dropped:
        warnings.warn(f"{dropped} step(s) outside complete episodes (no step_type 0 ... 2) were dropped", stacklevel=2)
    collection = {
        "method": "import",
        "format": "vd4rl-hdf5",
        "sources": [str(p.resolve()) for p in files],
        "resize": {"size": resize, "method": "area average (exact box filter, NumPy), rounded"} if resize else None,
        "dropped_steps": int(dropped),
    }
    return writer.finish(collection, env)


# --------------------------------------------------------------------------------------------------
# Minari


def _minari():
    try:
        import minari
        from minari.dataset.minari_storage import MinariStorage
    except ImportError as exc:
        package = "h5py" if "h5py" in str(exc) else "minari"
        raise MissingDependency(package, "minari", what="Minari import/export") from None
    return minari, MinariStorage


def _dataset_id(name: str) -> str:
    return "coworld/" + (re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "dataset") + "-v0"


def export_minari(src, out, *, dataset_id: str | None = None) -> Path:
    """Write the episodes of ``src`` as a Minari HDF5 dataset ``out/data/{metadata.json,main_data.hdf5}``.

    Mapping (Minari's convention: observations have T+1 entries, the rest T):
    ``observations = {image, state?}`` (all T+1 entries), ``actions = action[1:]``,
    ``rewards = reward[1:]``, ``terminations = is_terminal[1:]``,
    ``truncations = is_last[1:] & ~is_terminal[1:]``, and ``infos`` = the other keys with all T+1
    entries (e.g. ``success``), plus ``discount`` / ``is_first`` where they are not the default
    ``1 - is_terminal`` / first entry only. Images are stored raw (lossless). Returns ``out``.
    Load it with ``minari.MinariDataset(out / "data")``, or copy ``out`` to
    ``$MINARI_DATASETS_PATH/<dataset_id>`` and use ``minari.load_dataset(dataset_id)``.
    """
    minari, MinariStorage = _minari()
    import gymnasium
    from minari.data_collector import EpisodeBuffer

    src, out = Path(src), Path(out)
    files = list_episode_files(src)
    if not files:
        raise UserError(f"{src}: no episode files (*.npz) to export")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new or empty output directory")
    dataset_id = dataset_id or _dataset_id(src.resolve().name)
    first = load_episode(files[0])
    obs_spaces = {"image": gymnasium.spaces.Box(0, 255, first["image"].shape[1:], np.uint8)}
    if "state" in first:
        obs_spaces["state"] = gymnasium.spaces.Box(-np.inf, np.inf, first["state"].shape[1:], first["state"].dtype)
    observation_space = gymnasium.spaces.Dict(obs_spaces)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, first["action"].shape[1:], np.float32)

    out.mkdir(parents=True, exist_ok=True)
    options = {"data_format": "hdf5"}
    if "jpeg_encoding" in inspect.signature(MinariStorage.new).parameters:
        options["jpeg_encoding"] = False  # Minari 0.5.4 JPEG-encodes images by default (lossy)
    storage = MinariStorage.new(out / "data", observation_space=observation_space, action_space=action_space, **options)

    def buffers():
        for i, path in enumerate(files):
            ep = load_episode(path)
            problems = check_episode(ep, str(path))
            if problems:
                raise DatasetError("; ".join(map(str, problems[:3])) + "; run `coworld data validate`")
            if np.any(ep["action"][0] != 0) or ep["reward"][0] != 0:
                warnings.warn(f"{path.name}: entry 0 has a non-zero action or reward; it is not exported", stacklevel=3)
            term, last = ep["is_terminal"], ep["is_last"]
            infos = {k: v for k, v in ep.items() if k not in (*REQUIRED_KEYS, "image", "state")}
            if not np.array_equal(ep["discount"], 1 - term.astype(np.float32)):
                infos["discount"] = ep["discount"]
            standard_first = np.zeros(len(term), bool)
            standard_first[0] = True
            if not np.array_equal(ep["is_first"], standard_first):
                infos["is_first"] = ep["is_first"]
            yield EpisodeBuffer(
                id=i,
                observations={k: ep[k] for k in obs_spaces},
                actions=ep["action"][1:],
                rewards=ep["reward"][1:],
                terminations=term[1:],
                truncations=last[1:] & ~term[1:],
                infos=infos,
            )

    storage.update_episodes(buffers())
    side = read_sidecar(src) or {}
    storage.update_metadata({
        "dataset_id": dataset_id,
        "minari_version": minari.__version__,
        "algorithm_name": str((side.get("collection") or {}).get("method", "unknown")),
        "description": f"Exported by coworld from {src.resolve().name} (env {side.get('env')}); "
                       "observations: image (uint8, raw), state; infos: extra per-step keys",
    })
    return out


def _minari_data_path(src) -> Path:
    src = Path(src)
    for candidate in (src / "data", src):
        if (candidate / "metadata.json").exists():
            return candidate
    if not src.exists():  # maybe a dataset id in the local Minari root
        from minari.storage.datasets_root_dir import get_dataset_path

        candidate = Path(get_dataset_path(str(src))) / "data"
        if (candidate / "metadata.json").exists():
            return candidate
    raise UserError(f"{src}: not a Minari dataset (no data/metadata.json); give its directory or dataset id")


def _is_image(space) -> bool:
    return getattr(space, "dtype", None) == np.uint8 and len(getattr(space, "shape", ()) or ()) == 3


def import_minari(src, out, *, env: str | None = None) -> dict:
    """Convert a Minari dataset (a directory or a local dataset id) into native episodes in ``out``.

    The inverse of :func:`export_minari`. Observations must hold an image: a Dict space's ``image``
    entry (or its only uint8 rank-3 entry), or an image Box itself; channels-first images are
    transposed. A Dict's ``state`` entry becomes ``state``, other numeric entries keep their names.
    Actions in a Box other than [-1, 1] are rescaled linearly to [-1, 1] (warned and recorded).
    Returns the sidecar written.
    """
    minari, _ = _minari()
    import gymnasium

    data_path = _minari_data_path(src)
    dataset = minari.MinariDataset(data_path)
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not isinstance(act_space, gymnasium.spaces.Box) or len(act_space.shape) != 1:
        raise UserError(f"{src}: action space {act_space} is not a 1-D Box; only continuous actions are supported")
    if isinstance(obs_space, gymnasium.spaces.Dict):
        images = [k for k, s in obs_space.spaces.items() if _is_image(s)]
        image_key = "image" if "image" in obs_space.spaces else (images[0] if len(images) == 1 else None)
    else:
        image_key = "" if _is_image(obs_space) else None
    if image_key is None:
        raise UserError(f"{src}: observation space {obs_space} has no image (uint8 H x W x 3) entry named 'image'")
    if getattr(dataset.storage, "jpeg_encoding", False):
        warnings.warn(f"{src}: images are JPEG-encoded in this Minari dataset; the imported images carry its "
                      "compression loss", stacklevel=2)
    low, high = np.asarray(act_space.low, np.float64), np.asarray(act_space.high, np.float64)
    rescale = not (np.allclose(low, -1) and np.allclose(high, 1))
    if rescale:
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise UserError(f"{src}: action bounds are not finite ({act_space}); cannot map actions to [-1, 1]")
        warnings.warn(f"{src}: actions in [{low.min()}, {high.max()}] are rescaled linearly to [-1, 1]", stacklevel=2)

    writer = _Writer(out)
    for data in dataset.iterate_episodes():
        obs = data.observations
        ep = {}
        if image_key == "":
            ep["image"] = np.asarray(obs)
        else:
            ep["image"] = np.asarray(obs[image_key])
            ep.update({k: np.asarray(v) for k, v in obs.items() if k != image_key and np.asarray(v).dtype.kind in "biuf"})
        image = ep["image"]
        if image.ndim == 4 and image.shape[1] == 3 and image.shape[-1] != 3:
            ep["image"] = image.transpose(0, 2, 3, 1)
        T = len(data.rewards)
        action = np.asarray(data.actions, np.float64).reshape(T, -1)
        if rescale:
            action = 2 * (action - low) / (high - low) - 1
        term = np.asarray(data.terminations, bool).reshape(T)
        trunc = np.asarray(data.truncations, bool).reshape(T)
        ep["action"] = np.concatenate([np.zeros((1, action.shape[1])), action]).astype(np.float32)
        ep["reward"] = np.concatenate([[0.0], np.asarray(data.rewards, np.float64).reshape(T)]).astype(np.float32)
        ep["is_terminal"] = np.concatenate([[False], term])
        ep["is_last"] = np.concatenate([[False], term | trunc])
        ep["is_last"][-1] = True  # the data end here (Minari may hold unfinished episodes)
        ep["discount"] = 1 - ep["is_terminal"].astype(np.float32)
        ep["is_first"] = np.zeros(T + 1, bool)
        ep["is_first"][0] = True
        for key, value in (data.infos or {}).items():
            value = np.asarray(value)
            if value.dtype.kind in "biuf" and value.ndim >= 1:
                if len(value) == T:  # infos without the reset entry: pad entry 0
                    value = np.concatenate([np.zeros_like(value[:1]), value])
                if len(value) == T + 1:
                    ep[key] = value
        writer.add(normalize_episode(ep))
    collection = {
        "method": "import",
        "format": "minari",
        "sources": [str(data_path.resolve())],
        "dataset_id": dataset.storage.metadata.get("dataset_id"),
        "action_rescaled_from": [low.tolist(), high.tolist()] if rescale else None,
    }
    return writer.finish(collection, env)
