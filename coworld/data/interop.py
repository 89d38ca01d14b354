"""Import and export of community dataset formats (docs/collection.md, "Interop").

- ``npz``: directories of per-episode ``.npz`` files (V-D4RL 64px, the CoWorld authors' data,
  DreamerV2 replays; docs/algorithms.md#benchmarks-and-data). They already load natively; importing copies them into a
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
import json
import re
import warnings
from pathlib import Path

import numpy as np

from coworld.data.episodes import (
    REQUIRED_KEYS,
    DatasetError,
    check_new_output,
    episode_name,
    list_episode_files,
    load_episode,
    normalize_episode,
    read_json_object,
    read_npz,
    read_sidecar,
    save_episode,
    staged_output,
    update_sidecar,
)
from coworld.data.validate import check_episode
from coworld.errors import MissingDependency, UserError

IMPORT_FORMATS = ("npz", "vd4rl-hdf5", "minari")
EXPORT_FORMATS = ("minari",)
REPAIRS = ("truncate",)
HDF5_KEYS = ("observation", "action", "reward", "discount", "step_type")
FIRST, MID, LAST = 0, 1, 2  # dm_env step types used by V-D4RL's HDF5 shards
MAX_EPISODE_STEPS = 10_000  # longest episode an HDF5 import accepts by default (--max-episode-steps)
MAX_SHARD_STEPS = 5_000_000  # a shard declaring more steps is refused as damaged
MAX_IMAGE_SIDE = 1024  # widest observation image accepted
CHUNK_BYTES = 16 << 20  # source frames read (as float32) per chunk when converting images
STEP_TYPE_CHUNK = 1 << 20  # step_type entries read per chunk
FLOAT_TOLERANCE = 1e-3  # float images may exceed 1 (or 255) by this much (rounding in the source)


# --------------------------------------------------------------------------------------------------
# Helpers


def _space_meta(ep: dict) -> dict:
    """observation_space / action_space entries of the sidecar, from one episode."""
    obs = {"image": {"type": "Box", "shape": list(ep["image"].shape[1:]), "dtype": "uint8", "low": 0.0, "high": 255.0}}
    if "state" in ep:
        obs["state"] = {"type": "Box", "shape": list(ep["state"].shape[1:]), "dtype": str(ep["state"].dtype)}
    action = {"type": "Box", "shape": [ep["action"].shape[1]], "dtype": "float32", "low": -1.0, "high": 1.0}
    return {"observation_space": obs, "action_space": action}


class _Writer:
    """Writes episodes in order (sequence-numbered names) and the sidecar at the end, into a staging
    directory (see :func:`coworld.data.episodes.staged_output`) that only becomes ``out`` when complete."""

    def __init__(self, out):
        self.out = Path(out)
        self.paths: list[Path] = []
        self.first: dict | None = None

    def add(self, ep: dict) -> None:
        problems = check_episode(ep, f"episode {len(self.paths)}")
        if problems:
            raise DatasetError("; ".join(str(p) for p in problems[:3]))
        if self.first is None:
            self.first = {k: v[:1].copy() for k, v in ep.items()}  # not a view: frees the episode
        T = len(ep["reward"]) - 1
        self.paths.append(save_episode(self.out, ep, name=episode_name(T, seq=len(self.paths))))

    def finish(self, collection: dict, env: str | None, **meta) -> dict:
        if not self.paths:
            raise DatasetError("no complete episode found in the source; nothing was written")
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
    defect raises DatasetError. ``out`` appears only once complete. Returns the sidecar written.
    """
    check_new_output(out)
    if repair not in (None, *REPAIRS):
        raise UserError(f"unknown repair '{repair}'; the only repair is: truncate")
    with staged_output(out) as staged:
        return _import_npz(sources, staged, repair, env)


def _import_npz(sources, out, repair, env) -> dict:
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


