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


# ------------------------------------------------------------------ V-D4RL HDF5 import (point 3)

h5py = pytest.importorskip("h5py")

from coworld.cli import main  # noqa: E402
from coworld.data.episodes import list_episode_files, load_episode  # noqa: E402
from coworld.data.interop import import_npz, import_vd4rl_hdf5  # noqa: E402
from coworld.data.validate import validate_directory  # noqa: E402


def hdf5_shard(path, observation, step_type=None):
    n = len(observation)
    step_type = np.ones(n, np.int64) if step_type is None else np.asarray(step_type, np.int64)
    if step_type is not None:
        step_type[0], step_type[-1] = 0, 2
    with h5py.File(path, "w") as f:
        f.create_dataset("observation", data=observation)
        f.create_dataset("action", data=np.zeros((n, 2), np.float32))
        f.create_dataset("reward", data=np.ones(n, np.float32))
        f.create_dataset("discount", data=np.ones(n, np.float32))
        f.create_dataset("step_type", data=step_type)
    return path


def test_float_images_in_unit_range_are_scaled(tmp_path):
    obs = np.random.default_rng(0).uniform(0, 1, (5, 3, 16, 16)).astype(np.float32)
    obs[0, 0, 0, 0], obs[0, 0, 0, 1] = 0.0, 1.0
    hdf5_shard(tmp_path / "0.hdf5", obs)
    side = import_vd4rl_hdf5([tmp_path / "0.hdf5"], tmp_path / "o")
    image = load_episode(list_episode_files(tmp_path / "o")[0])["image"]
    np.testing.assert_array_equal(image, np.rint(obs * 255).astype(np.uint8).transpose(0, 2, 3, 1))
    assert image.max() == 255 and side["collection"]["observation"]["conversion"].startswith("float in [0, 1]")


def test_float_images_in_byte_range_are_rounded(tmp_path):
    obs = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype(np.float64)
    hdf5_shard(tmp_path / "0.hdf5", obs)
    import_vd4rl_hdf5([tmp_path / "0.hdf5"], tmp_path / "o")
    image = load_episode(list_episode_files(tmp_path / "o")[0])["image"]
    np.testing.assert_array_equal(image, np.rint(obs).astype(np.uint8))


