"""Test-wide settings: single-threaded torch (tests run beside each other on 2 cores),
headless MuJoCo rendering, a private cache directory (replay caches, demo datasets, compiled
kernels) so that tests never write into the user's cache, and deterministic seeds."""

import os
import tempfile

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["COWORLD_CACHE"] = tempfile.mkdtemp(prefix="coworld-test-cache-")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """In-process runs with train.threads=0 see every other core as busy (both the measured busy cores and
    the load average), so they pick one thread whatever the machine's load (two runs of one test must not
    differ in thread count); torch is back to one thread after each test."""
    from coworld.run import session

    monkeypatch.setattr(session, "busy_cores", lambda *args, **kwargs: 1e9)
    monkeypatch.setattr(os, "getloadavg", lambda: (1e9, 1e9, 1e9), raising=False)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def target_data(tmp_path_factory):
    """A small random-policy dataset of builtin:reach (4 episodes of 15 steps), the offline target
    data of the co-training and baseline tests; read only."""
    from coworld.data.make import make_dataset

    out = tmp_path_factory.mktemp("target")
    make_dataset("builtin:reach", "random", 4, out, seed=0, time_limit=15)
    return out
