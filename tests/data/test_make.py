import numpy as np
import pytest

from coworld.data import make as make_mod
from coworld.data.episodes import list_episode_files, load_episode
from coworld.data.make import competence_schedule, make_dataset
from coworld.data.replay import Replay
from coworld.data.validate import validate_directory
from coworld.errors import UserError

ENV = "builtin:reach"


@pytest.fixture(autouse=True)
def small_calibration(monkeypatch):
    monkeypatch.setattr(make_mod, "CALIBRATION_EPISODES", 4)
    monkeypatch.setattr(make_mod, "CALIBRATION_STEPS", 3)


def test_competence_schedules():
    assert competence_schedule("random", 2, 0.3) == [0.0, 0.0]
    assert competence_schedule("medium", 2, 0.3) == [0.3, 0.3]
    assert competence_schedule("expert", 2, 0.3) == [1.0, 1.0]
    assert competence_schedule("medium-expert", 4, 0.3) == [0.3, 1.0, 0.3, 1.0]
    assert competence_schedule("medium-replay", 5, 0.4) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    with pytest.raises(UserError, match="unknown dataset level"):
        competence_schedule("great", 2, 0.3)


def test_make_is_deterministic_valid_and_recorded(tmp_path):
    side = make_dataset(ENV, "medium-replay", 3, tmp_path / "a", seed=4, time_limit=12)
    make_dataset(ENV, "medium-replay", 3, tmp_path / "b", seed=4, time_limit=12)
    make_dataset(ENV, "medium-replay", 3, tmp_path / "c", seed=5, time_limit=12)
    a, b, c = (list_episode_files(tmp_path / d) for d in "abc")
    assert len(a) == 3 and all(p.name.endswith("-12.npz") for p in a)
    for pa, pb in zip(a, b):
        ea, eb = load_episode(pa), load_episode(pb)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key])
    assert any(not np.array_equal(load_episode(pa)["action"], load_episode(pc)["action"]) for pa, pc in zip(a, c))
    assert validate_directory(tmp_path / "a") == []
    col = side["collection"]
    assert side["env"] == ENV and col["level"] == "medium-replay" and col["seed"] == 4
    schedule = col["competence"]["per_episode"]
    assert schedule[0] == 0.0 and schedule[-1] == col["competence"]["medium"]
    assert side["counts"] == {"episodes": 3, "steps": 36}
    assert side["action_space"]["shape"] == [2]
    replay = Replay(tmp_path / "a")
    assert replay.sample(2, 5)["image"].shape == (2, 5, 64, 64, 3)


def test_expert_beats_random(tmp_path):
    rand = make_dataset(ENV, "random", 4, tmp_path / "r", seed=0, time_limit=30)
    expert = make_dataset(ENV, "expert", 4, tmp_path / "e", seed=0, time_limit=30)
    assert expert["collection"]["normalised_score"]["mean"] > rand["collection"]["normalised_score"]["mean"] + 0.2


def test_make_refuses_bad_input(tmp_path):
    with pytest.raises(UserError, match="level"):
        make_dataset(ENV, "superb", 1, tmp_path / "x")
    make_dataset(ENV, "random", 1, tmp_path / "x", time_limit=3)
    with pytest.raises(UserError, match="not empty"):
        make_dataset(ENV, "random", 1, tmp_path / "x", time_limit=3)
