import io

import numpy as np
import pytest
import torch

from coworld.data.episodes import DatasetError, read_sidecar, save_episode
from coworld.data.replay import Replay, default_cache_root
from coworld.errors import UserError


def check_windows(batch):
    """Every step of a window either continues its episode (reward + 1, same pixel value) or starts
    a new one (is_first); position 0 is always first."""
    reward, first, image = batch["reward"].numpy(), batch["is_first"].numpy(), batch["image"].numpy()
    assert first[:, 0].all()
    value = reward // 100
    assert (image[:, :, 0, 0, 0] == value).all()
    cont = ~first[:, 1:]
    assert (reward[:, 1:][cont] == reward[:, :-1][cont] + 1).all()
    assert (reward[:, 1:][first[:, 1:]] % 100 == 0).all()  # new episodes start at their entry 0


def test_offline_sample_shapes_and_content(dataset):
    replay = Replay(dataset, seed=1)
    assert (replay.num_episodes, replay.num_steps, replay.action_dim) == (4, 6 + 7 + 8 + 9, 2)
    batch = replay.sample(5, 4)
    assert batch["image"].shape == (5, 4, 64, 64, 3) and batch["image"].dtype == torch.uint8
    assert batch["action"].shape == (5, 4, 2) and batch["action"].dtype == torch.float32
    for key in ("reward", "discount", "is_first", "is_terminal"):
        assert batch[key].shape == (5, 4)
    assert batch["is_first"].dtype == torch.bool and batch["is_terminal"].dtype == torch.bool
    check_windows(batch)
    # Windows that fit stay inside their episode (DreamerV2 sampling).
    assert not batch["is_first"][:, 1:].any()


def test_offline_cache_is_memory_mapped_and_reused(dataset, monkeypatch):
    first = Replay(dataset)
    assert isinstance(first._data["image"], np.memmap)
    assert not (dataset / ".cache").exists()  # the dataset directory is never written to
    assert list(default_cache_root().iterdir())
    monkeypatch.setattr(Replay, "_build_cache", lambda *a: pytest.fail("cache rebuilt"))
    again = Replay(dataset, seed=3)
    assert again.names == first.names


def test_changed_dataset_rebuilds_cache(dataset, episode, tmp_path):
    assert Replay(dataset, cache_dir=tmp_path / "c").num_episodes == 4
    save_episode(dataset, episode(3, value=5), name="20240102T000000-" + "0" * 32 + "-3.npz")
    replay = Replay(dataset, cache_dir=tmp_path / "c")
    assert replay.num_episodes == 5
    assert len([p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]) == 1  # old one removed


def test_cache_root_follows_the_environment(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("COWORLD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    Replay(dataset)
    assert not (dataset / ".cache").exists()
    assert list((tmp_path / "xdg" / "coworld" / "replay").iterdir())
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path / "mine"))
    Replay(dataset)
    assert list((tmp_path / "mine" / "replay").iterdir())


def test_cache_inside_the_dataset_is_refused(dataset):
    with pytest.raises(UserError, match="inside the dataset"):
        Replay(dataset, cache_dir=dataset / "sub")
    assert not (dataset / "sub").exists()


def test_short_episodes_run_into_the_next(tmp_path, episode):
    for i, T in enumerate([1, 2, 1]):
        save_episode(tmp_path, episode(T, value=i), name=f"20240101T00000{i}-{'0' * 32}-{T}.npz")
    batch = Replay(tmp_path).sample(8, 7)
    check_windows(batch)
    np.testing.assert_array_equal(batch["is_first"].sum(1).numpy(), 3)  # 7 entries cross 3 starts


def test_sampling_modes(tmp_path, episode):
    save_episode(tmp_path, episode(1, value=0), name="20240101T000000-" + "0" * 32 + "-1.npz")  # 2 entries
    save_episode(tmp_path, episode(17, value=1), name="20240101T000001-" + "0" * 32 + "-17.npz")  # 18 entries
    replay = Replay(tmp_path, seed=0)
    uniform = (replay.sample(4000, 1)["reward"] >= 100).float().mean().item()
    weighted = (replay.sample(4000, 1, mode="length")["reward"] >= 100).float().mean().item()
    assert abs(uniform - 0.5) < 0.03
    assert abs(weighted - 18 / 20) < 0.02
    with pytest.raises(UserError, match="sampling mode"):
        replay.sample(1, 1, mode="bogus")


