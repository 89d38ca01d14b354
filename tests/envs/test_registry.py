"""Registry, common wrapper, scripted-policy knob and the `coworld envs` command."""

import json

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

import coworld.envs as envs
from coworld.cli import main
from coworld.envs import registry
from coworld.envs.wrappers import CommonWrapper
from coworld.errors import MissingDependency, UserError


class ToyEnv(gymnasium.Env):
    """Raw env that records what it is given: reward 1 per raw step, success only at raw step
    ``success_at``, termination at raw step ``terminate_at``; state is float64 on purpose."""

    def __init__(self, success_at=-1, terminate_at=10**9, size=8):
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.observation_space = spaces.Dict(
            image=spaces.Box(0, 255, (size, size, 3), np.uint8),
            state=spaces.Box(-np.inf, np.inf, (1,), np.float64),
        )
        self.success_at, self.terminate_at, self.size = success_at, terminate_at, size
        self.actions, self.seeds, self.t = [], [], 0

    def _obs(self):
        return {"image": np.zeros((self.size, self.size, 3), np.uint8), "state": np.array([self.t], np.float64)}

    def reset(self, *, seed=None, options=None):
        self.seeds.append(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        info = {"success": self.t == self.success_at}
        return self._obs(), 1.0, self.t >= self.terminate_at, False, info


class DrawingToyEnv(ToyEnv):
    """ToyEnv that takes ``step(action, render=...)``: its frame is filled with the raw step count."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.render_flags, self.render_calls = [], 0

    def _obs(self):
        return {**super()._obs(), "image": np.full((self.size, self.size, 3), self.t, np.uint8)}

    def step(self, action, render=True):
        self.render_flags.append(render)
        obs, *rest = super().step(action)
        return ({**obs, "image": obs["image"] if render else None}, *rest)

    def render(self):
        self.render_calls += 1
        return self._obs()["image"]


def wrap(raw, **kw):
    kw = {"action_repeat": 1, "time_limit": 1000, "has_success": True, "image_size": 8, **kw}
    return CommonWrapper(raw, **kw)


def test_wrapper_clips_actions_and_fixes_spaces():
    env = wrap(ToyEnv())
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, info = env.reset()
    assert info["success"] is False and obs["state"].dtype == np.float32
    env.step(np.array([3.0, -0.25], np.float64))
    seen = env.unwrapped.actions[-1]
    assert seen.dtype == np.float32 and seen.tolist() == [1.0, -0.25]
    with pytest.raises(ValueError):
        env.step(np.zeros(3))
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 0.0]))


def test_wrapper_action_repeat_sums_rewards_and_stops_on_termination():
    env = wrap(ToyEnv(terminate_at=5), action_repeat=3)
    env.reset()
    _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert (reward, terminated, truncated, env.unwrapped.t) == (3.0, False, False, 3)
    _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert (reward, terminated, truncated, env.unwrapped.t) == (2.0, True, False, 5)


def test_wrapper_draws_only_the_last_raw_step_of_a_repeat():
    env = wrap(DrawingToyEnv(terminate_at=5), action_repeat=3)
    assert env.skip_render and not wrap(ToyEnv()).skip_render  # ToyEnv has no render keyword
    env.reset()
    obs = env.step(np.zeros(2))[0]
    assert env.unwrapped.render_flags == [False, False, True] and (obs["image"] == 3).all()
    obs, _, terminated, *_ = env.step(np.zeros(2))  # ends early at raw step 5, which did not draw
    assert terminated and env.unwrapped.render_flags[3:] == [False, False]
    assert env.unwrapped.render_calls == 1 and (obs["image"] == 5).all()


def test_wrapper_time_limit_counts_agent_steps():
    env = wrap(ToyEnv(), action_repeat=2, time_limit=3)
    env.reset()
    flags = [env.step(np.zeros(2))[3] for _ in range(3)]
    assert flags == [False, False, True] and env.unwrapped.t == 6
    env.reset()
    assert env.step(np.zeros(2))[3] is False  # the count restarts


def test_wrapper_success_is_or_over_repeated_steps():
    env = wrap(ToyEnv(success_at=2), action_repeat=3)  # success only at the middle raw step
    env.reset()
    assert env.step(np.zeros(2))[4]["success"] is True
    assert env.step(np.zeros(2))[4]["success"] is False
    no_success = wrap(ToyEnv(), has_success=False)
    assert "success" not in no_success.reset()[1]


def test_wrapper_seed_applies_to_first_unseeded_reset_only():
    env = wrap(ToyEnv(), seed=7)
    env.reset()
    env.reset()
    env.reset(seed=3)
    assert env.unwrapped.seeds == [7, None, 3]


def test_wrapper_rejects_wrong_image_shape():
    with pytest.raises(TypeError):
        wrap(ToyEnv(size=8), image_size=16)


def test_unknown_id_names_close_matches():
    with pytest.raises(UserError, match=r"builtin:reach.*coworld envs"):
        envs.spec("builtin:rech")
    with pytest.raises(UserError):
        envs.make("nope:nothing")


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="colour"):
        envs.make("builtin:reach", colour=(1, 2, 3))


def test_make_uses_spec_defaults_and_overrides():
    s = envs.spec("builtin:reach")
    env = envs.make("builtin:reach")
    assert (env.action_repeat, env.time_limit) == (s.action_repeat, s.time_limit)
    env = envs.make("builtin:reach", action_repeat=1, time_limit=4, image_size=32)
    assert env.observation_space["image"].shape == (32, 32, 3)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3)
    truncated = [env.step(np.zeros(2, np.float32))[3] for _ in range(4)]
    assert truncated == [False, False, False, True]


def test_list_specs_filters_by_suite_and_sorts():
    ids = [s.id for s in envs.list_specs("builtin")]
    assert ids == sorted(ids)
    assert {"builtin:reach", "builtin:reach-src", "builtin:push", "builtin:wall-src"} <= set(ids)
    assert all(s.suite == "builtin" for s in envs.list_specs("builtin"))


@pytest.fixture
def scratch_ids():
    added = []
    yield added
    for id in added:
        registry._REGISTRY.pop(id, None)


def test_register_checks_specs(scratch_ids):
    good = envs.EnvSpec("test:a", "test", "a test env", 2, "coworld.envs.builtin:ReachEnv")
    scratch_ids.append(good.id)
    envs.register(good)
    envs.register(good)  # the same spec again is fine
    with pytest.raises(ValueError):
        envs.register(envs.EnvSpec("test:a", "test", "other", 3, "coworld.envs.builtin:ReachEnv"))
    with pytest.raises(ValueError):
        envs.register(envs.EnvSpec("wrong:b", "test", "bad id", 2, "coworld.envs.builtin:ReachEnv"))


def test_missing_simulator_becomes_missing_dependency(scratch_ids):
    s = envs.EnvSpec("test:sim", "test", "needs a simulator", 2, "no_such_simulator_pkg.envs:make", extra="dmc")
    scratch_ids.append(s.id)
    envs.register(s)
    with pytest.raises(MissingDependency, match=r"no_such_simulator_pkg.*coworld\[dmc\]"):
        envs.make("test:sim")


def test_scripted_policy_contract():
    env = envs.make("builtin:reach-src")
    with pytest.raises(UserError):
        envs.scripted_policy(env, 1.5)
    obs, _ = env.reset(seed=0)
    for competence in (0.0, 0.5, 1.0):
        action = envs.scripted_policy(env, competence, seed=1)(obs)
        assert action.dtype == np.float32 and action.shape == (3,) and np.abs(action).max() <= 1.0
    with pytest.raises(UserError, match="scripted"):
        envs.scripted_policy(wrap(ToyEnv()), 1.0)


def test_envs_command_json(capsys):
    assert main(["envs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_id = {r["id"]: r for r in rows}
    assert by_id["builtin:reach"] == {
        "id": "builtin:reach", "suite": "builtin", "action_dim": 2, "image_shape": [64, 64, 3],
        "description": envs.spec("builtin:reach").description,
    }
    assert by_id["builtin:reach-src"]["action_dim"] == 3
    assert set(by_id) == {s.id for s in envs.list_specs()}


def test_envs_command_table(capsys):
    assert main(["envs", "--suite", "builtin"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["id", "suite", "image"]
    assert len(out) == 1 + len(envs.list_specs("builtin"))
    assert any(line.startswith("builtin:wall-src ") and " 3 " in line for line in out)
