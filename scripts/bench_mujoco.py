"""Steps per second of the MuJoCo benchmarks with default and fast rendering.

Times raw control steps (action_repeat=1) at 64x64 with random actions, after one reset and a
few warm-up steps. "no render" is obs="state" (physics and control only). Then, for tasks whose
default action repeat is above 1 (DMC), agent steps through ``make`` at that repeat, drawing every
raw step (``skip_render=False``) against drawing only the kept last frame of each repeat (the
default). Suites whose packages are missing are skipped.

    python scripts/bench_mujoco.py [--steps 50] [--only dmc metaworld robodesk]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from coworld.envs import make, spec
from coworld.envs.rendering import setup_gl

TASKS = {
    "dmc": ["dmc:walker_walk", "dmc:cheetah_run", "dmc:walker_downhill"],
    "metaworld": ["metaworld:door-close"],
    "robodesk": ["robodesk:push_green"],
}
PACKAGES = {"dmc": "dm_control", "metaworld": "metaworld", "robodesk": "dm_control"}
SLOW = {"robodesk": 0.2}  # fraction of --steps for slow suites
SETTINGS = {"default": {}, "fast_render": {"fast_render": True}, "no render": {"obs": "state"}}


def steps_per_second(env_id: str, steps: int, options: dict, action_repeat=1, skip_render=True) -> float:
    """Wrapper steps per second (raw steps when action_repeat=1; None: the default repeat)."""
    env = make(env_id, seed=0, action_repeat=action_repeat, **options)
    env.skip_render = skip_render
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps + 3, *env.action_space.shape))
    for a in actions[:3]:  # warm-up: first frames allocate the render context
        env.step(a)
    start = time.perf_counter()
    for a in actions[3:]:
        env.step(a)
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed raw steps per setting")
    parser.add_argument("--only", nargs="*", choices=list(TASKS), default=list(TASKS))
    args = parser.parse_args()
    print(f"MUJOCO_GL={setup_gl()}, 64x64, raw steps/s (one raw step = one control step)")
    print(f"{'task':<24}" + "".join(f"{name:>14}" for name in SETTINGS))
    for suite in args.only:
        if importlib.util.find_spec(PACKAGES[suite]) is None:
            print(f"{suite:<24}skipped: pip install 'coworld[{suite}]'")
            continue
        steps = max(3, int(args.steps * SLOW.get(suite, 1.0)))
        for env_id in TASKS[suite]:
            speeds = [steps_per_second(env_id, steps, options) for options in SETTINGS.values()]
            print(f"{env_id:<24}" + "".join(f"{s:>14.1f}" for s in speeds), flush=True)
    repeated = [t for suite in args.only for t in TASKS[suite]
                if importlib.util.find_spec(PACKAGES[suite]) and spec(t).action_repeat > 1]
    if repeated:
        print("agent steps/s at the default action repeat (default rendering)")
        print(f"{'task':<24}{'draw every':>14}{'draw kept':>14}")
    for env_id in repeated:
        speeds = [steps_per_second(env_id, args.steps, {}, None, skip) for skip in (False, True)]
        print(f"{env_id:<24}" + "".join(f"{s:>14.1f}" for s in speeds), flush=True)


if __name__ == "__main__":
    main()
