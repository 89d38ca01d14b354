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


def test_discount_outside_unit_interval(episode):
    ep = episode(3)
    ep["discount"][2] = 7.0
    assert "outside [0, 1]" in only(validate_episode(ep), "discount").message
    ep["discount"][2] = -0.5
    assert "outside [0, 1]" in only(validate_episode(ep), "discount").message


def test_inconsistent_first_last_terminal_flags(episode):
    ep = episode(4)
    ep["is_first"][2] = True
    assert "entry 2" in only(validate_episode(ep), "is_first").message
    ep = episode(4)
    ep["is_first"][0] = False
    assert "entry 0" in only(validate_episode(ep), "is_first").message
    ep = episode(4)
    ep["is_last"][-1], ep["is_last"][1] = False, True
    problems = validate_episode(ep)
    assert [p.key for p in problems] == ["is_last", "is_last"]
    assert "final entry (4)" in problems[0].message and "entry 1" in problems[1].message
    ep = episode(4)
    ep["is_terminal"][2] = True
    assert "entry 2" in only(validate_episode(ep), "is_terminal").message
    ep = episode(4)
    ep["is_terminal"][-1], ep["discount"][-1] = True, 0.0  # a terminal final entry is fine
    assert validate_episode(ep) == []


@pytest.mark.parametrize("key", ["reward", "image", "is_first"])
def test_raw_bytes_member_is_a_problem_line(tmp_path, episode, key):
    import zipfile

    path = save_episode(tmp_path, episode(3), name="a.npz")
    with zipfile.ZipFile(path, "a") as z:  # a member that is not in .npy format replaces the array
        z.writestr(key, b"\x00\x01raw bytes, not an array")
    with zipfile.ZipFile(path) as z:
        kept = {n: z.read(n) for n in z.namelist() if n != f"{key}.npy"}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in kept.items():
            z.writestr(name, data)
    p = only(validate_episode(path), "-")
    assert f"'{key}' is raw bytes" in p.message
    assert "raw bytes" in only(validate_directory(tmp_path), "-").message


def test_zero_dim_bytes_member_is_a_problem_line(tmp_path, episode):
    ep = episode(3)
    ep["reward"] = np.array(b"rawbytes")
    np.savez(tmp_path / "a.npz", **ep)
    problems = validate_episode(tmp_path / "a.npz")
    assert problems and all(p.key == "reward" for p in problems)


@pytest.mark.parametrize("name", ["/etc/passwd", "/dev/zero", "../outside.npz", "sub/x.npz", "..", "notes.txt"])
def test_sidecar_names_must_be_bare_and_are_never_opened(dataset, monkeypatch, name):
    import json

    (dataset.parent / "outside.npz").write_bytes(b"secret")
    side = json.loads((dataset / "dataset.json").read_text())
    side["files"][name] = {"sha256": "0" * 64, "length": 3}
    (dataset / "dataset.json").write_text(json.dumps(side))
    opened = []
    real = __import__("coworld.data.validate", fromlist=["x"]).sha256_file

    def guarded(path):
        opened.append(str(path))
        assert path.parent == dataset, f"opened {path} outside the dataset"
        return real(path)

    monkeypatch.setattr("coworld.data.validate.sha256_file", guarded)
    p = only(validate_directory(dataset), "files")
    assert p.file.endswith("dataset.json") and repr(name) in p.message
    assert "bare file name" in p.message or "end in .npz" in p.message
    assert len(opened) == 4


def test_listed_special_file_is_not_read(dataset, monkeypatch):
    import json
    import os

    real = __import__("coworld.data.validate", fromlist=["x"]).sha256_file
    monkeypatch.setattr("coworld.data.validate.sha256_file",
                        lambda path: pytest.fail("opened the fifo") if path.name == "fifo.npz" else real(path))
    os.mkfifo(dataset / "fifo.npz")  # reading it would block forever
    side = json.loads((dataset / "dataset.json").read_text())
    side["files"]["fifo.npz"] = {"sha256": "0" * 64, "length": 3}
    (dataset / "dataset.json").write_text(json.dumps(side))
    assert "not a regular file" in only(validate_directory(dataset), "-").message


def test_validate_cli_prints_problem_lines(dataset, capsys):
    import json
    from types import SimpleNamespace

    from coworld.data.commands import run_validate

    side = json.loads((dataset / "dataset.json").read_text())
    side["files"]["/etc/passwd"] = {"sha256": "0" * 64, "length": 3}
    (dataset / "dataset.json").write_text(json.dumps(side))
    assert run_validate(SimpleNamespace(dir=str(dataset))) == 1
    out = capsys.readouterr().out
    assert "dataset.json: files: '/etc/passwd': an episode name must be a bare file name" in out