def test_integer_images_outside_0_255_are_refused_never_wrapped(tmp_path, capsys):
    obs = np.arange(200, 200 + 4 * 3 * 8 * 8).reshape(4, 3, 8, 8).astype(np.int16)  # 200 .. 967
    hdf5_shard(tmp_path / "0.hdf5", obs)
    assert main(["data", "import", "--format", "vd4rl-hdf5", str(tmp_path / "0.hdf5"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds values 200..967, outside 0..255; refusing to wrap" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    hdf5_shard(tmp_path / "1.hdf5", (obs - 200) % 256)  # int16 within 0..255: converted exactly
    import_vd4rl_hdf5([tmp_path / "1.hdf5"], tmp_path / "ok")
    image = load_episode(list_episode_files(tmp_path / "ok")[0])["image"]
    np.testing.assert_array_equal(image, ((obs - 200) % 256).astype(np.uint8).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("how", ["external-link", "virtual", "external-storage"])
def test_hdf5_data_from_other_files_is_refused(tmp_path, how):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("obs", data=np.full((4, 3, 8, 8), 7, np.uint8))
    raw = tmp_path / "raw.bin"
    np.full((4, 3, 8, 8), 7, np.uint8).tofile(raw)
    path = tmp_path / "0.hdf5"
    hdf5_shard(path, np.zeros((4, 3, 8, 8), np.uint8))
    with h5py.File(path, "a") as f:
        del f["observation"]
        if how == "external-link":
            f["observation"] = h5py.ExternalLink(str(other), "/obs")
        elif how == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 3, 8, 8), dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(other), "obs", shape=(4, 3, 8, 8))
            f.create_virtual_dataset("observation", layout)
        else:
            f.create_dataset("observation", shape=(4, 3, 8, 8), dtype=np.uint8, external=[(str(raw), 0, 4 * 192)])
    with pytest.raises(DatasetError, match="external link|virtual dataset|external file") as info:
        import_vd4rl_hdf5([path], tmp_path / "o")
    assert "refusing" in str(info.value) and "/observation" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_overlong_episode_is_refused_before_reading_images(tmp_path, capsys, monkeypatch):
    path = tmp_path / "0.hdf5"
    n = 10_002  # 10 001 steps: one more than the default maximum
    with h5py.File(path, "w") as f:  # declared, never written: the file stays tiny
        f.create_dataset("observation", shape=(n, 3, 84, 84), dtype=np.uint8, chunks=(64, 3, 84, 84),
                         compression="gzip")
        for key in ("reward", "discount"):
            f.create_dataset(key, data=np.zeros(n, np.float32))
        f.create_dataset("action", data=np.zeros((n, 2), np.float32))
        step_type = np.ones(n, np.int64)
        step_type[0], step_type[-1] = 0, 2
        f.create_dataset("step_type", data=step_type)
    assert path.stat().st_size < 2_000_000
    assert main(["data", "import", "--format", "vd4rl-hdf5", str(path), "--out", str(tmp_path / "o"),
                 "--resize", "64"]) == 2
    err = capsys.readouterr().err
    assert "has 10001 steps, more than the maximum of 10000; if it is genuine, re-run with --max-episode-steps" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(DatasetError, match="more than the maximum of 100"):
        import_vd4rl_hdf5([path], tmp_path / "o", max_episode_steps=100)


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import h5py
    from coworld.data.interop import import_vd4rl_hdf5
    path, out = sys.argv[1], sys.argv[2]
    n = 4000
    with h5py.File(path, "w") as f:  # 4000 float32 84x84 frames: 339 MB if read at once
        f.create_dataset("observation", shape=(n, 3, 84, 84), dtype=np.float32, chunks=(32, 3, 84, 84),
                         compression="gzip", fillvalue=0.5)
        f.create_dataset("action", data=np.zeros((n, 2), np.float32))
        f.create_dataset("reward", data=np.zeros(n, np.float32))
        f.create_dataset("discount", data=np.ones(n, np.float32))
        step_type = np.ones(n, np.int64); step_type[0], step_type[-1] = 0, 2
        f.create_dataset("step_type", data=step_type)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import_vd4rl_hdf5([path], out, resize=64)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)
""")


def test_hdf5_import_memory_stays_bounded(tmp_path):
    """A 4000-step float episode resized to 64: the old path read the whole episode as float (339 MB) and
    resized it at once (about 1 GB); converting in chunks keeps the growth near the uint8 output (49 MB)."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "0.hdf5"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    grown_mb = int(proc.stdout.split()[-1])
    assert grown_mb < 300, f"peak memory grew by {grown_mb} MB"
    image = load_episode(list_episode_files(tmp_path / "o")[0])["image"]
    assert image.shape == (4000, 64, 64, 3) and (image == 128).all()  # 0.5 x 255 = 127.5 -> 128


# ------------------------------------------------------------------ atomic outputs (point 4)


def test_failed_npz_import_leaves_nothing_at_out(tmp_path):
    src = make_dataset(tmp_path / "src", episodes=3, T=5)
    bad = make_episode(5)
    bad["reward"][3] = np.nan
    save_episode(src, bad, name=ordered_name(9, 5))  # the last file fails after three were written
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="NaN"):
        import_npz([src], out)
    assert not out.exists() and validate_directory(out)  # nothing that validates
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_partial_of_a_killed_import_is_removed_by_the_next(tmp_path):
    from coworld.data.episodes import partial_dir

    src = make_dataset(tmp_path / "src", episodes=2, T=5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = Path(str(partial_dir(tmp_path / "out")).rsplit("-", 1)[0] + "-" + dead.stdout.strip())
    orphan.mkdir()
    save_episode(orphan, make_episode(3), name=ordered_name(0, 3))
    assert not (tmp_path / "out").exists()  # a killed import left nothing at --out
    import_npz([src], tmp_path / "out")
    assert not orphan.exists() and validate_directory(tmp_path / "out") == []


def test_interrupted_make_leaves_nothing_at_out(tmp_path, monkeypatch):
    from coworld.data import make as make_mod

    monkeypatch.setattr(make_mod, "CALIBRATION_EPISODES", 2)
    real, calls = make_mod.run_episode, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # 2 calibration episodes, then the 2nd episode collected
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(make_mod, "run_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_mod.make_dataset("builtin:reach", "random", 4, tmp_path / "out", time_limit=5)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ Minari metadata (points 4, 11)

minari = pytest.importorskip("minari")


@pytest.fixture
def minari_dir(tmp_path):
    src = make_dataset(tmp_path / "src", episodes=3, T=5)
    for path in src.glob("*.npz"):  # entry 0 with a zero reward, as Minari export expects
        ep = load_episode(path)
        ep["reward"][0] = 0
        save_episode(src, ep, name=path.name)
    from coworld.data.interop import export_minari

    return export_minari(src, tmp_path / "m")


def edit_metadata(minari_dir, **changes):
    import json

    path = minari_dir / "data" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    for key, value in changes.items():
        if value is None:
            del meta[key]
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    ({"total_episodes": 5}, "total_episodes says 5 but main_data.hdf5 holds 3 episode group(s)"),
    ({"total_episodes": 2}, "total_episodes says 2 but main_data.hdf5 holds 3 episode group(s)"),
    ({"total_steps": 99}, "total_steps says 99 but the episodes hold 15 steps"),
    ({"data_format": "arrow"}, "data_format is 'arrow'; only Minari's 'hdf5' format can be imported"),
    ({"observation_space": '{"type": "Graph"}'}, "observation_space uses unknown space type(s) 'Graph'"),
    ({"observation_space": '{"type": "Dict", "subspaces": {"a": {"type": "Nope"}}}'}, "unknown space type(s) 'Nope'"),
    ({"action_space": '{"type": "Box"}'}, "action_space cannot be read (KeyError"),
    ({"action_space": None, "env_spec": '{"id": "x", "entry_point": "os:system"}'}, "no action_space recorded"),
    ({"total_steps": "15"}, "total_steps is '15'; expected a non-negative integer"),
])
def test_malformed_minari_metadata_is_one_line_and_leaves_no_dataset(minari_dir, tmp_path, capsys, change, message):
    edit_metadata(minari_dir, **change)
    out = tmp_path / "o"
    assert main(["data", "import", "--format", "minari", str(minari_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and validate_directory(out)


def test_minari_metadata_that_is_not_json(minari_dir, tmp_path, capsys):
    (minari_dir / "data" / "metadata.json").write_text("{not json")
    assert main(["data", "import", "--format", "minari", str(minari_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "metadata.json: not valid JSON" in err and len(err.splitlines()) == 1


def test_minari_external_link_is_refused(minari_dir, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(5, np.float32))
    with h5py.File(minari_dir / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/rewards"]
        f["episode_1/rewards"] = h5py.ExternalLink(str(other), "/x")
    with pytest.raises(DatasetError, match="'/episode_1/rewards' is an external link"):
        from coworld.data.interop import import_minari

        import_minari(minari_dir, tmp_path / "o")


def test_minari_export_to_a_relative_out(tmp_path, monkeypatch):
    make_dataset(tmp_path / "src", episodes=2, T=5)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning):  # the test episodes have a non-zero reward at entry 0
        assert main(["data", "export", "--format", "minari", "src", "--out", "rel/out"]) == 0
    assert minari.MinariDataset(tmp_path / "rel" / "out" / "data").total_episodes == 2
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["out"]
