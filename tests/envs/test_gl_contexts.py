"""Several MuJoCo envs in one process (CoWorld's source and target, the evaluation's lockstep envs)
each render their own frames: an env's frames do not depend on which other envs drew in between; and
a process that leaves its envs open exits without EGL errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import coworld.envs as envs


def frames(ids: list[str], first_seed: int = 0, steps: int = 3) -> list[np.ndarray]:
    """Env k of ``ids`` (all alive at once) reset with seed first_seed + k and stepped with actions from a
    generator of that seed, the envs taking turns frame by frame; returns each env's (steps + 1) frames."""
    made = [envs.make(i) for i in ids]
    seeds = range(first_seed, first_seed + len(ids))
    rngs = [np.random.default_rng(s) for s in seeds]
    out = [[env.reset(seed=s)[0]["image"].copy()] for s, env in zip(seeds, made)]
    for _ in range(steps):
        for env, rng, images in zip(made, rngs, out):
            images.append(env.step(rng.uniform(-1, 1, env.action_space.shape))[0]["image"].copy())
    for env in made:
        env.close()
    return [np.stack(images) for images in out]


@pytest.mark.parametrize("ids", [
    ["metaworld:button-press", "metaworld:drawer-close"],  # two gymnasium renderers
    ["dmc:walker_walk", "metaworld:button-press"],  # dm_control beside gymnasium: DMC's frames came out black
    ["robodesk:push_green", "metaworld:button-press"],  # the paper's Fig. 4 pair
])
def test_frames_do_not_depend_on_other_envs_drawing(dmc, mw, rd, ids):
    together = frames(ids)
    for i, env_id in enumerate(ids):
        (alone,) = frames([env_id], first_seed=i)  # the same seed, drawn alone
        assert alone.std() > 0, env_id  # a real picture, not a blank one
        assert (alone == together[i]).all(), env_id


LEAVE_OPEN = """
import sys
import coworld.envs as envs
made = [envs.make(i) for i in sys.argv[1:]]
for env in made:
    env.reset(seed=0)
made[0].close()
made[0].close()  # a second close does nothing; the others stay open
print("drawn")
"""


@pytest.mark.parametrize("ids", [
    ["metaworld:button-press", "metaworld:drawer-close"],  # gymnasium's context freed after the display's end
    ["dmc:walker_walk", "robodesk:push_green", "metaworld:button-press"],  # dm_control's contexts too
])
def test_envs_left_open_exit_without_egl_errors(dmc, mw, rd, ids):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    for order in (ids, ids[::-1]):
        proc = subprocess.run([sys.executable, "-c", LEAVE_OPEN, *order], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0 and "drawn" in proc.stdout, proc.stderr
        assert "Error" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
