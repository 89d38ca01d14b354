"""Measure raw environment speed of the built-in suite, rendering on, on one core.

Prints control steps per second (one raw step = one control step, 64x64 image rendered every
step) for each registered built-in task, stepping with uniform random actions; then agent steps
per second through ``make`` (wrapper, default action repeat), drawing every raw step
(``skip_render=False``) and drawing only the kept last frame of each repeat (the default).

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


def bench_agent(env_id: str, steps: int, skip_render: bool) -> float:
    env = envs.make(env_id, seed=0)
    env.skip_render = skip_render
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)
    env.reset()
    start = time.perf_counter()
    for i in range(steps):
        *_, truncated, _ = env.step(actions[i])
        if truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--suite", default="builtin")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    for s in envs.list_specs(args.suite):
        agent = [bench_agent(s.id, args.steps // s.action_repeat, skip) for skip in (False, True)]
        print(f"{s.id:22s} {bench(s.id, args.steps):9.0f} raw steps/s; agent steps/s (repeat {s.action_repeat}): "
              f"{agent[0]:7.0f} drawing every raw step, {agent[1]:7.0f} drawing only the kept frame")


if __name__ == "__main__":
    main()
