"""Reporting over runs: statistics over seeds (:mod:`coworld.eval.stats`), result tables and
comparison plots (:mod:`coworld.eval.report`), and the embedded demo job (:mod:`coworld.eval.demo`)."""

from coworld.eval.report import aggregate, plot_comparison, results_table, run_result

__all__ = ["aggregate", "plot_comparison", "results_table", "run_result"]
