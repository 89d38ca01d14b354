import json
import re

import numpy as np
import pytest

from coworld.data.episodes import (
    DatasetError,
    EpisodeBuilder,
    episode_name,
    load_episode,
    name_length,
    read_sidecar,
    save_episode,
    sha256_file,
    update_sidecar,
)
from coworld.errors import UserError


def test_episode_name_pattern_and_seq_order():
    name = episode_name(500)
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{32}-500\.npz", name)
    assert name_length(name) == 500
    seq = episode_name(10, seq=0x1234)
    assert seq.split("-")[1][:8] == "00001234"
    names = [episode_name(3, seq=i) for i in (9, 10, 255, 256)]
    stamps = {n.split("-")[0] for n in names}
    if len(stamps) == 1:  # same second: the sequence number alone orders them
        assert sorted(names) == names


def test_save_load_roundtrip_is_atomic(tmp_path, episode):
    ep = episode(4, value=7)
    path = save_episode(tmp_path / "new", ep)
    assert path.name.endswith("-4.npz")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    back = load_episode(path)
    assert set(back) == set(ep)
    for key in ep:
        np.testing.assert_array_equal(back[key], ep[key])
        assert back[key].dtype == ep[key].dtype


def test_load_accepts_wild_variants(tmp_path, episode):
    ep = episode(3)
    ep["reward"] = ep["reward"].astype(np.float64)[:, None]  # float64 column
    ep["discount"] = np.array([1, 1, 1, 0], np.float64)
    ep["is_last"] = ep["is_last"].astype(np.int64)
    del ep["is_terminal"], ep["is_first"]
    back = load_episode(save_episode(tmp_path, ep, name="x.npz"))
    assert back["reward"].dtype == np.float32 and back["reward"].shape == (4,)
    assert back["discount"].dtype == np.float32
    np.testing.assert_array_equal(back["is_terminal"], [False, False, False, True])
    np.testing.assert_array_equal(back["is_first"], [True, False, False, False])
    assert back["is_last"].dtype == bool


def test_load_errors_are_dataset_errors(tmp_path):
    assert issubclass(DatasetError, UserError)
    with pytest.raises(DatasetError, match="not found"):
        load_episode(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="junk.npz"):
        load_episode(tmp_path / "junk.npz")


def test_sidecar_update_counts_and_checksums(tmp_path, episode):
    a = save_episode(tmp_path, episode(3), name=episode_name(3))
    b = save_episode(tmp_path, episode(5), name=episode_name(5))
    update_sidecar(tmp_path, [a], env="builtin/reach", collection={"policy": "random"})
    side = update_sidecar(tmp_path, [b])
    assert side["counts"] == {"episodes": 2, "steps": 8}
    assert side["env"] == "builtin/reach" and side["collection"] == {"policy": "random"}
    assert side["files"][b.name]["sha256"] == sha256_file(b)
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk["counts"]["steps"] == 8 and read_sidecar(tmp_path)["format"].startswith("coworld")
    side = update_sidecar(tmp_path, removed=[a.name])
    assert side["counts"] == {"episodes": 1, "steps": 5}


def test_episode_builder():
    builder = EpisodeBuilder(action_dim=2)
    obs = lambda v: {"image": np.full((64, 64, 3), v, np.uint8), "state": np.array([v, -v], np.float32)}
    builder.reset(obs(0))
    assert not builder.done
    builder.step([2.0, -0.5], obs(1), 1.5, False, False, {"success": False})
    builder.step([0.1, 0.2], obs(2), 2.0, True, False, {"success": True})
    assert builder.done and len(builder) == 2
    ep = builder.episode()
    np.testing.assert_allclose(ep["action"], [[0, 0], [1.0, -0.5], [0.1, 0.2]], rtol=1e-6)  # clipped
    assert ep["action"].dtype == np.float32
    np.testing.assert_array_equal(ep["reward"], [0, 1.5, 2.0])
    np.testing.assert_array_equal(ep["discount"], [1, 1, 0])
    np.testing.assert_array_equal(ep["is_first"], [True, False, False])
    np.testing.assert_array_equal(ep["is_last"], [False, False, True])
    np.testing.assert_array_equal(ep["is_terminal"], [False, False, True])
    np.testing.assert_array_equal(ep["success"], [False, False, True])
    assert ep["image"].shape == (3, 64, 64, 3) and ep["image"][2, 0, 0, 0] == 2
    assert ep["state"].shape == (3, 2)


def test_episode_builder_truncation_keeps_discount():
    builder = EpisodeBuilder(action_dim=1)
    builder.reset({"image": np.zeros((64, 64, 3), np.uint8)})
    builder.step([0.0], {"image": np.zeros((64, 64, 3), np.uint8)}, 0.0, False, True, {})
    ep = builder.episode()
    assert builder.done
    np.testing.assert_array_equal(ep["discount"], [1, 1])
    np.testing.assert_array_equal(ep["is_terminal"], [False, False])
    assert "success" not in ep and "state" not in ep
