"""The embedded default job, at a very small budget: it runs every method, tabulates and plots."""

import pytest

from coworld.cli import main


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COWORLD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seeds", "2", "--episodes", "3", "--source-steps", "150",
            "--methods", "CoWorld,Offline DV2,DV2 Finetune"]
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
