"""`coworld report`: the statistics of a sweep directory against hand-computed values, the files the
command writes, and the alignment picture's encoders (on a hand-built checkpoint)."""

import csv
import json
import re

import numpy as np
import pytest

from coworld.cli import main
from coworld.errors import UserError
from coworld.eval import sweep_report as sr

# Final-evaluation episode returns per (method, task) and seed. Episode counts differ between
# seeds so that averaging within a seed first (3.0 for CoWorld on A) differs from pooling the
# episodes ((0 + 0 + 0 + 6 + 3 + 4 + 5) / 7 = 18 / 7).
FINAL = {
    ("CoWorld", "A"): [[0, 0, 0, 6], [3], [4, 5]],  # seed scores 1.5, 3, 4.5 -> 3
    ("CoWorld", "B"): [[10, 20], [12], [9, 9, 9]],  # 15, 12, 9 -> 12
    ("Offline DV2", "A"): [[1], [1, 1], [1]],  # 1, 1, 1 -> 1
    ("Offline DV2", "B"): [[10], [12], [14]],  # 10, 12, 14 -> 12
}
PAIRS = {"A": ("builtin:reach-src", "builtin:reach"), "B": ("builtin:push-src", "builtin:push")}
ALGO = {"CoWorld": "coworld", "Offline DV2": "offline-dv2"}


def write_trial(root, tid, method, task, seed, evals, done=True, over=None, **extra):
    """A trial file and a run directory whose metrics.jsonl has the records a real run writes per
    evaluation (the scalars, then the per-episode returns, at the same step)."""
    source, target = PAIRS.get(task, (None, None))
    info = {"id": tid, "experiment": "fixture", "method": method, "algo": ALGO.get(method, "offline-dv2"),
            "task": task, "source": [source] if method == "CoWorld" and source else None, "target": target,
            "dataset": None, "seed": seed, "preset": "tiny", "overrides": [], "ablations": {}, "steps": 100,
            "resources": {"cpus": 1, "gpus": 0}, **extra}
    (root / "trials").mkdir(parents=True, exist_ok=True)
    (root / "trials" / f"{tid}.json").write_text(json.dumps(info))
    run = root / "runs" / tid
    run.mkdir(parents=True)
    tag = "target_eval" if method == "CoWorld" else "eval"
    lines = [{"step": 0, "time": 1000.0, "train/model/loss": 1.0}]
    for i, returns in enumerate(evals):
        step = 50 * (i + 1)
        scalars = {"step": step, "time": 1000.0 + step, f"{tag}/return": float(np.mean(returns))}
        if over is not None:
            scalars.update({f"{tag}/value_estimate": over[i] + 1.0, f"{tag}/true_return": 1.0,
                            f"{tag}/overestimation": over[i]})
        lines += [scalars, {"step": step, "time": 1000.0 + step, f"{tag}/returns": returns,
                            f"{tag}/episodes": len(returns)}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "run.json").write_text(json.dumps({"algo": info["algo"], "seed": seed}))
    if done:
        (run / "done.json").write_text(json.dumps({"wall_s": 123.0}))
    return info


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    trials = []
    for (method, task), seeds in FINAL.items():
        for seed, final in enumerate(seeds):
            tid = f"{method.lower().replace(' ', '-')}-{task}-s{seed}"
            # an earlier evaluation with other returns: only the last one is the final evaluation
            over = [5.0, 2.0 + seed] if method == "CoWorld" else None
            trials.append(write_trial(root, tid, method, task, seed, [[100.0, 100.0], final], over=over))
    # an unfinished trial (no done.json, no checkpoint) with one evaluation, and one never started
    trials.append(write_trial(root, "coworld-A-s3", "CoWorld", "A", 3, [[1000.0]], done=False))
    trials.append({"id": "coworld-A-s4", "method": "CoWorld", "task": "A", "seed": 4, "algo": "coworld"})
    (root / "sweep.json").write_text(json.dumps({"experiment": "fixture", "file": "x.toml", "trials": trials}))
    return root


