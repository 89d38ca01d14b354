"""scripts/coworld_probe.py: its rank correlation and returns on hand values, and a probe of a small CoWorld run."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from coworld.cli import main
from tests.run.test_cotrain import coworld_args, small_sets

spec = importlib.util.spec_from_file_location("coworld_probe", Path(__file__).parents[1] / "scripts" / "coworld_probe.py")
coworld_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coworld_probe)


def test_ranks_share_ties_and_spearman_hand_values():
    assert coworld_probe.rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert coworld_probe.spearman(x, x ** 3) == pytest.approx(1.0)  # monotone: 1 whatever the scale
    assert coworld_probe.spearman(x, -x) == pytest.approx(-1.0)
    # ranks 0 1 2 3 against 1 0 3 2: centred (-1.5 -.5 .5 1.5) . (-.5 -1.5 1.5 .5) / 5 = 3 / 5
    assert coworld_probe.spearman(x, np.array([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6)
    assert coworld_probe.spearman(x, np.ones(4)) == 0.0


def test_returns_after_each_state_hand_values():
    # reward[t] arrives with state t: after state 0 come rewards 1 (t=1) and 2 (t=2)
    out = coworld_probe.returns_after(np.array([5.0, 1.0, 2.0]), gamma=0.5)
    assert out.tolist() == [1.0 + 0.5 * 2.0, 2.0, 0.0]


def test_summary_over_runs_hand_values():
    rows = [{"run": "a", "states": 10, "x": 1.0, "align_loss_first_last": [4.0, 1.0], "none": None},
            {"run": "b", "states": 10, "x": 3.0, "align_loss_first_last": [2.0, 0.0], "none": None}]
    out = coworld_probe.summary(rows)
    assert set(out) == {"states", "x", "align_loss_first", "align_loss_last"}
    assert out["x"][0] == 2.0 and 1.0 <= out["x"][1] <= 2.0 <= out["x"][2] <= 3.0
    assert out["align_loss_first"][0] == 3.0 and out["align_loss_last"][0] == 0.5
    assert out["states"] == [10.0, 10.0, 10.0]


@pytest.mark.slow
def test_probe_reads_a_small_coworld_run(tmp_path, target_data, capsys):
    logdir = tmp_path / "cw"
    assert main(["train", *coworld_args(target_data), "--steps", "120", "--logdir", str(logdir),
                 "--no-progress", *small_sets()]) == 0
    capsys.readouterr()
    assert coworld_probe.main([str(logdir)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the conftest dataset: 4 episodes of 15 steps + the first frame: 8 states in each first half
    assert row["states"] == 4 * 8 and row["source_env"] == "builtin:reach-src"
    assert -1 <= row["spearman_source_critic"] <= 1 and 0 <= row["share_target_above_source"] <= 1
    assert row["align_loss_first_last"] is not None and row["source_return_last"] is not None
    # a directory that is not a CoWorld run is refused with a message, not a traceback
    assert coworld_probe.main([str(tmp_path)]) == 2
