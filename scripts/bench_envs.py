"""Measure raw environment speed of the built-in suite, rendering on, on one core.

Prints control steps per second (one raw step = one control step, 64x64 image rendered every
step) for each registered built-in task, stepping with uniform random actions.

Usage: python scripts/bench_envs.py [--steps 20000] [--suite builtin]
"""

import argparse
import os
import time

import numpy as np

import coworld.envs as envs


def bench(env_id: str, steps: int) -> float:
    raw = envs.make(env_id).unwrapped  # the raw env: no wrapper, one step = one control step
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, raw.action_space.shape[0])).astype(np.float32)
    raw.reset(seed=0)
    start = time.perf_counter()
    for i in range(steps):
        raw.step(actions[i])
        if i % 200 == 199:
            raw.reset()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--suite", default="builtin")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    for s in envs.list_specs(args.suite):
        print(f"{s.id:22s} {bench(s.id, args.steps):9.0f} steps/s")


if __name__ == "__main__":
    main()
