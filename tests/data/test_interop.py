"""Interop: V-D4RL npz directories (and their unequal-length defect), V-D4RL HDF5 shards, Minari."""

import warnings

import numpy as np
import pytest

from coworld.cli import main
from coworld.data.episodes import DatasetError, list_episode_files, load_episode, read_sidecar, save_episode
from coworld.data.interop import area_resize, import_npz, import_vd4rl_hdf5
from coworld.data.replay import Replay
from coworld.data.validate import validate_directory


# ------------------------------------------------------------------ V-D4RL 64px npz directories


def vd4rl_episode(T, rng):
    """An episode as V-D4RL's npz files hold it (their hdf5_to_npz conversion): keys image, action,
    reward, discount, is_first, is_last, is_terminal, all with T + 1 entries."""
    is_first, is_last = np.zeros(T + 1, bool), np.zeros(T + 1, bool)
    is_first[0], is_last[-1] = True, True
    action = rng.uniform(-1, 1, (T + 1, 6)).astype(np.float32)
    action[0] = 0
    reward = rng.uniform(0, 1, T + 1).astype(np.float32)
    reward[0] = 0
    return {
        "image": rng.integers(0, 256, (T + 1, 64, 64, 3), dtype=np.uint8),
        "action": action,
        "reward": reward,
        "discount": np.ones(T + 1, np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": np.zeros(T + 1, bool),
    }


def vd4rl_dir(path, n=3, T=10, defect=None):
    """A directory like V-D4RL's: names '{time}-{uuid}-{len(action)}.npz' (they count T + 1), no
    dataset.json. ``defect=i`` gives episode i a key one entry short (their 500 vs 501 defect)."""
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(n):
        ep = vd4rl_episode(T, rng)
        if i == defect:
            ep["image"] = ep["image"][:-1]
            ep["reward"] = ep["reward"][:-1]
        episodes.append(ep)
        save_episode(path, ep, name=f"20220101T0000{i:02d}-{i:032x}-{T + 1}.npz")
    return episodes


def test_vd4rl_npz_directory_loads_natively(tmp_path):
    episodes = vd4rl_dir(tmp_path / "vd4rl")
    assert validate_directory(tmp_path / "vd4rl") == []
    replay = Replay(tmp_path / "vd4rl", cache_dir=tmp_path / "cache")
    assert replay.num_episodes == 3 and replay.action_dim == 6
    assert replay.num_steps == 30
    batch = replay.sample(2, 5)
    assert batch["image"].shape == (2, 5, 64, 64, 3)
    loaded = load_episode(list_episode_files(tmp_path / "vd4rl")[1])
    for key, value in episodes[1].items():
        np.testing.assert_array_equal(loaded[key], value)


def test_vd4rl_unequal_lengths_reported_and_repaired(tmp_path):
    src = tmp_path / "vd4rl"
    episodes = vd4rl_dir(src, defect=1)
    problems = validate_directory(src)
    bad = list_episode_files(src)[1].name
    # 'reward' (10 entries) is the reference: every key with 11 entries is named
    assert {p.key for p in problems} == {"action", "discount", "is_first", "is_last", "is_terminal"}
    assert all(bad in p.file and "entries" in p.message for p in problems)

    with pytest.raises(DatasetError, match="--repair truncate"):
        import_npz([src], tmp_path / "no-repair")
    with pytest.warns(UserWarning, match="truncated to 10 entries"):
        side = import_npz([src], tmp_path / "fixed", repair="truncate", env="dmc:walker_walk")
    out = tmp_path / "fixed"
    assert validate_directory(out) == []
    assert side["env"] == "dmc:walker_walk" and side["collection"]["repaired_files"] == [bad]
    files = list_episode_files(out)
    assert [f.name.split("-")[-1] for f in files] == ["10.npz", "9.npz", "10.npz"]  # T in the name now
    fixed = load_episode(files[1])
    assert all(len(v) == 10 for v in fixed.values())
    np.testing.assert_array_equal(fixed["action"], episodes[1]["action"][:10])  # cut at the end
    assert fixed["is_last"][-1] and fixed["is_last"].sum() == 1
    np.testing.assert_array_equal(load_episode(files[0])["image"], episodes[0]["image"])


def test_import_command_npz_repair(tmp_path, capsys):
    vd4rl_dir(tmp_path / "src", defect=0)
    assert main(["data", "import", "--format", "npz", str(tmp_path / "src"), "--out", str(tmp_path / "a")]) == 2
    assert "--repair truncate" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["data", "import", "--format", "npz", str(tmp_path / "src"), "--out", str(tmp_path / "b"),
                     "--repair", "truncate"])
    assert code == 0 and validate_directory(tmp_path / "b") == []


