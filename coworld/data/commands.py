"""`coworld data make | validate | info | import | export`: make, check, describe and convert episode
datasets (`data collect`, which trains an agent, is registered by :mod:`coworld.run.commands`)."""

from __future__ import annotations

import json

import numpy as np

from coworld.data.episodes import DatasetError, list_episode_files, read_npz, read_sidecar
from coworld.data.interop import EXPORT_FORMATS, IMPORT_FORMATS, MAX_EPISODE_STEPS, REPAIRS
from coworld.data.make import LEVELS, make_dataset
from coworld.data.validate import validate_directory


def register(subparsers, groups=None) -> dict:
    parser = subparsers.add_parser("data", help="make, validate and describe episode datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    make = sub.add_parser("make", help="collect a dataset of a chosen quality with a scripted policy")
    make.add_argument("--env", required=True, help="environment id with a scripted expert, e.g. builtin:reach")
    make.add_argument("--level", required=True, choices=LEVELS, help="dataset quality (docs/datasets.md)")
    make.add_argument("--episodes", type=int, required=True, help="number of episodes to collect")
    make.add_argument("--out", required=True, help="output directory (new or empty; appears when complete)")
    make.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same dataset")
    make.add_argument("--time-limit", type=int, default=0, help="agent steps per episode (0 = env default)")
    make.add_argument("--action-repeat", type=int, default=0, help="action repeat (0 = env default)")
    make.set_defaults(func=run_make)

    validate = sub.add_parser("validate", help="check every episode of a directory; exit 1 on problems")
    validate.add_argument("dir", help="dataset directory")
    validate.set_defaults(func=run_validate)

    info = sub.add_parser("info", help="describe a dataset: counts, returns, shapes, how it was made")
    info.add_argument("dir", help="dataset directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)

    imp = sub.add_parser("import", help="convert a community dataset (npz, V-D4RL HDF5, Minari) to episodes")
    imp.add_argument("sources", nargs="+", metavar="SRC", help="source directories or files")
    imp.add_argument("--format", required=True, choices=IMPORT_FORMATS, help="source format (docs/collection.md)")
    imp.add_argument("--out", required=True, help="output directory (new or empty; appears when complete)")
    imp.add_argument("--resize", type=int, default=0, help="vd4rl-hdf5: area-resize images to this size, e.g. 64")
    imp.add_argument("--max-episode-steps", type=int, default=MAX_EPISODE_STEPS,
                     help=f"vd4rl-hdf5: refuse longer episodes (default {MAX_EPISODE_STEPS}; memory grows with it)")
    imp.add_argument("--repair", choices=REPAIRS, help="npz: 'truncate' cuts keys of unequal length to the shortest")
    imp.add_argument("--env", help="environment id to record in dataset.json, e.g. dmc:walker_walk")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser("export", help="write an episode directory in a community format (Minari)")
    exp.add_argument("dir", help="dataset directory")
    exp.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="target format")
    exp.add_argument("--out", required=True, help="output directory (new or empty)")
    exp.add_argument("--dataset-id", help="Minari dataset id (default coworld/<dir name>-v0)")
    exp.set_defaults(func=run_export)
    return {"data": sub}  # the run layer adds `data collect` (a training loop) to this group


def run_make(args) -> int:
    options = {}
    if args.time_limit:
        options["time_limit"] = args.time_limit
    if args.action_repeat:
        options["action_repeat"] = args.action_repeat
    side = make_dataset(args.env, args.level, args.episodes, args.out, seed=args.seed, progress=True, **options)
    score = side["collection"]["normalised_score"]
    print(
        f"wrote {side['counts']['episodes']} episodes ({side['counts']['steps']} steps) to {args.out}; "
        f"normalised score mean {score['mean']:.3f} (min {score['min']:.3f}, max {score['max']:.3f})"
    )
    return 0


def run_validate(args) -> int:
    problems = validate_directory(args.dir)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.dir}")
        return 1
    print(f"{args.dir}: {len(list_episode_files(args.dir))} episodes, no problems found")
    return 0


