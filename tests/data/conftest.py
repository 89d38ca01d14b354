"""Tiny synthetic episodes for the data-layer tests."""

import numpy as np
import pytest


def make_episode(T: int = 5, A: int = 2, value: int = 0, size: int = 64) -> dict:
    """An episode of T agent steps; image pixels = value, reward[t] = 100 * value + t."""
    is_first = np.zeros(T + 1, bool)
    is_first[0] = True
    is_last = np.zeros(T + 1, bool)
    is_last[-1] = True
    action = np.full((T + 1, A), 0.5, np.float32)
    action[0] = 0
    return {
        "image": np.full((T + 1, size, size, 3), value, np.uint8),
        "action": action,
        "reward": (100 * value + np.arange(T + 1)).astype(np.float32),
        "discount": np.ones(T + 1, np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": np.zeros(T + 1, bool),
    }


def ordered_name(i: int, T: int) -> str:
    return f"20240101T{i:06d}-{'0' * 32}-{T}.npz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Offline replay caches go to a per-test directory, never to the user's ~/.cache."""
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path_factory.mktemp("coworld-cache")))


@pytest.fixture
def episode():
    """The make_episode factory."""
    return make_episode


@pytest.fixture
def dataset(tmp_path):
    """A directory of 4 well-formed episodes of lengths 6..9 (values 0..3), saved in name order."""
    from coworld.data.episodes import save_episode, update_sidecar

    directory = tmp_path / "ds"
    paths = [save_episode(directory, make_episode(6 + i, value=i), name=ordered_name(i, 6 + i)) for i in range(4)]
    update_sidecar(directory, paths, env="test")
    return directory