def test_cells_average_within_seed_first_and_hand_values(sweep):
    s = sr.load_sweep(sweep)
    status = {t.id: t.status for t in s.trials}
    assert status["coworld-A-s3"] == "unfinished" and status["coworld-A-s4"] == "missing"
    scores = sr.final_scores(s)[""]
    assert scores["CoWorld"]["A"] == [1.5, 3.0, 4.5]  # the unfinished seed is not counted
    table = sr.cells(scores, reps=500)
    assert table["CoWorld"]["A"]["value"] == pytest.approx(3.0)  # not the pooled 18 / 7
    assert table["CoWorld"]["B"]["value"] == pytest.approx(12.0)
    assert table["Offline DV2"]["A"]["value"] == pytest.approx(1.0)
    assert table["Offline DV2"]["A"]["ci"] == pytest.approx([1.0, 1.0])  # every resample is 1
    assert table["CoWorld"]["__mean__"]["value"] == pytest.approx(7.5)  # (3 + 12) / 2
    assert table["Offline DV2"]["__mean__"]["value"] == pytest.approx(6.5)  # (1 + 12) / 2
    # IQM of the six pooled (seed, task) scores trims one from each end:
    # CoWorld 1.5 [3 4.5 9 12] 15 -> 7.125; Offline DV2 1 [1 1 10 12] 14 -> 6
    assert table["CoWorld"]["__iqm__"]["value"] == pytest.approx(7.125)
    assert table["Offline DV2"]["__iqm__"]["value"] == pytest.approx(6.0)
    lo, hi = table["CoWorld"]["A"]["ci"]
    assert 1.5 <= lo < 3.0 < hi <= 4.5  # a bootstrap of the seed means stays within the seeds' range
    # with --partial the unfinished seed's latest evaluation (1000) counts
    assert sr.final_scores(s, partial=True)[""]["CoWorld"]["A"] == [1.5, 3.0, 4.5, 1000.0]


def test_probability_of_improvement_hand_value(sweep):
    scores = sr.final_scores(sr.load_sweep(sweep))[""]
    imp = sr.improvements(scores, "CoWorld", reps=500)
    # task A: every CoWorld seed beats every Offline DV2 seed (1); task B: 15 beats 10, 12, 14 (3),
    # 12 beats 10 and ties 12 (1.5), 9 beats none (0): 4.5 / 9 = 0.5; average 0.75
    assert imp["Offline DV2"]["value"] == pytest.approx(0.75)
    assert imp["Offline DV2"]["tasks"] == 2
    lo, hi = imp["Offline DV2"]["ci"]
    assert lo <= 0.75 <= hi


def test_bold_only_where_intervals_separate(sweep):
    scores = sr.final_scores(sr.load_sweep(sweep))[""]
    layout = sr.paper_table(sr.cells(scores, reps=500), ["A", "B"])
    bold = {m: [b for _, _, b in row] for m, row in layout["rows"]}
    # column A: CoWorld's interval (within [1.5, 4.5]) lies above Offline DV2's [1, 1]; column B overlaps
    assert bold["CoWorld"][0] and not bold["Offline DV2"][0]
    assert not bold["CoWorld"][1] and not bold["Offline DV2"][1]
    assert layout["seeds"] == 3
    assert sr.supported_best({"x": {"value": 2.0, "ci": [1.0, 3.0], "seeds": 3},
                              "y": {"value": 1.0, "ci": [0.0, 1.5], "seeds": 3}}) is None
    assert sr.supported_best({"x": {"value": 2.0, "ci": [2.0, 2.0], "seeds": 1},
                              "y": {"value": 1.0, "ci": [1.0, 1.0], "seeds": 3}}) is None  # one seed: no claim
    separated = {"x": {"value": 5.0, "ci": [4.0, 6.0], "seeds": 3}, "y": {"value": 1.0, "ci": [0.0, 2.0], "seeds": 3}}
    assert sr.supported_best(separated) == "x"
    assert sr.supported_best(separated, higher=False) == "y"  # lower is better: y, whose interval is below
    assert sr.supported_best({**separated, "y": {**separated["y"], "seeds": 2}}) is None  # two seeds: no claim
    # an average over tasks needs MIN_SEEDS in every task, not on average: 5 + 1 seeds over 2 tasks is no claim
    uneven = sr.cells({"x": {"A": [10.0, 11, 12, 13, 14], "B": [10.0]}, "y": {"A": [0.0, 1, 2, 1, 0], "B": [0.0]}},
                      reps=200)
    assert uneven["x"]["__mean__"]["min_seeds"] == 1 and uneven["x"]["__mean__"]["seeds"] == 6
    assert uneven["x"]["__mean__"]["ci"][0] > uneven["y"]["__mean__"]["ci"][1]  # separated, yet:
    assert sr.supported_best({m: row["__mean__"] for m, row in uneven.items()}) is None
    assert sr.supported_best({m: row["A"] for m, row in uneven.items()}) == "x"  # task A alone has 5 seeds each