# ------------------------------------------------------------------ area resize


def test_area_resize_hand_values():
    # integer factor: each output pixel is the mean of a 2 x 2 block
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
    out = area_resize(img, 2)
    np.testing.assert_array_equal(out[0, :, :, 0], [[25, 45], [105, 125]])
    # fractional factor 3 -> 2: output 0 covers [0, 1.5): (0 + 0.5 * 30) / 1.5 = 10,
    # output 1 covers [1.5, 3): (0.5 * 30 + 60) / 1.5 = 50
    img = np.tile(np.array([0, 30, 60], np.uint8)[None, :, None], (3, 1, 3))[None]
    out = area_resize(img, 2)
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [10, 50])
    # a constant image stays constant at 84 -> 64
    np.testing.assert_array_equal(area_resize(np.full((2, 84, 84, 3), 77, np.uint8), 64), 77)


# ------------------------------------------------------------------ V-D4RL 84px HDF5 shards


def write_shard(path, step_type, seed):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    n = len(step_type)
    data = {
        "observation": rng.integers(0, 256, (n, 3, 84, 84), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        "reward": rng.uniform(0, 1, n).astype(np.float32),
        "discount": np.ones(n, np.float32),
        "step_type": np.asarray(step_type, np.int64),
    }
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, compression="gzip")
    return data


def test_vd4rl_hdf5_split_across_shards(tmp_path):
    src = tmp_path / "shards"
    src.mkdir()
    # shard 2: two orphan mids, episode A (4 entries), start of episode B (3 entries)
    # shard 10: rest of B (2 entries), episode C (3 entries), a dangling start (dropped)
    a = write_shard(src / "2.hdf5", [1, 1, 0, 1, 1, 2, 0, 1, 1], seed=1)
    b = write_shard(src / "10.hdf5", [1, 2, 0, 1, 2, 0, 1], seed=2)
    with pytest.warns(UserWarning, match="4 step"):
        side = import_vd4rl_hdf5([src], tmp_path / "out", env="dmc:walker_walk")
    files = list_episode_files(tmp_path / "out")
    assert [len(load_episode(f)["reward"]) for f in files] == [4, 5, 3]
    assert side["counts"] == {"episodes": 3, "steps": 3 + 4 + 2}
    assert side["collection"]["format"] == "vd4rl-hdf5" and side["collection"]["dropped_steps"] == 4
    assert validate_directory(tmp_path / "out") == []
    ep_b = load_episode(files[1])
    obs_b = np.concatenate([a["observation"][6:], b["observation"][:2]])
    np.testing.assert_array_equal(ep_b["image"], obs_b.transpose(0, 2, 3, 1))  # channels-last, lossless
    np.testing.assert_array_equal(ep_b["action"], np.concatenate([a["action"][6:], b["action"][:2]]))
    np.testing.assert_array_equal(ep_b["reward"], np.concatenate([a["reward"][6:], b["reward"][:2]]))
    assert ep_b["is_first"].tolist() == [True, False, False, False, False]
    assert ep_b["is_last"].tolist() == [False, False, False, False, True]
    assert not ep_b["is_terminal"].any()


def test_vd4rl_hdf5_resize_command(tmp_path):
    src = tmp_path / "0.hdf5"
    data = write_shard(src, [0, 1, 2, 0, 2], seed=3)
    assert main(["data", "import", "--format", "vd4rl-hdf5", str(src), "--out", str(tmp_path / "o"),
                 "--resize", "64"]) == 0
    files = list_episode_files(tmp_path / "o")
    ep = load_episode(files[0])
    assert ep["image"].shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(ep["image"], area_resize(data["observation"][:3].transpose(0, 2, 3, 1), 64))
    assert read_sidecar(tmp_path / "o")["collection"]["resize"]["size"] == 64