def test_online_add_saves_files_and_sidecar(tmp_path, episode):
    replay = Replay(tmp_path / "online", readonly=False)
    with pytest.raises(UserError, match="no episodes"):
        replay.sample(2, 3)
    names = [replay.add_episode(episode(4 + i, value=i)) for i in range(3)]
    assert replay.num_episodes == 3 and replay.num_steps == 4 + 5 + 6
    assert sorted(p.name for p in (tmp_path / "online").glob("*.npz")) == names  # write order = name order
    side = read_sidecar(tmp_path / "online")
    assert side["counts"] == {"episodes": 3, "steps": 15}
    check_windows(replay.sample(6, 5))
    with pytest.raises(DatasetError, match="action"):
        replay.add_episode(episode(3, A=5))
    reopened = Replay(tmp_path / "online", readonly=False)
    assert reopened.names == names


def test_online_growth_keeps_data(episode):
    replay = Replay(readonly=False)
    eps = [episode(50 + i % 7, value=i % 50) for i in range(40)]  # > 1024 entries: several regrowths
    for ep in eps:
        replay.add_episode(ep)
    for ep, got in zip(eps, replay.episodes()):
        np.testing.assert_array_equal(got["reward"], ep["reward"])
        np.testing.assert_array_equal(got["image"], ep["image"])


def test_capacity_drops_oldest(episode):
    replay = Replay(readonly=False, capacity=30)
    for i in range(6):
        replay.add_episode(episode(9, value=i))  # 10 entries each
    assert replay.num_episodes == 3
    assert [int(e["reward"][0]) // 100 for e in replay.episodes()] == [3, 4, 5]
    values = set((replay.sample(200, 4)["reward"] // 100).unique().tolist())
    assert values == {3, 4, 5}


def test_readonly_refuses_add(dataset, episode):
    with pytest.raises(UserError, match="read-only"):
        Replay(dataset).add_episode(episode(2))


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_offline_state_roundtrip(dataset):
    replay = Replay(dataset, seed=5)
    replay.sample(3, 4)
    state = roundtrip(replay.state_dict())
    expected = replay.sample(3, 4)
    fresh = Replay(dataset, seed=123)
    fresh.load_state_dict(state)
    got = fresh.sample(3, 4)
    for key in expected:
        assert torch.equal(expected[key], got[key])


def test_reopening_an_online_replay_removes_a_partial_write(tmp_path, episode):
    # Killed mid-write of the first episode after the checkpoint: the checkpoint's episode list equals
    # the directory's, so nothing is restored, yet the half-written file must still go.
    directory = tmp_path / "run"
    replay = Replay(directory, readonly=False, seed=7)
    replay.add_episode(episode(5, value=1))
    state = roundtrip(replay.state_dict())
    (directory / ".tmp-abc123.npz").write_bytes(b"half a file")
    resumed = Replay(directory, readonly=False, seed=0)
    resumed.load_state_dict(state)
    assert resumed.names == state["episodes"]
    assert sorted(p.name for p in directory.glob("*.npz")) == state["episodes"]


def test_online_resume_is_bit_identical_and_deletes_later_files(tmp_path, episode):
    directory = tmp_path / "run"
    replay = Replay(directory, readonly=False, seed=7)
    for i in range(3):
        replay.add_episode(episode(5 + i, value=i))
    replay.sample(4, 6)
    state = roundtrip(replay.state_dict())
    expected = replay.sample(4, 6)
    replay.add_episode(episode(4, value=8))  # collected after the checkpoint, then the run dies
    replay.add_episode(episode(4, value=9))
    (directory / ".tmp-abc123.npz").write_bytes(b"half a file")  # killed in the middle of a write

    resumed = Replay(directory, readonly=False, seed=0)
    assert resumed.num_episodes == 5
    resumed.load_state_dict(state)
    assert resumed.names == state["episodes"]
    assert len(list(directory.glob("*.npz"))) == 3  # the later episodes and the partial write are gone
    assert read_sidecar(directory)["counts"]["episodes"] == 3
    got = resumed.sample(4, 6)
    for key in expected:
        assert torch.equal(expected[key], got[key])
    resumed.load_state_dict(state)
    # The same episodes re-collected give the same continuation as an uninterrupted run.
    reference = Replay(tmp_path / "ref", readonly=False, seed=7)
    for i in range(3):
        reference.add_episode(episode(5 + i, value=i))
    reference.sample(4, 6)
    for r in (reference, resumed):
        r.add_episode(episode(4, value=8))
    a, b = reference.sample(4, 6), resumed.sample(4, 6)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_offline_state_with_other_episodes_is_refused(dataset, tmp_path, episode):
    state = Replay(dataset).state_dict()
    state["episodes"] = state["episodes"][:2]
    with pytest.raises(DatasetError, match="differ"):
        Replay(dataset).load_state_dict(state)
