"""Sampling throughput of the offline replay (memory-mapped packed cache), in batches per second.

    python scripts/bench_replay.py [--episodes 100] [--batch 16] [--length 50] [--seconds 5] [--dir DIR]

Without --dir, a random-level dataset of the built-in reach task is made in a temporary directory.
The first Replay() builds the cache (timed separately); sampling is then timed on the warm page cache.
"""

import argparse
import tempfile
import time

import torch

from coworld.data.make import make_dataset
from coworld.data.replay import Replay


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="existing dataset directory (default: make one)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mode", default="uniform", choices=["uniform", "length"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    directory = args.dir
    if directory is None:
        directory = tempfile.mkdtemp(prefix="bench-replay-") + "/data"
        make_dataset("builtin:reach", "random", args.episodes, directory, seed=0)

    cache_dir = tempfile.mkdtemp(prefix="bench-cache-")
    start = time.perf_counter()
    replay = Replay(directory, cache_dir=cache_dir)
    build = time.perf_counter() - start
    print(f"dataset: {replay.num_episodes} episodes, {replay.num_steps} steps; cache built in {build:.2f} s")
    start = time.perf_counter()
    Replay(directory, cache_dir=cache_dir)
    print(f"cache reopened in {time.perf_counter() - start:.3f} s")

    replay.sample(args.batch, args.length, mode=args.mode)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        replay.sample(args.batch, args.length, mode=args.mode)
        count += 1
    elapsed = time.perf_counter() - start
    frames = count * args.batch * args.length
    print(
        f"sample({args.batch}, {args.length}, mode={args.mode}): {count / elapsed:.1f} batches/s, "
        f"{1e3 * elapsed / count:.2f} ms/batch, {frames / elapsed:,.0f} frames/s"
    )


if __name__ == "__main__":
    main()
