import json

import imageio.v2 as imageio
import numpy as np
import pytest

from coworld.errors import UserError
from coworld.eval import report


def seed(s, returns, over, wall):
    return {"seed": s, "returns": returns, "overestimation": over, "wall_s": wall}


def rows(table):
    return {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}


def test_results_table_hand_computed():
    table = report.results_table({
        # seed means 2 and 6: IQM = mean = 4; bootstrap over 2 seeds -> interval [2, 6];
        # overestimation 1, 3 -> 2 [1, 3]; wall 60, 120 s -> 90 s
        "CoWorld": [seed(0, [1.0, 3.0], 1.0, 60.0), seed(1, [5.0, 7.0], 3.0, 120.0)],
        # seed means 10 and 0 -> 5 [0, 10]; 3 and 2 episodes; one seed without overestimation
        "DV2 Finetune": [seed(0, [10.0, 10.0, 10.0], 4.0, 7200.0), seed(1, [0.0, 0.0], None, 7200.0)],
        "Offline DV2": [seed(0, [2.5], None, 600.0)],
    })
    r = rows(table)
    assert r["method"] == ["method", "IQM [95% CI]", "mean [95% CI]", "seeds", "episodes / eval",
                           "value overestimation [95% CI]", "wall time / seed"]
    assert r["CoWorld"][1:] == ["4.0 [2.0, 6.0]", "4.0 [2.0, 6.0]", "2", "2", "2.0 [1.0, 3.0]", "90 s"]
    assert r["DV2 Finetune"][1:] == ["5.0 [0.0, 10.0]", "5.0 [0.0, 10.0]", "2", "2-3", "4.0 [4.0, 4.0] (1 seeds)",
                                     "2.00 h"]
    assert r["Offline DV2"][1:] == ["2.5 [2.5, 2.5]", "2.5 [2.5, 2.5]", "1", "1", "n/a", "10.0 min"]
    assert "bootstrap over seeds" in table


def test_aggregate_reading_and_results_json():
    high = [seed(i, [10.0 + i, 12.0 + i], 0.5, 1.0) for i in range(5)]
    low = [seed(i, [1.0 + i, 0.0], 2.0, 1.0) for i in range(5)]
    same = [seed(i, [10.0 + i, 12.0 + i], None, 1.0) for i in range(5)]
    results = {"CoWorld": high, "Offline DV2": low, "Twin": same}
    agg = report.aggregate(results, reps=500, focus="CoWorld")
    assert agg["improvement"]["Offline DV2"] == {"value": 1.0, "ci": [1.0, 1.0]}
    assert agg["improvement"]["Twin"]["value"] == 0.5
    lines = report.reading(agg, "CoWorld", {"random": 5.0})
    assert lines[0].endswith("CoWorld improves on Offline DV2.")
    assert "no difference between CoWorld and Twin is supported" in lines[1]
    assert lines[2] == "random return 5.0: mean interval above it: CoWorld, Twin; below it: Offline DV2."
    # with two seeds a method can win every resample, and still nothing is claimed
    two = report.aggregate({"CoWorld": high[:2], "Offline DV2": low[:2]}, reps=200, focus="CoWorld")
    assert two["improvement"]["Offline DV2"]["ci"] == [1.0, 1.0]
    assert report.reading(two, "CoWorld")[0].endswith("nothing is claimed with 2 seeds (fewer than 3).")
    out = report.results_json(results, agg, {"random": 5.0})
    assert out["runs"]["CoWorld"][0]["returns"] == [10.0, 12.0] and out["runs"]["CoWorld"][0]["score"] == 11.0
    assert json.loads(json.dumps(out))["references"] == {"random": 5.0}


def test_results_table_refuses_missing_data():
    with pytest.raises(UserError, match="no seeds"):
        report.results_table({"A": []})
    with pytest.raises(UserError, match="final-evaluation returns"):
        report.results_table({"A": [seed(0, [], None, 1.0)]})


def write_run(run_dir, records, seed_value=0, algo="coworld"):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "run.json").write_text(json.dumps({"algo": algo, "seed": seed_value}))
    return run_dir


def test_run_result_reads_final_evaluation(tmp_path):
    run = write_run(tmp_path / "r", [
        {"step": 0, "time": 100.0, "target/model/loss": 3.0},
        {"step": 10, "time": 130.0, "target_eval/return": 1.0, "target_eval/overestimation": 5.0},
        {"step": 10, "time": 130.0, "target_eval/returns": [0.0, 2.0], "target_eval/episodes": 2},
        {"step": 20, "time": 160.5, "target_eval/return": 4.0, "target_eval/overestimation": 2.5},
        {"step": 20, "time": 160.5, "target_eval/returns": [3.0, 5.0], "target_eval/episodes": 2},
        {"step": 20, "time": 160.5, "eval/returns": [99.0]},
    ], seed_value=7)
    assert report.run_result(run) == {"seed": 7, "returns": [3.0, 5.0], "overestimation": 2.5, "wall_s": 60.5}
    assert report.run_result(run, tag="eval")["returns"] == [99.0]


def curve_run(path, points, value=None):
    records = [{"step": s, "time": 0.0, "eval/return": v} for s, v in points]
    for s, est, true in value or []:
        records.append({"step": s, "time": 0.0, "eval/value_estimate": est, "eval/true_return": true})
    return write_run(path, records, algo="dreamer")


def test_over_seeds_mean_std_per_step():
    curves = [(np.array([0.0, 10.0]), np.array([1.0, 3.0])), (np.array([0.0, 10.0, 20.0]), np.array([3.0, 5.0, 7.0]))]
    steps, mean, std = report._over_seeds(curves)
    np.testing.assert_array_equal(steps, [0, 10, 20])
    np.testing.assert_allclose(mean, [2, 4, 7])
    np.testing.assert_allclose(std, [1, 1, 0])


def test_plot_comparison_files(tmp_path):
    a = [curve_run(tmp_path / f"a{i}", [(0, i), (10, 2 * i)]) for i in range(2)]
    b = [curve_run(tmp_path / "b0", [(0, 1.0), (10, 1.5)], value=[(10, 9.0, 4.0)])]
    with_value = report.plot_comparison({"A": a, "B": b}, tmp_path / "out" / "cmp.png",
                                        references={"random": 1.0, "expert": 9.0})
    without = report.plot_comparison({"A": a}, tmp_path / "cmp_a.png")
    wide, narrow = imageio.imread(with_value), imageio.imread(without)
    assert wide.shape[1] == 2 * narrow.shape[1]  # the value panel only when a run logged values
    with pytest.raises(UserError, match="target_eval/return"):
        report.plot_comparison({"A": a}, tmp_path / "x.png", key="target_eval/return")