def test_vd4rl_hdf5_bad_step_type(tmp_path):
    write_shard(tmp_path / "0.hdf5", [0, 1, 5], seed=0)
    with pytest.raises(DatasetError, match="step_type"):
        import_vd4rl_hdf5([tmp_path / "0.hdf5"], tmp_path / "o")


# ------------------------------------------------------------------ Minari


def rich_dataset(path):
    """Episodes with state and success keys, one terminal episode, one with a non-default discount."""
    rng = np.random.default_rng(5)
    episodes = []
    for i, T in enumerate((6, 4, 5)):
        ep = vd4rl_episode(T, rng)
        ep["state"] = rng.normal(size=(T + 1, 3)).astype(np.float32)
        ep["success"] = rng.integers(0, 2, T + 1).astype(bool)
        if i == 1:
            ep["is_terminal"][-1] = True
            ep["discount"][-1] = 0
        if i == 2:
            ep["discount"][2] = 0.5
        episodes.append(ep)
        save_episode(path, ep, name=f"20240101T00000{i}-{i:032x}-{T}.npz")
    return episodes


def test_minari_round_trip_is_lossless(tmp_path):
    pytest.importorskip("minari")
    h5py = pytest.importorskip("h5py")
    import minari

    episodes = rich_dataset(tmp_path / "src")
    assert main(["data", "export", "--format", "minari", str(tmp_path / "src"), "--out", str(tmp_path / "m")]) == 0
    # a real Minari dataset: minari reads it, images are stored raw (not JPEG bytes)
    dataset = minari.MinariDataset(tmp_path / "m" / "data")
    assert dataset.total_episodes == 3 and dataset.total_steps == 15
    first = next(dataset.iterate_episodes())
    np.testing.assert_array_equal(first.observations["image"], episodes[0]["image"])
    np.testing.assert_array_equal(first.actions, episodes[0]["action"][1:])
    with h5py.File(tmp_path / "m" / "data" / "main_data.hdf5") as f:
        stored = f["episode_0/observations/image"]
        assert stored.dtype == np.uint8 and stored.shape == (7, 64, 64, 3)

    assert main(["data", "import", "--format", "minari", str(tmp_path / "m"), "--out", str(tmp_path / "back")]) == 0
    files = list_episode_files(tmp_path / "back")
    assert len(files) == 3 and validate_directory(tmp_path / "back") == []
    for ep, path in zip(episodes, files):
        back = load_episode(path)
        assert set(back) == set(ep)
        for key in ep:
            assert back[key].dtype == ep[key].dtype, key
            np.testing.assert_array_equal(back[key], ep[key], err_msg=key)


def test_minari_import_warns_on_jpeg_and_rescales_actions(tmp_path):
    pytest.importorskip("minari")
    import inspect

    import gymnasium
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    from coworld.data.interop import import_minari

    if "jpeg_encoding" not in inspect.signature(MinariStorage.new).parameters:
        pytest.skip("this Minari version has no JPEG encoding")
    rng = np.random.default_rng(0)
    obs_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    act_space = gymnasium.spaces.Box(0.0, 4.0, (2,), np.float32)
    (tmp_path / "m").mkdir()
    storage = MinariStorage.new(tmp_path / "m" / "data", observation_space=obs_space, action_space=act_space,
                                data_format="hdf5", jpeg_encoding=True)
    storage.update_episodes([EpisodeBuffer(
        id=0, observations=np.full((4, 64, 64, 3), 100, np.uint8),
        actions=np.array([[0, 4], [2, 1], [4, 0]], np.float32), rewards=rng.uniform(size=3),
        terminations=np.zeros(3, bool), truncations=np.array([0, 0, 1], bool), infos={})])
    storage.update_metadata({"dataset_id": "test/jpeg-v0", "minari_version": __import__("minari").__version__})
    with pytest.warns(UserWarning) as record:
        side = import_minari(tmp_path / "m", tmp_path / "o")
    messages = " ".join(str(w.message) for w in record)
    assert "JPEG" in messages and "rescaled" in messages
    ep = load_episode(list_episode_files(tmp_path / "o")[0])
    np.testing.assert_allclose(ep["action"], [[0, 0], [-1, 1], [0, -0.5], [1, -1]])
    assert np.abs(ep["image"].astype(int) - 100).max() <= 2  # JPEG of a flat image: near, maybe not exact
    assert side["collection"]["action_rescaled_from"] == [[0.0, 0.0], [4.0, 4.0]]
