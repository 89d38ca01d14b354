"""coworld: CoWorld (NeurIPS 2024) and its DreamerV2 baselines for offline visual RL."""

__version__ = "0.1.0"