def _check_self_contained(f, path) -> None:
    """Refuse an HDF5 file that reads data from other files: external links, datasets with external
    raw storage, and virtual datasets. Walks every group once; soft links inside the file are fine."""
    import h5py

    seen = set()

    def walk(group, depth):
        if depth > 64:
            raise DatasetError(f"{path}: groups nested more than 64 deep; not a V-D4RL or Minari file")
        for name in group:
            where = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise DatasetError(
                    f"{path}: '{where}' is an external link to {link.filename}:{link.path}; refusing to read "
                    "data from another file. Copy the data into this file (e.g. with h5copy) and re-run"
                )
            obj = group.get(name)
            if obj is None:
                raise DatasetError(f"{path}: '{where}' is a dangling link; the file is damaged")
            key = hash(obj)
            if key in seen:
                continue
            seen.add(key)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise DatasetError(f"{path}: '{where}' is a virtual dataset (its data live in other files); "
                                       "refusing to follow it. Copy the data into the file and re-run")
                if obj.external:
                    raise DatasetError(f"{path}: '{where}' stores its data in external file(s) "
                                       f"{[e[0] for e in obj.external]}; refusing to read them")
            elif isinstance(obj, h5py.Group):
                walk(obj, depth + 1)

    walk(f, 0)


class _Shard:
    """What the planning pass learned about one V-D4RL shard."""

    def __init__(self, path: Path, size: int, obs_shape: tuple, obs_dtype: np.dtype):
        self.path, self.size, self.obs_shape, self.obs_dtype = path, size, obs_shape, obs_dtype
        self.channels_first = obs_shape[0] == 3 and obs_shape[-1] != 3


def _plan_shard(f, path: Path) -> _Shard:
    """Check one open shard's layout and declared sizes before any image is read."""
    _check_self_contained(f, path)
    missing = [k for k in HDF5_KEYS if k not in f]
    if missing:
        raise DatasetError(f"{path}: missing dataset(s) {', '.join(missing)}; expected {', '.join(HDF5_KEYS)}")
    for key in HDF5_KEYS:
        if not hasattr(f[key], "shape") or len(f[key].shape) == 0:
            raise DatasetError(f"{path}: '{key}' is not an array with one entry per step")
    sizes = {k: f[k].shape[0] for k in HDF5_KEYS}
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"{path}: datasets have unequal lengths ({_describe_lengths(sizes)})")
    size = sizes["step_type"]
    if size > MAX_SHARD_STEPS:
        raise DatasetError(f"{path}: declares {size} steps, more than the {MAX_SHARD_STEPS} a shard may hold; "
                           "the file is damaged or not a V-D4RL shard")
    obs = f["observation"]
    shape = tuple(obs.shape[1:])
    if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
        raise DatasetError(f"{path}: observation has shape {obs.shape}; expected (N, 3, H, W) or (N, H, W, 3) images")
    side = max(shape[:2] if shape[-1] == 3 else shape[1:])
    if side > MAX_IMAGE_SIDE:
        raise DatasetError(f"{path}: observation images are {side} pixels wide, more than {MAX_IMAGE_SIDE}; "
                           "not a V-D4RL shard")
    if obs.dtype.kind not in "uif":
        raise DatasetError(f"{path}: observation has dtype {obs.dtype}; expected uint8 (or numbers in 0-255 / 0-1)")
    action = f["action"]
    if len(action.shape) > 2 or int(np.prod(action.shape[1:])) > 4096:
        raise DatasetError(f"{path}: action has shape {action.shape}; expected (N, A)")
    for key in ("reward", "discount", "step_type"):
        if int(np.prod(f[key].shape[1:])) != 1:
            raise DatasetError(f"{path}: {key} has shape {f[key].shape}; expected one number per step")
    return _Shard(path, size, shape, obs.dtype)


