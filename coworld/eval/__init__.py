"""Evaluation and reporting helpers: open-loop prediction strips, run plots, result tables."""

from coworld.eval.openloop import openloop_predict, openloop_strip

__all__ = ["openloop_predict", "openloop_strip"]
