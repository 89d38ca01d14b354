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
    assert demo._progress(0, 6, [{"start": 900.0}], [], 2) == "done 0/6 (0%), running 1; ETA after the first run ends"
    # 2 done (mean 300 s), 2 running for 100 s and 400 s (200 s and 0 s left), 2 pending (600 s): 800 s / 2 runs at a time
    running = [{"start": 900.0}, {"start": 600.0}]
    assert demo._progress(2, 6, running, [200.0, 400.0], 2) == \
        "done 2/6 (33%), running 2; ETA ~7 min (mean run 5.0 min)"
