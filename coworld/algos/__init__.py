"""Algorithms: the DreamerV2 agent, Offline DV2, CoWorld and finetuning baselines."""

from coworld.algos.dreamer import DreamerAgent, lambda_return
from coworld.algos.offline_dv2 import OfflineDV2Agent

__all__ = ["DreamerAgent", "OfflineDV2Agent", "lambda_return"]
