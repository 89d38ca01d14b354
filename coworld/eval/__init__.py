"""Evaluation and reporting helpers: open-loop prediction strips, run plots, result tables."""

from coworld.eval.openloop import openloop_predict, openloop_strip
from coworld.eval.plots import plot_run, read_metrics
from coworld.eval.report import plot_comparison, results_table, run_result

__all__ = ["openloop_predict", "openloop_strip", "plot_comparison", "plot_run", "read_metrics", "results_table",
           "run_result"]
