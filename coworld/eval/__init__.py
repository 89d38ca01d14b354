"""Evaluation and reporting helpers: open-loop prediction strips, run plots, result tables."""

from coworld.eval.openloop import openloop_predict, openloop_strip
from coworld.eval.plots import plot_run, read_metrics

__all__ = ["openloop_predict", "openloop_strip", "plot_run", "read_metrics"]
