"""The statistics module against hand-computed values (and rliable, where it is installed)."""

import numpy as np
import pytest

from coworld.eval import stats


def test_seed_score_averages_episodes_within_a_seed():
    assert stats.seed_score([1.0, 2.0, 6.0]) == 3.0
    with pytest.raises(ValueError):
        stats.seed_score([])


def test_point_aggregates_hand_values():
    scores = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([10.0, 0.0, 5.0, 7.0])}
    # task means 2.5 and 5.5 -> mean 4, median 4; with a third task of mean 3 the median is 3
    assert stats.mean(scores) == 4.0 and stats.median(scores) == 4.0
    assert stats.median({**scores, "c": np.array([3.0])}) == 3.0
    assert stats.mean({"a": np.array([0.0, 0.0, 0.0]), "b": np.array([6.0])}) == 3.0  # tasks weigh the same
    # pooled: 0 1 2 3 4 5 7 10    # IQM trims floor(0.25 * 8) = 2 from each end: mean(2, 3, 4, 5) = 3.5
    assert stats.iqm(scores) == 3.5
    # optimality gap at threshold 4: shortfalls 4 3 2 1 0 0 0 0 -> 10 / 8
    assert stats.optimality_gap(scores, threshold=4.0) == 1.25


def test_probability_of_improvement_hand_values():
    x = {"a": np.array([3.0, 1.0]), "b": np.array([5.0])}
    y = {"a": np.array([2.0, 3.0]), "b": np.array([4.0, 6.0])}
    # task a: pairs (3>2) 1, (3=3) .5, (1<2) 0, (1<3) 0 -> 1.5 / 4; task b: (5>4) 1, (5<6) 0 -> .5
    assert stats.probability_of_improvement(x, y) == pytest.approx((0.375 + 0.5) / 2)
    assert stats.probability_of_improvement(y, x) == pytest.approx(1 - (0.375 + 0.5) / 2)
    assert stats.probability_of_improvement(x, x) == 0.5


def test_bootstrap_resamples_seeds_within_each_task():
    # Each task's seeds are identical, so every stratified resample gives the same pooled scores:
    # the interval collapses to the point. Pooling across tasks would not (the tasks differ).
    scores = {"a": np.full(5, 1.0), "b": np.full(3, 9.0)}
    lo, hi = stats.bootstrap_ci(stats.mean, scores, reps=200)
    assert lo == hi == pytest.approx(stats.mean(scores))


def test_bootstrap_interval_is_the_percentile_interval():
    # one task, two seeds 0 and 1: the resampled mean is 0, .5 or 1 with probabilities 1/4, 1/2, 1/4
    scores = {"t": np.array([0.0, 1.0])}
    lo, hi = stats.bootstrap_ci(stats.mean, scores, reps=4000, seed=1)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = stats.bootstrap_ci(stats.mean, scores, reps=4000, confidence=0.4, seed=1)
    assert lo == hi == 0.5  # the central 40% of {0: 25%, .5: 50%, 1: 25%} is .5


def test_summarize_and_compare_report_counts_and_intervals():
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(10, 1, 6), "b": rng.normal(20, 1, 4)}
    y = {"a": rng.normal(0, 1, 5), "b": rng.normal(0, 1, 5)}
    s = stats.summarize(x, reps=500)
    assert s["seeds"] == {"a": 6, "b": 4} and s["tasks"] == 2
    for name in ("mean", "median", "iqm"):
        lo, hi = s[name]["ci"]
        assert lo <= s[name]["value"] <= hi
    c = stats.compare(x, y, reps=500)
    assert c["value"] == 1.0 and c["ci"] == [1.0, 1.0]
    assert stats.interval_text({"value": 1.234, "ci": [1.0, 2.0]}) == "1.2 [1.0, 2.0]"


def test_agrees_with_rliable():
    pytest.importorskip("rliable")
    from rliable import metrics

    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 0.5, (7, 3))  # (runs, tasks), rliable's layout
    y = rng.normal(0.8, 0.5, (7, 3))
    ours = lambda a: {f"t{j}": a[:, j] for j in range(a.shape[1])}  # noqa: E731
    assert stats.iqm(ours(x)) == pytest.approx(metrics.aggregate_iqm(x))
    assert stats.median(ours(x)) == pytest.approx(metrics.aggregate_median(x))
    assert stats.mean(ours(x)) == pytest.approx(metrics.aggregate_mean(x))
    assert stats.optimality_gap(ours(x)) == pytest.approx(metrics.aggregate_optimality_gap(x))
    assert stats.probability_of_improvement(ours(x), ours(y)) == pytest.approx(
        metrics.probability_of_improvement(x, y))


def test_improvement_verdict():
    assert stats.improvement_verdict({"value": 0.8, "ci": [0.6, 0.9]}, 3) == "x"
    assert stats.improvement_verdict({"value": 0.2, "ci": [0.1, 0.4]}, 5) == "y"
    assert stats.improvement_verdict({"value": 0.6, "ci": [0.4, 0.9]}, 5) is None  # holds 0.5
    assert stats.improvement_verdict({"value": 1.0, "ci": [1.0, 1.0]}, 2) is None  # two seeds: no claim


def test_bootstrap_mean_ci_is_the_one_stratum_bootstrap_ci():
    values = np.array([1.0, 2.0, 4.0, 8.0])
    fast = stats.bootstrap_mean_ci(values, reps=20000, rng=np.random.default_rng(1))
    slow = stats.bootstrap_ci(stats.mean, {"t": values}, reps=20000, seed=2)
    assert fast == pytest.approx(slow, abs=0.15)  # the same distribution, other draws
    assert 1.0 <= fast[0] < values.mean() < fast[1] <= 8.0
    assert stats.bootstrap_mean_ci([3.0], reps=50) == (3.0, 3.0)  # one seed: no spread to resample
    assert stats.bootstrap_mean_ci([2.0, 2.0, 2.0], reps=50) == (2.0, 2.0)
