"""Reliability of the data layer under sharing, faults and hostile files (issue 14, data points).

The cache tests start real processes: several readers of one fresh dataset at once, and a build
killed with SIGKILL.
"""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from coworld.data.episodes import DatasetError, save_episode, update_sidecar
from coworld.data.replay import Replay, default_cache_root

from .conftest import make_episode, ordered_name


def snapshot(directory: Path) -> dict:
    """Every entry under ``directory`` (hidden ones too) with its size and sha256: byte-for-byte state."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()) if path.is_file() else "dir"
    return out


def make_dataset(directory: Path, episodes: int = 6, T: int = 40) -> Path:
    paths = [save_episode(directory, make_episode(T, value=i), name=ordered_name(i, T)) for i in range(episodes)]
    update_sidecar(directory, paths, env="test")
    return directory


READER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    from coworld.data.replay import Replay
    replay = Replay(sys.argv[1])
    batch = replay.sample(4, 8)
    assert replay.num_episodes == int(sys.argv[3]), replay.num_episodes
    print("ok", replay.num_steps)
""")


def test_concurrent_readers_share_one_cache_and_never_write_the_dataset(tmp_path):
    directory = make_dataset(tmp_path / "ds")
    os.chmod(directory, 0o755)
    before = snapshot(directory)
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", READER, str(directory), str(go), "6"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()  # all readers start opening the fresh dataset together
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.startswith("ok 240")
    assert snapshot(directory) == before  # nothing written, renamed or left in the dataset
    groups = list(default_cache_root().iterdir())
    assert len(groups) == 1
    entries = [p.name for p in groups[0].iterdir()]
    assert len([e for e in entries if not e.startswith(".")]) == 1  # one shared entry
    assert not [e for e in entries if e.startswith(".build-")]


SLOW_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from coworld.data import replay as mod
    real = mod.Replay._read
    def slow(self, path, files):
        Path(sys.argv[2]).touch()  # the build has begun
        time.sleep(0.5)
        return real(self, path, files)
    mod.Replay._read = slow
    mod.Replay(sys.argv[1])
""")


def test_killed_build_leaves_nothing_that_lasts(tmp_path):
    directory = make_dataset(tmp_path / "ds")
    before = snapshot(directory)
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILDER, str(directory), str(started)])
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (group,) = default_cache_root().iterdir()
    assert [p for p in group.iterdir() if p.name.startswith(".build-")]  # the orphan of the killed build
    replay = Replay(directory)  # the lock died with the process: no wait, the orphan is cleaned
    assert replay.num_episodes == 6
    assert not [p for p in group.iterdir() if p.name.startswith(".build-")]
    assert snapshot(directory) == before


def test_listed_but_missing_episode_is_refused_by_name(tmp_path):
    directory = make_dataset(tmp_path / "ds", episodes=3, T=5)
    gone = sorted(directory.glob("*.npz"))[1]
    gone.unlink()
    with pytest.raises(DatasetError, match=f"{gone.name}: listed in dataset.json but missing"):
        Replay(directory)
    with pytest.warns(UserWarning, match="missing"):
        assert Replay(directory, skip_bad=True).num_episodes == 2


def test_sidecar_name_outside_the_directory_is_refused_by_replay(tmp_path):
    directory = make_dataset(tmp_path / "ds", episodes=2, T=5)
    import json

    side = json.loads((directory / "dataset.json").read_text())
    side["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "length": 1}
    (directory / "dataset.json").write_text(json.dumps(side))
    with pytest.raises(DatasetError, match="bare file name"):
        Replay(directory)


def test_bad_episode_hint_names_no_python_keyword(tmp_path):
    directory = make_dataset(tmp_path / "ds", episodes=2, T=5)
    ep = make_episode(4)
    ep["reward"][2] = np.nan
    save_episode(directory, ep, name=ordered_name(7, 4))
    with pytest.raises(DatasetError) as info:
        Replay(directory)
    assert "skip_bad" not in str(info.value) and "coworld data validate" in str(info.value)