def _matrices(sweep):
    scores = sr.final_scores(sr.load_sweep(sweep))[""]
    return scores, {m: np.array([scores[m]["A"], scores[m]["B"]]).T for m in scores}  # (seeds, tasks)


def test_point_estimates_agree_with_rliable(sweep):
    pytest.importorskip("rliable")
    from rliable import metrics

    scores, matrices = _matrices(sweep)
    table = sr.cells(scores, reps=100)
    for method, matrix in matrices.items():
        assert table[method]["__mean__"]["value"] == pytest.approx(metrics.aggregate_mean(matrix))
        assert table[method]["__iqm__"]["value"] == pytest.approx(metrics.aggregate_iqm(matrix))
    assert sr.improvements(scores, "CoWorld", reps=100)["Offline DV2"]["value"] == pytest.approx(
        metrics.probability_of_improvement(matrices["CoWorld"], matrices["Offline DV2"]))


def _independent_intervals(matrix, reps, rng):
    """Stratified bootstrap written out here: seeds resampled within each task (column)."""
    n, k = matrix.shape
    idx = rng.integers(0, n, (reps, n, k))
    boot = np.take_along_axis(np.broadcast_to(matrix, (reps, n, k)), idx, axis=1)
    means = boot.mean(axis=1).mean(axis=1)
    pooled = np.sort(boot.reshape(reps, -1), axis=1)
    cut = int(0.25 * n * k)
    iqms = pooled[:, cut:n * k - cut].mean(axis=1)
    return {"__mean__": np.quantile(means, [0.025, 0.975]), "__iqm__": np.quantile(iqms, [0.025, 0.975])}


def test_intervals_agree_with_an_independent_bootstrap_and_rliable(sweep):
    scores, matrices = _matrices(sweep)
    table = sr.cells(scores, reps=4000)
    try:  # rliable's intervals need the `arch` package, whose import fails with some pandas versions
        from rliable import library, metrics
    except Exception:  # noqa: BLE001
        library = None
    for method, matrix in matrices.items():
        # same stratified bootstrap, other random streams: the percentile intervals agree closely
        tolerance = 0.08 * np.ptp(matrix)
        other = _independent_intervals(matrix, 4000, np.random.default_rng(1))
        for key in ("__mean__", "__iqm__"):
            assert table[method][key]["ci"] == pytest.approx(other[key], abs=tolerance)
        if library is not None:
            _, cis = library.get_interval_estimates(
                {method: matrix}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
                reps=4000)
            for i, key in enumerate(("__mean__", "__iqm__")):
                assert table[method][key]["ci"] == pytest.approx(cis[method][:, i], abs=tolerance)


def test_long_table_rows(sweep, tmp_path):
    s = sr.load_sweep(sweep)
    rows = sr.long_rows(s)
    out = tmp_path / "o"
    out.mkdir()
    sr.write_long_table(rows, out)
    with open(out / "results.csv") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == sr.COLUMNS
    # 12 finished trials: 2 episodes of the first evaluation + the final episodes; +1 unfinished, +1 missing
    finals = sum(len(e) for seeds in FINAL.values() for e in seeds)
    assert len(read) == 12 * 2 + finals + 1 + 1
    row = next(r for r in read if r["trial"] == "coworld-A-s0" and r["final"] == "True" and r["episode"] == "3")
    assert (row["return"], row["step"], row["progress"], row["eval_index"]) == ("6.0", "100", "1.0", "1")
    assert (row["overestimation"], row["value_estimate"], row["wall_s"]) == ("2.0", "3.0", "123.0")
    assert row["source"] == "builtin:reach-src" and row["target"] == "builtin:reach"
    missing = [r for r in read if r["trial"] == "coworld-A-s4"]
    assert missing[0]["status"] == "missing" and missing[0]["return"] == ""


