"""Several MuJoCo envs in one process (CoWorld's source and target, the evaluation's lockstep envs)
each render their own frames: an env's frames do not depend on which other envs drew in between."""

import numpy as np
import pytest

import coworld.envs as envs


def frames(ids: list[str], steps: int = 3) -> list[np.ndarray]:
    """Each env of ``ids`` (all alive at once) reset with seed i and stepped with seeded random actions,
    the envs taking turns frame by frame; returns each env's (steps + 1) frames."""
    made = [envs.make(i) for i in ids]
    rngs = [np.random.default_rng(i) for i in range(len(ids))]
    out = [[env.reset(seed=i)[0]["image"].copy()] for i, env in enumerate(made)]
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
        alone = frames([env_id] if i == 0 else ["builtin:reach"] * i + [env_id])[i]  # same seed i, drawn alone
        assert alone.std() > 0, env_id  # a real picture, not a blank one
        assert (alone == together[i]).all(), env_id