def summarise(directory) -> dict:
    """Counts, return statistics, array shapes/dtypes and the sidecar's description of a dataset.
    Reads only the rewards of each file (and one whole episode for the shapes)."""
    files = list_episode_files(directory)
    if not files:
        raise DatasetError(f"{directory}: no episode files (*.npz); is this the right directory?")
    returns, lengths, unreadable = [], [], []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as npz:
                reward = np.asarray(npz["reward"], np.float64).reshape(-1)
        except Exception:  # any unreadable file: counted and left to `data validate` to explain
            unreadable.append(path.name)
            continue
        returns.append(reward[1:].sum())
        lengths.append(len(reward) - 1)
    keys = {}
    for path in files:
        if path.name not in unreadable:
            try:
                keys = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in read_npz(path).items()}
                break
            except DatasetError:
                unreadable.append(path.name)
    side = read_sidecar(directory) or {}
    returns = np.asarray(returns) if returns else np.zeros(1)
    return {
        "directory": str(directory),
        "episodes": len(lengths),
        "steps": int(sum(lengths)),
        "length": {"min": min(lengths, default=0), "max": max(lengths, default=0)},
        "return": {k: float(f(returns)) for k, f in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))},
        "action_dim": keys.get("action", {}).get("shape", [0, 0])[-1],
        "keys": keys,
        "unreadable": unreadable,
        "env": side.get("env"),
        "collection": side.get("collection"),
    }


def run_info(args) -> int:
    info = summarise(args.dir)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    ret = info["return"]
    print(f"dataset    {info['directory']}")
    print(f"env        {info['env'] or '(no dataset.json)'}")
    print(f"episodes   {info['episodes']}  steps {info['steps']}  length {info['length']['min']}-{info['length']['max']}")
    print(f"return     mean {ret['mean']:.3f}  std {ret['std']:.3f}  min {ret['min']:.3f}  max {ret['max']:.3f}")
    print(f"action dim {info['action_dim']}")
    for key, meta in info["keys"].items():
        print(f"  {key:12s} {str(tuple(meta['shape'])):22s} {meta['dtype']}")
    if info["collection"]:
        made = dict(info["collection"])
        if isinstance(made.get("competence"), dict):  # the per-episode list is long; keep the summary
            made["competence"] = {k: v for k, v in made["competence"].items() if k != "per_episode"}
        print("made by    " + json.dumps(made))
    if info["unreadable"]:
        print(f"{len(info['unreadable'])} unreadable file(s), e.g. {info['unreadable'][0]}; run `coworld data validate`")
    return 0


def run_import(args) -> int:
    from coworld.data import interop

    if args.resize and args.format != "vd4rl-hdf5":
        raise DatasetError("--resize applies to --format vd4rl-hdf5 only")
    if args.max_episode_steps != MAX_EPISODE_STEPS and args.format != "vd4rl-hdf5":
        raise DatasetError("--max-episode-steps applies to --format vd4rl-hdf5 only")
    if args.repair and args.format != "npz":
        raise DatasetError("--repair applies to --format npz only")
    if args.format == "npz":
        side = interop.import_npz(args.sources, args.out, repair=args.repair, env=args.env)
    elif args.format == "vd4rl-hdf5":
        side = interop.import_vd4rl_hdf5(args.sources, args.out, resize=args.resize or None, env=args.env,
                                         max_episode_steps=args.max_episode_steps)
    else:
        if len(args.sources) != 1:
            raise DatasetError("--format minari takes one source (a dataset directory or a local dataset id)")
        side = interop.import_minari(args.sources[0], args.out, env=args.env)
    print(f"wrote {side['counts']['episodes']} episodes ({side['counts']['steps']} steps) to {args.out}")
    return 0


def run_export(args) -> int:
    from coworld.data import interop

    out = interop.export_minari(args.dir, args.out, dataset_id=args.dataset_id)
    print(f"wrote a Minari dataset to {out / 'data'}; read it with minari.MinariDataset('{out / 'data'}')")
    return 0
