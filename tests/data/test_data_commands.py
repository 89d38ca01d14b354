import numpy as np

from coworld.cli import main
from coworld.data import make as make_mod
from coworld.data.episodes import save_episode


def test_make_then_info_then_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(make_mod, "CALIBRATION_EPISODES", 2)
    monkeypatch.setattr(make_mod, "CALIBRATION_STEPS", 2)
    out = tmp_path / "ds"
    code = main(["data", "make", "--env", "builtin:reach", "--level", "medium", "--episodes", "3",
                 "--out", str(out), "--seed", "1", "--time-limit", "8"])
    assert code == 0
    assert "wrote 3 episodes (24 steps)" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "episodes   3  steps 24" in text and "builtin:reach" in text and "action dim 2" in text
    assert "(9, 64, 64, 3)" in text and '"level": "medium"' in text
    assert main(["data", "validate", str(out)]) == 0
    assert "no problems" in capsys.readouterr().out


def test_info_return_stats(dataset, capsys):
    assert main(["data", "info", "--json", str(dataset)]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    # episode i has T = 6 + i and rewards 100 i + t for t = 1..T
    returns = [sum(100 * i + t for t in range(1, 7 + i)) for i in range(4)]
    assert info["episodes"] == 4 and info["steps"] == 30
    assert np.isclose(info["return"]["mean"], np.mean(returns)) and np.isclose(info["return"]["std"], np.std(returns))
    assert info["return"]["min"] == min(returns) and info["return"]["max"] == max(returns)


def test_validate_reports_each_problem_and_exits_1(dataset, episode, capsys):
    bad = episode(4)
    bad["reward"][2] = np.nan
    save_episode(dataset, bad, name="bad.npz")
    assert main(["data", "validate", str(dataset)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("bad.npz: reward: contains NaN" in line for line in lines)
    assert any("bad.npz: -: not listed in dataset.json" in line for line in lines)
    assert lines[-1].startswith("2 problem(s)")


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coworld: error:") and "not a directory" in err and "Traceback" not in err
    assert main(["data", "validate", str(tmp_path)]) == 1
    assert "no episode files" in capsys.readouterr().out