def _chunk_frames(shard: _Shard) -> int:
    """Frames per read so that one read (as float32) stays near CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * int(np.prod(shard.obs_shape))))


def _observation_range(f, shard: _Shard, ranges) -> tuple[float, float]:
    """(min, max) of the observation over the step ranges ``[a, b)``, read in bounded chunks;
    refuses NaN or inf."""
    lo, hi = np.inf, -np.inf
    step = _chunk_frames(shard)
    for a, b in ranges:
        for s in range(a, b, step):
            x = f["observation"][s:min(s + step, b)]
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise DatasetError(f"{shard.path}: observation holds NaN or inf (steps {s}..{min(s + step, b) - 1}); "
                                   "cannot make images of it")
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


def _pixel_scale(shards, ranges_of) -> tuple[dict, dict]:
    """How observations become uint8 pixels: {shard path: factor} (values are multiplied by the factor
    and rounded) and a description for the sidecar. Integer images must lie in 0..255 (never wrapped);
    float images in [0, 1] are scaled by 255, float images in [0, 255] rounded, anything else refused."""
    factor, kinds, seen = {}, set(), {}
    for shard, (lo, hi) in ranges_of.items():
        if not np.isfinite(lo):  # no step of this shard is imported
            factor[shard.path] = 1.0
            continue
        seen[str(shard.path.name)] = [lo, hi]
        if shard.obs_dtype.kind in "ui":
            if lo < 0 or hi > 255:
                raise DatasetError(
                    f"{shard.path}: observation ({shard.obs_dtype}) holds values {lo:g}..{hi:g}, outside 0..255; "
                    "refusing to wrap them into uint8 images. Rescale the images to 0..255 and re-run"
                )
            factor[shard.path] = 1.0
            continue
        if lo < 0 or hi > 255 + FLOAT_TOLERANCE:
            raise DatasetError(
                f"{shard.path}: float observation values lie in [{lo:g}, {hi:g}], neither in [0, 1] nor in [0, 255]; "
                "cannot tell how they map to pixels. Convert the images to uint8 0..255 and re-run"
            )
        if hi > 1 + FLOAT_TOLERANCE:
            kinds.add("0-255")
        elif hi > 0:
            kinds.add("0-1")
        factor[shard.path] = None  # decided below, once every float shard is seen
    if kinds == {"0-1", "0-255"}:
        raise DatasetError("the shards disagree on the range of their float observations (some in [0, 1], "
                           f"others in [0, 255]: {seen}); convert them to one range and re-run")
    scale = 255.0 if kinds == {"0-1"} else 1.0
    factor = {k: (scale if v is None else v) for k, v in factor.items()}
    dtypes = sorted({str(s.obs_dtype) for s in shards})
    how = "unchanged (uint8)" if dtypes == ["uint8"] else (
        "float in [0, 1]: x 255, rounded" if scale == 255.0 else "values in 0..255: rounded to uint8")
    return factor, {"source_dtypes": dtypes, "range": [min((r[0] for r in seen.values()), default=0),
                                                       max((r[1] for r in seen.values()), default=0)],
                    "conversion": how}


def _read_images(f, shard: _Shard, a: int, b: int, factor: float, resize: int | None, out: np.ndarray) -> None:
    """Steps a .. b-1 of the shard's observation as uint8 channels-last (resized) images, written into
    ``out`` chunk by chunk, so that no more than CHUNK_BYTES of source frames are in memory at once."""
    step = _chunk_frames(shard)
    for s in range(a, b, step):
        e = min(s + step, b)
        x = f["observation"][s:e]
        if shard.channels_first:
            x = x.transpose(0, 2, 3, 1)
        if x.dtype != np.uint8:  # in place on one float32 copy of the chunk
            x = np.array(x, np.float32)
            if factor != 1:
                np.multiply(x, np.float32(factor), out=x)
            np.rint(x, out=x)
            np.clip(x, 0, 255, out=x)
            x = x.astype(np.uint8)
        if resize and x.shape[1] != resize:
            x = area_resize(x, resize)
        out[s - a:e - a] = x


def _split_episodes(marks) -> list:
    """Episodes as lists of pieces ``(shard index, a, b)`` (steps a .. b-1; b None: to the shard's end)
    from each shard's ``(step, step_type)`` marks of firsts and lasts. An episode runs from a 0 (first)
    to the next 2 (last) and may span shards. Steps outside complete episodes (a last without its
    first, a first followed by another first, a start that never ends) belong to no episode."""
    episodes, start = [], None  # start: (shard index, step) of the open episode
    for k, shard_marks in enumerate(marks):
        for j, kind in shard_marks:
            j = int(j)
            if kind == FIRST:
                start = (k, j)
            elif start is not None:  # LAST closing the open episode
                (k0, j0), pieces = start, []
                for m in range(k0, k + 1):
                    a = j0 if m == k0 else 0
                    b = j + 1 if m == k else None  # None: to the end of shard m
                    pieces.append((m, a, b))
                episodes.append(pieces)
                start = None
    return episodes


def import_vd4rl_hdf5(sources, out, *, resize: int | None = None, env: str | None = None,
                      max_episode_steps: int = MAX_EPISODE_STEPS) -> dict:
    """Split V-D4RL HDF5 shards into native episodes in ``out``; returns the sidecar written.

    ``sources`` are shard files or directories of them (taken in numeric name order, as V-D4RL's
    splitting script numbers them). An episode runs from a ``step_type`` 0 to the next 2 and may
    continue into the next shard; steps outside complete episodes are dropped with a warning.

    Safety: every shard is checked before anything is written (layout, declared sizes, no external
    links, external storage or virtual datasets); episodes longer than ``max_episode_steps`` are
    refused; observations are converted to uint8 from their detected range (see :func:`_pixel_scale`).
    Images are read, converted and resized in chunks of about CHUNK_BYTES, so memory stays near one
    episode's uint8 images. ``out`` appears only once complete.
    """
    try:
        import h5py
    except ImportError:
        raise MissingDependency("h5py", "hdf5", what="importing V-D4RL HDF5 shards") from None
    if resize is not None and resize < 8:
        raise UserError(f"--resize must be at least 8 pixels (got {resize})")
    if max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be at least 1 (got {max_episode_steps})")
    check_new_output(out)
    files = _hdf5_files(sources)

    def open_shard(path):
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None

    # 1. plan: layout of every shard and where the episodes lie (step_type only, read in chunks)
    shards, bounds = [], []
    for path in files:
        with open_shard(path) as f:
            shard = _plan_shard(f, path)
            steps, kinds = [], []
            for s in range(0, shard.size, STEP_TYPE_CHUNK):
                chunk = np.asarray(f["step_type"][s:s + STEP_TYPE_CHUNK]).reshape(-1)
                if not np.isin(chunk, (FIRST, MID, LAST)).all():
                    raise DatasetError(f"{path}: step_type holds values other than 0 (first), 1 (mid), 2 (last)")
                where = np.flatnonzero(chunk != MID)
                steps.append(where + s)
                kinds.append(chunk[where].astype(np.int8))
        shards.append(shard)
        bounds.append(zip(np.concatenate(steps or [np.zeros(0, np.int64)]), np.concatenate(kinds or [np.zeros(0, np.int8)])))
    episodes = _split_episodes(bounds)
    episodes = [[(k, a, shards[k].size if b is None else b) for k, a, b in pieces] for pieces in episodes]
    total = sum(s.size for s in shards)
    kept = 0
    for pieces in episodes:
        n = sum(b - a for _, a, b in pieces)
        kept += n
        if n - 1 > max_episode_steps:
            k, a, _ = pieces[0]
            shape = shards[k].obs_shape
            pixels = resize * resize if resize else int(np.prod(shape)) // 3
            raise DatasetError(
                f"{files[k]}: the episode starting at step {a} has {n - 1} steps, more than the maximum of "
                f"{max_episode_steps}; if it is genuine, re-run with --max-episode-steps {n - 1} "
                f"(it needs about {n * pixels * 3 / 1e6:.0f} MB of memory)"
            )
    dropped = total - kept

    # 2. scan: the observation range of the imported steps, to convert them to pixels correctly
    ranges = {k: [] for k in range(len(shards))}
    for pieces in episodes:
        for k, a, b in pieces:
            ranges[k].append((a, b))
    ranges_of = {}
    for k, shard in enumerate(shards):
        if shard.obs_dtype == np.uint8:
            ranges_of[shard] = (0.0, 255.0)
            continue
        with open_shard(shard.path) as f:
            ranges_of[shard] = _observation_range(f, shard, ranges[k])
    factor, conversion = _pixel_scale(shards, ranges_of)

    # 3. write: one episode at a time, each shard opened when its steps are needed
    with staged_output(out) as staged:
        writer = _Writer(staged)
        handles: dict[int, object] = {}
        try:
            for pieces in episodes:
                for k in [k for k in handles if k < pieces[0][0]]:
                    handles.pop(k).close()
                n = sum(b - a for _, a, b in pieces)
                first = shards[pieces[0][0]]
                rows, cols = (first.obs_shape[1:] if first.channels_first else first.obs_shape[:2])
                size = (resize, resize) if resize else (rows, cols)
                image = np.empty((n, *size, 3), np.uint8)
                parts = {"action": [], "reward": [], "discount": []}
                at = 0
                for k, a, b in pieces:
                    if k not in handles:
                        handles[k] = open_shard(shards[k].path)
                    f = handles[k]
                    shard = shards[k]
                    shard_size = (resize, resize) if resize else (
                        shard.obs_shape[1:] if shard.channels_first else shard.obs_shape[:2])
                    if tuple(shard_size) != tuple(size):
                        raise DatasetError(f"{shard.path}: image size {shard_size} differs from the episode's {size} "
                                           "in the previous shard; pass --resize to give every image one size")
                    _read_images(f, shard, a, b, factor[shard.path], resize, image[at:at + b - a])
                    for key in parts:
                        parts[key].append(np.asarray(f[key][a:b]))
                    at += b - a
                writer.add(_vd4rl_episode(image, *(np.concatenate(parts[k]) for k in parts)))
                del image
        finally:
            for handle in handles.values():
                handle.close()
        if dropped:
            warnings.warn(f"{dropped} step(s) outside complete episodes (no step_type 0 ... 2) were dropped",
                          stacklevel=2)
        collection = {
            "method": "import",
            "format": "vd4rl-hdf5",
            "sources": [str(p.resolve()) for p in files],
            "resize": {"size": resize, "method": "area average (exact box filter, NumPy), rounded"} if resize else None,
            "observation": conversion,
            "dropped_steps": int(dropped),
        }
        return writer.finish(collection, env)


def _vd4rl_episode(image, action, reward, discount) -> dict:
    """Native episode from one episode's converted images and its raw action, reward and discount."""
    n = len(image)
    discount = np.asarray(discount, np.float32).reshape(n)
    is_first, is_last = np.zeros(n, bool), np.zeros(n, bool)
    is_first[0], is_last[-1] = True, True
    is_terminal = discount == 0
    is_terminal[0] = False
    return {
        "image": image,
        "action": np.asarray(action, np.float32).reshape(n, -1),
        "reward": np.asarray(reward, np.float32).reshape(n),
        "discount": discount,
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_terminal,
    }


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
    ``1 - is_terminal`` / first entry only. Images are stored raw (lossless). Returns ``out`` (made
    absolute). ``out`` appears only once complete. Load it with ``minari.MinariDataset(out / "data")``,
    or copy ``out`` to ``$MINARI_DATASETS_PATH/<dataset_id>`` and use ``minari.load_dataset(dataset_id)``.
    """
    _minari()

    src = Path(src)
    out = check_new_output(Path(out).resolve())  # Minari joins a relative path onto itself
    files = list_episode_files(src)
    if not files:
        raise UserError(f"{src}: no episode files (*.npz) to export")
    with staged_output(out) as staged:
        _export_minari(src, files, staged, dataset_id)
    return out


def _export_minari(src: Path, files, out: Path, dataset_id) -> None:
    minari, MinariStorage = _minari()
    import gymnasium
    from minari.data_collector import EpisodeBuffer

    dataset_id = dataset_id or _dataset_id(src.resolve().name)
    first = load_episode(files[0])
    obs_spaces = {"image": gymnasium.spaces.Box(0, 255, first["image"].shape[1:], np.uint8)}
    if "state" in first:
        obs_spaces["state"] = gymnasium.spaces.Box(-np.inf, np.inf, first["state"].shape[1:], first["state"].dtype)
    observation_space = gymnasium.spaces.Dict(obs_spaces)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, first["action"].shape[1:], np.float32)

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


def _check_minari_metadata(data_path: Path) -> None:
    """Check a Minari dataset's metadata.json against its main_data.hdf5 before minari reads it, so that
    each defect is one clear line: bad JSON, a storage format other than HDF5, missing or unknown
    spaces (never built from ``env_spec``, which would make an environment named by the file), totals
    that differ from the episodes stored, and links to other files."""
    import h5py
    from minari.serialization import deserialize_space

    meta_path = data_path / "metadata.json"
    meta = read_json_object(meta_path, "the Minari dataset is damaged")
    fmt = meta.get("data_format", "hdf5")
    if fmt != "hdf5":
        raise DatasetError(f"{meta_path}: data_format is {fmt!r}; only Minari's 'hdf5' format can be imported "
                           "(re-create the dataset with data_format='hdf5')")
    for key in ("observation_space", "action_space"):
        if not isinstance(meta.get(key), str):
            raise DatasetError(f"{meta_path}: no {key} recorded; it is needed (the dataset's env is never built)")
        try:
            unknown = _unknown_space_types(json.loads(meta[key]), set(deserialize_space.registry))
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{meta_path}: {key} is not a serialized space ({exc})") from None
        if unknown:
            raise DatasetError(f"{meta_path}: {key} uses unknown space type(s) {', '.join(sorted(unknown))}; "
                               f"Minari knows {', '.join(sorted(deserialize_space.registry))}")
        try:
            deserialize_space(meta[key])
        except Exception as exc:  # minari raises KeyError, ValueError, AssertionError... on bad fields
            raise DatasetError(f"{meta_path}: {key} cannot be read ({type(exc).__name__}: {exc}); "
                               "malformed space") from None
    totals = {k: meta.get(k) for k in ("total_episodes", "total_steps")}
    for key, value in totals.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DatasetError(f"{meta_path}: {key} is {value!r}; expected a non-negative integer")
    main = data_path / "main_data.hdf5"
    try:
        f = h5py.File(main, "r")
    except (OSError, FileNotFoundError) as exc:
        raise DatasetError(f"{main}: not a readable HDF5 file ({exc})") from None
    with f:
        _check_self_contained(f, main)
        names = {f"episode_{i}" for i in range(totals["total_episodes"])}
        stored = {n for n in f if n.startswith("episode_")}
        if stored != names:
            raise DatasetError(f"{meta_path}: total_episodes says {totals['total_episodes']} but {main.name} holds "
                               f"{len(stored)} episode group(s); the metadata is wrong or the data incomplete")
        steps = 0
        for name in sorted(names):
            actions = f[name].get("actions") if isinstance(f[name], h5py.Group) else None
            if not isinstance(actions, h5py.Dataset) or len(actions.shape) == 0:
                raise DatasetError(f"{main}: {name} has no actions array; the dataset is damaged")
            steps += actions.shape[0]
        if steps != totals["total_steps"]:
            raise DatasetError(f"{meta_path}: total_steps says {totals['total_steps']} but the episodes hold "
                               f"{steps} steps; the metadata is wrong or the data incomplete")


def _unknown_space_types(space: dict, known: set) -> set:
    """Space type names in a serialized (JSON-decoded) space that Minari cannot build."""
    unknown = set() if space.get("type") in known else {repr(space.get("type"))}
    subspaces = space.get("subspaces") or {}
    for sub in subspaces.values() if isinstance(subspaces, dict) else subspaces:
        unknown |= _unknown_space_types(sub if isinstance(sub, dict) else json.loads(sub), known)
    return unknown


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

    check_new_output(out)
    data_path = _minari_data_path(src)
    _check_minari_metadata(data_path)
    try:
        dataset = minari.MinariDataset(data_path)
    except Exception as exc:  # minari's own errors are asserts, KeyErrors, ValueErrors...
        raise DatasetError(f"{data_path}: Minari cannot open this dataset ({type(exc).__name__}: {exc})") from None
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

    with staged_output(out) as staged:
        return _import_minari_episodes(dataset, data_path, staged, image_key, rescale, low, high, env)


def _import_minari_episodes(dataset, data_path, out, image_key, rescale, low, high, env) -> dict:
    writer = _Writer(out)
    episodes = iter(dataset.iterate_episodes())
    while True:
        try:
            data = next(episodes, None)
        except Exception as exc:  # a damaged episode group: one line, not minari's traceback
            raise DatasetError(f"{data_path}: cannot read episode {len(writer.paths)} "
                               f"({type(exc).__name__}: {exc}); the dataset is damaged") from None
        if data is None:
            break
        try:
            ep = _minari_episode(data, image_key, rescale, low, high)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise DatasetError(f"{data_path}: episode {len(writer.paths)} has inconsistent arrays "
                               f"({type(exc).__name__}: {exc}); the dataset is damaged") from None
        writer.add(ep)
    collection = {
        "method": "import",
        "format": "minari",
        "sources": [str(data_path.resolve())],
        "dataset_id": dataset.storage.metadata.get("dataset_id"),
        "action_rescaled_from": [low.tolist(), high.tolist()] if rescale else None,
    }
    return writer.finish(collection, env)


def _minari_episode(data, image_key, rescale, low, high) -> dict:
    """One Minari EpisodeData as a native episode (entry 0 = the reset frame)."""
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
    return normalize_episode(ep)
