"""The embedded default job, at a very small budget: it runs every method, tabulates and plots."""

import pytest

from coworld.cli import main


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seeds", "2", "--episodes", "3", "--source-steps", "150",
            "--methods", "CoWorld,Offline DV2,DV2 Finetune", "--parallel", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for method in ("CoWorld", "Offline DV2", "DV2 Finetune"):
        assert f"| {method} |" in text
    assert "| 2 | 10 |" in text  # seeds, episodes per evaluation
    assert (out / "comparison.png").stat().st_size > 0 and (out / "results.md").exists()
    assert "Reference returns: random" in text and "P(CoWorld > Offline DV2) = " in text
    import json

    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]["CoWorld"]) == 2 and len(saved["runs"]["CoWorld"][0]["returns"]) == 10
    assert {"random", "dataset", "expert"} <= saved["references"].keys()
    assert set(saved["aggregates"]["improvement"]) == {"Offline DV2", "DV2 Finetune"}
    # a second call reuses the finished runs and the cached dataset
    assert main(args) == 0
    assert "making the target dataset" not in capsys.readouterr().out


def test_demo_progress_line_gives_share_and_eta(monkeypatch):
    from coworld.eval import demo

    monkeypatch.setattr(demo.time, "time", lambda: 1000.0)
    running = [{"start": 900.0, "cost": 100}]
    assert demo._progress(0, 6, running, [], [], 2) == "done 0/6 (0%), running 1; ETA after the first run ends"
    # 2 done: 600 s for 200 units of cost (3 s each); running: cost 100 for 100 s (200 s left) and cost 200
    # for 400 s (200 s left); pending: cost 200 (600 s); 1,000 s at 2 runs at a time: ~8 min
    running = [{"start": 900.0, "cost": 100}, {"start": 600.0, "cost": 200}]
    pending = [{"cost": 100}, {"cost": 100}]
    assert demo._progress(2, 6, running, pending, [(200.0, 100), (400.0, 100)], 2) == \
        "done 2/6 (33%), running 2; ETA ~8 min"


def test_demo_starts_the_longest_runs_first(tmp_path, monkeypatch):
    """Co-training runs (target and source updates) start before offline ones, seed-major within a
    cost, and a finished run is not started again."""
    from coworld.eval import demo

    todo = demo.jobs(tmp_path, tmp_path / "data", 2, 600, 300, "tiny", ["Offline DV2", "CoWorld", "DV2 Finetune"])
    cost = {j["method"]: j["cost"] for j in todo}
    assert cost == {"Offline DV2": 300, "CoWorld": 300 + 600 // 5, "DV2 Finetune": 300 + 600 // 5}
    (tmp_path / "coworld" / "seed1").mkdir(parents=True)
    (tmp_path / "coworld" / "seed1" / "done.json").write_text("{}")
    started = []

    class Proc:
        def __init__(self, cmd, **kw):
            started.append(next((j["method"], j["seed"]) for j in todo if j["cmd"] == cmd))

        def poll(self):
            return 0

    monkeypatch.setattr(demo.subprocess, "Popen", Proc)
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    demo.run_jobs(todo, 1)
    assert started == [("CoWorld", 0), ("DV2 Finetune", 0), ("DV2 Finetune", 1), ("Offline DV2", 0),
                       ("Offline DV2", 1)]