def test_transfer_grid_hand_values(sweep):
    grid = sr.transfer_grid(sr.load_sweep(sweep), "CoWorld", "Offline DV2", partial=False, reps=500)[""]
    assert grid[("builtin:reach-src", "builtin:reach")]["value"] == pytest.approx(3.0 - 1.0)
    assert grid[("builtin:push-src", "builtin:push")]["value"] == pytest.approx(12.0 - 12.0)
    assert grid[("builtin:reach-src", "builtin:reach")]["seeds"] == [3, 3]
    # the heatmap's star: the interval excludes 0 and both methods have at least MIN_SEEDS seeds
    assert sr.transfer_mark({"ci": [0.5, 3.0], "seeds": [3, 3]}) == "*"
    assert sr.transfer_mark({"ci": [-3.0, -0.5], "seeds": [3, 4]}) == "*"
    assert sr.transfer_mark({"ci": [-0.5, 3.0], "seeds": [3, 3]}) == ""
    assert sr.transfer_mark({"ci": [0.5, 3.0], "seeds": [2, 3]}) == ""  # two seeds: no claim


def cells_of_markdown(line):
    return [c for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_cli_writes_every_file_and_tables_parse(sweep, capsys):
    assert main(["report", str(sweep), "--reps", "200", "--alignment-trials", "0"]) == 0
    out = sweep / "report"
    for name in ("results.csv", "table.md", "table.tex", "report.md", "summary.json", "improvement.png",
                 "curves.png", "overestimation.png", "transfer.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "table.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| method")]
    assert table, md
    block = md[md.index(table[0]):].split("\n\n")[0].splitlines()
    widths = {len(cells_of_markdown(line)) for line in block}
    assert widths == {1 + 2 + 2} and len(block) == 2 + 2  # method, A, B, two averages; header, rule, 2 rows
    assert "**3.0**" in md  # CoWorld on A, the only supported best
    assert "3 seeds per cell" in md and "1-4 episodes per evaluation" in md
    tex = (out / "table.tex").read_text()
    tabular = tex[tex.index(r"\begin{tabular}{lrrrr}"):tex.index(r"\end{tabular}")]
    rows = [line for line in tabular.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 3 and all(len(re.split(r"(?<!\\)&", r)) == 5 for r in rows)
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 2 and r"\toprule" in tex
    report = (out / "report.md").read_text()
    assert "`coworld-A-s3`" in report and "`coworld-A-s4`" in report  # unfinished and missing are named
    assert "P(X > Y)" in report and "0.75" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][""]["cells"]["CoWorld"]["Average (mean)"]["value"] == pytest.approx(7.5)
    assert "no alignment picture" not in capsys.readouterr().out


def test_not_a_sweep_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="not a sweep directory"):
        sr.load_sweep(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "coworld sweep" in err


def test_groups_get_their_own_tables(tmp_path):
    root = tmp_path / "g"
    trials = [write_trial(root, f"{m}-{g}-{s}", m, "A", s, [[float(s + (g == "hard"))]], group=g)
              for m in ("CoWorld", "Offline DV2") for g in ("easy", "hard") for s in range(2)]
    (root / "sweep.json").write_text(json.dumps({"experiment": "g", "trials": trials}))
    result = sr.build_report(root, reps=100, alignment_trials=0)
    md = (result["out"] / "table.md").read_text()
    assert "## Final return (easy)" in md and "## Final return (hard)" in md
    assert "| method | A |\n" in md  # one task: no average columns repeating it
    assert "as few as 2 seeds" in md  # the caveat on bootstrap intervals from few seeds
    assert "**" not in md and "nothing: fewer than 3 seeds" in md  # no claim from two seeds
    assert result["summary"]["groups"]["hard"]["cells"]["CoWorld"]["A"]["value"] == pytest.approx(1.5)


def test_latex_escape():
    assert sr.latex_escape("reach-src->reach") == r"reach-src$\to$reach"
    assert sr.latex_escape("a_b & 5%") == r"a\_b \& 5\%"


def test_alignment_encoders(tmp_path):
    """On a hand-built CoWorld checkpoint whose target agent is a copy of its source agent, the
    'after' embeddings equal the source's (KL 0); 'before' is the fresh encoder with the run's seed."""
    import torch

    from coworld.algos.dreamer import DreamerAgent
    from coworld.config import load_config
    from coworld.data.make import make_dataset
    from coworld.run.checkpoint import save_checkpoint

    data = tmp_path / "data"
    make_dataset("builtin:reach", "random", 2, data, seed=0, time_limit=15)
    cfg = load_config("tiny", ["seed=7"])
    torch.manual_seed(123)
    source = DreamerAgent(cfg, 2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"algo": "coworld", "seed": 7, "source": ["builtin:reach-src"],
                                              "target_dataset": str(data), "target_env": "builtin:reach"}))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    state = {"dims": {"target_agent": 2, "source0_agent": 2}, "counters": {"selected": 0},
             "target_agent": source.checkpoint_state(), "source0_agent": source.checkpoint_state()}
    save_checkpoint(run / "checkpoint.pt", state)
    e = sr.alignment_embeddings(run, frames=20)
    assert e["source"].shape == e["after"].shape == e["before"].shape == (20, source.wm.encoder.out_dim)
    assert e["kl_after"] == pytest.approx(0.0, abs=1e-6) and e["kl_before"] > 1e-3
    torch.manual_seed(7)
    fresh = DreamerAgent(cfg, 2)
    frames = torch.from_numpy(sr.target_frames(data, 20, 0))
    with torch.no_grad():
        assert np.allclose(fresh.wm.encode(frames).numpy(), e["before"], atol=1e-6)
    path, how = sr.plot_alignment([("t", e)], tmp_path / "a.png")
    assert path.stat().st_size > 0 and how in ("t-SNE", "PCA (scikit-learn is not installed: no t-SNE)")


