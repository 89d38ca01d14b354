import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from coworld.errors import UserError
from coworld.run import plots


def write_run(run_dir, records, run=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if run is not None:
        (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


def dreamer_records():
    out = []
    for step in (100, 200, 300):
        out.append({"step": step, "time": 1.0, "train/model/loss": 50.0 - step / 10, "train/critic/loss": 0.5})
        out.append({"step": step, "time": 1.0, "eval/return": step / 10, "eval/return_std": 2.0})
        out.append({"step": step, "time": 1.0, "eval/returns": [step / 10 - 2, step / 10 + 2], "eval/episodes": 2})
    return out


def coworld_records():
    out = []
    for step in (10, 20, 30):
        out.append({"step": step, "time": 2.0, "coworld/domain_kl/source0": 0.3, "coworld/domain_kl/source1": 0.1,
                    "coworld/selected_source": 1})
        out.append({"step": step, "time": 2.0, "source1/coworld/eta": 1 - step / 100, "source1/model/loss": 9.0})
        out.append({"step": step, "time": 2.0, "source0/episode/return": 5.0, "source0/episode/length": 50})
        out.append({"step": step, "time": 2.0, "target_eval/return": 3.0, "target_eval/return_std": 1.0,
                    "target_eval/success": 0.5, "target_eval/value_estimate": 8.0, "target_eval/true_return": 6.0,
                    "target/coworld/align_loss": 0.2, "target/coworld/value_constraint": 0.01})
    return out


def drawn(records):
    return {p.__name__ for p in plots.PANELS if p(Figure().add_subplot(), records)}


def test_read_metrics_skips_half_written_last_line(tmp_path):
    run = write_run(tmp_path / "r", dreamer_records())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 400, "eval/ret')
    records = plots.read_metrics(run)
    assert len(records) == 9 and records[-1]["eval/episodes"] == 2


def test_read_metrics_errors(tmp_path):
    with pytest.raises(UserError, match="run directory"):
        plots.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 1"):
        plots.read_metrics(tmp_path)


def test_series_keeps_numbers_only():
    steps, values = plots.series(dreamer_records(), "eval/return")
    np.testing.assert_array_equal(steps, [100, 200, 300])
    np.testing.assert_array_equal(values, [10, 20, 30])
    assert len(plots.series(dreamer_records(), "eval/returns")[0]) == 0  # lists are not a series
    assert plots.eval_tag(dreamer_records()) == "eval"
    assert plots.eval_tag(coworld_records()) == "target_eval"


def test_panels_follow_the_keys_present():
    assert drawn(dreamer_records()) == {"panel_return", "panel_losses"}
    assert drawn(coworld_records()) == {"panel_return", "panel_success", "panel_value", "panel_domain_kl",
                                        "panel_eta", "panel_episodes", "panel_losses"}
    assert drawn([{"step": 1, "time": 0.0}]) == set()


def test_selected_source_marked_on_its_kl_curve():
    ax = Figure().add_subplot()
    plots.panel_domain_kl(ax, coworld_records())
    (marks,) = ax.collections
    np.testing.assert_allclose(marks.get_offsets(), [[10, 0.1], [20, 0.1], [30, 0.1]])


@pytest.mark.parametrize("records", [dreamer_records(), coworld_records(), []])
def test_plot_run_writes_png(tmp_path, records):
    run = write_run(tmp_path / "run", records, {"algo": "coworld", "target_env": "builtin:reach", "seed": 1})
    out = plots.plot_run(run)
    assert out == run / "plots" / "summary.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
