"""What the framework asks of an agent (docs/architecture.md, "Agents").

Every agent the loops train and evaluate provides :class:`Agent`. Two capabilities are optional
and detected by attribute: a world model (``wm``, ``posterior(batch)``, ``value(feat)`` and
``device``, as :class:`coworld.algos.dreamer.DreamerAgent` has them; the loops then log open-loop
predictions and the offline diagnostics) and a critic (``policy_value(state)``; the evaluations then
measure value overestimation, paper Fig. 5b). A model-free agent without them trains and evaluates
through the same offline loop.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Agent(Protocol):
    action_dim: int
    updates: int  # gradient updates made so far (the offline loop's position)

    def initial_policy_state(self, n: int) -> Any:
        """The recurrent state ``act`` starts n parallel episodes from (None if it has none)."""

    def act(self, obs: dict[str, np.ndarray], state: Any, is_first: np.ndarray, explore: bool):
        """obs (batched, N first) -> (actions (N, A) float32 in [-1, 1], new state); ``explore=False``
        is the evaluation protocol's deterministic action."""

    def update(self, batch: dict) -> dict:
        """One gradient update on a (B, L) replay batch (docs/shapes.md); returns scalar metrics."""

    def checkpoint_state(self) -> dict:
        """Everything needed to continue bit-identically; loadable with ``torch.load(weights_only=True)``."""

    def load_checkpoint_state(self, state: dict) -> None: ...