def test_embedding_falls_back_to_pca_without_scikit_learn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 6)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    pts, how = sr.embed_2d(points)
    assert how.startswith("PCA") and pts.shape == (50, 2)
    # PCA keeps the two directions of largest variance: the first axis carries the most
    assert pts[:, 0].var() > pts[:, 1].var() > 0.5 * (points - points.mean(0))[:, 1].var()


def test_a_damaged_trial_is_named_not_fatal(sweep):
    run = sweep / "runs" / "offline-dv2-B-s2"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = sr.build_report(sweep, reps=100, alignment_trials=0)
    assert result["summary"]["status"]["damaged"] == ["offline-dv2-B-s2"]
    report = (result["out"] / "report.md").read_text()
    assert "Unreadable (left out): `offline-dv2-B-s2`" in report
    assert result["summary"]["groups"][""]["cells"]["Offline DV2"]["B"]["seeds"] == 2


def test_transfer_grid_multi_source_row(sweep):
    trials = [write_trial(sweep, f"ms-A-s{s}", "CoWorld (multi-source)", "A", s, [[7.0 + s]]) for s in range(3)]
    for t in trials:  # several candidate sources: one row named by the method
        path = sweep / "trials" / f"{t['id']}.json"
        path.write_text(json.dumps({**t, "algo": "coworld", "source": ["builtin:reach-src", "builtin:push-src"]}))
    grid = sr.transfer_grid(sr.load_sweep(sweep), "CoWorld", "Offline DV2", partial=False, reps=200)[""]
    assert grid[("CoWorld (multi-source)", "builtin:reach")]["value"] == pytest.approx(8.0 - 1.0)
    assert sr._rows(grid)[-1] == "CoWorld (multi-source)"
    assert "| CoWorld (multi-source) |" in sr.transfer_markdown(grid)


def test_tables_list_methods_in_the_experiment_files_order(tmp_path):
    """Rows follow the plan in sweep.json (the focus method first), not the trial ids' alphabet."""
    root = tmp_path / "sweep"
    trials = [write_trial(root, f"{m.lower()}-A-s{s}", m, "A", s, [[float(s)]])
              for s in range(2) for m in ("Zeta", "CoWorld", "Alpha")]
    (root / "sweep.json").write_text(json.dumps({"experiment": "fixture", "file": "x.toml", "trials": trials}))
    assert sr._methods_order(sr.load_sweep(root), "CoWorld") == ["CoWorld", "Zeta", "Alpha"]
