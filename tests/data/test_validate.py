import numpy as np
import pytest

from coworld.data.episodes import save_episode, update_sidecar
from coworld.data.replay import Replay
from coworld.data.validate import Problem, validate_directory, validate_episode
from coworld.data.episodes import DatasetError


def only(problems, key):
    """The single problem expected, checked to name the key."""
    assert len(problems) == 1, problems
    assert problems[0].key == key
    return problems[0]


def test_good_episode_and_directory(dataset, episode):
    assert validate_episode(episode(3)) == []
    assert validate_directory(dataset) == []


def test_unequal_lengths(episode):
    ep = episode(5)
    ep["action"] = ep["action"][:-1]  # 5 entries against 6: the V-D4RL defect
    p = only(validate_episode(ep, file="e.npz"), "action")
    assert p.file == "e.npz" and "5 entries" in p.message and "6" in p.message


def test_missing_key(episode):
    ep = episode(3)
    del ep["action"]
    assert "missing" in only(validate_episode(ep), "action").message


def test_wrong_image_dtype_and_shape(episode):
    ep = episode(3)
    ep["image"] = ep["image"].astype(np.float32)
    assert "uint8" in only(validate_episode(ep), "image").message
    ep = episode(3)
    ep["image"] = np.zeros((4, 3, 64, 64), np.uint8)
    assert "channels-first" in only(validate_episode(ep), "image").message
    ep["image"] = np.zeros((4, 64, 32, 3), np.uint8)
    assert "shape" in only(validate_episode(ep), "image").message


@pytest.mark.parametrize("key", ["reward", "action"])
def test_nan_and_inf(episode, key):
    ep = episode(3)
    ep[key][2] = np.nan
    assert "NaN" in only(validate_episode(ep), key).message
    ep[key][2] = np.inf
    assert "inf" in only(validate_episode(ep), key).message


def test_actions_out_of_range(episode):
    ep = episode(3)
    ep["action"][1, 0] = 1.0005  # within tolerance
    assert validate_episode(ep) == []
    ep["action"][1, 0] = -1.5
    assert "[-1, 1]" in only(validate_episode(ep), "action").message


def test_action_dims_differ_between_episodes(tmp_path, episode):
    save_episode(tmp_path, episode(3, A=2), name="a.npz")
    save_episode(tmp_path, episode(3, A=2), name="b.npz")
    save_episode(tmp_path, episode(3, A=4), name="c.npz")
    p = only(validate_directory(tmp_path), "action")
    assert p.file.endswith("c.npz") and "4" in p.message


def test_truncated_and_non_npz_files(tmp_path, episode):
    path = save_episode(tmp_path, episode(3), name="a.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:300])
    (tmp_path / "text.npz").write_text("hello")
    problems = validate_directory(tmp_path)
    assert {p.file.split("/")[-1] for p in problems} == {"cut.npz", "text.npz"}
    assert all(p.key == "-" and ("corrupt" in p.message or "truncated" in p.message) for p in problems)


def test_pickle_needing_file_is_refused_not_loaded(tmp_path):
    np.savez(tmp_path / "obj.npz", image=np.array([{"x": 1}], dtype=object))
    p = only(validate_episode(tmp_path / "obj.npz"), "-")
    assert "pickle" in p.message and "'image'" in p.message


def test_empty_directory(tmp_path):
    p = only(validate_directory(tmp_path), "-")
    assert "no episode files" in p.message


def test_sidecar_checksum_mismatch(dataset, episode):
    first = sorted(dataset.glob("*.npz"))[0]
    save_episode(dataset, episode(6, value=9), name=first.name)  # same name, new content
    p = only(validate_directory(dataset), "-")
    assert p.file.endswith(first.name) and "sha256" in p.message
    with pytest.raises(DatasetError, match="sha256"):
        Replay(dataset, cache_dir=dataset.parent / "cache")


def test_unlisted_file_is_reported(dataset, episode):
    save_episode(dataset, episode(2), name="extra.npz")
    assert "not listed" in only(validate_directory(dataset), "-").message


def test_skip_bad_skips_with_warning(dataset, episode):
    ep = episode(4)
    ep["reward"] = ep["reward"][:-1]
    path = save_episode(dataset, ep, name="20240101T999999-" + "f" * 32 + "-4.npz")
    update_sidecar(dataset, [path])
    with pytest.raises(DatasetError, match="reward"):
        Replay(dataset)
    with pytest.warns(UserWarning, match="skipping bad episode"):
        replay = Replay(dataset, skip_bad=True)
    assert replay.num_episodes == 4


def test_problem_str_names_file_and_key():
    assert str(Problem("a.npz", "reward", "contains NaN or inf")) == "a.npz: reward: contains NaN or inf"
