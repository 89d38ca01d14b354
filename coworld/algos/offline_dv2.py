"""Offline DreamerV2 (Lu et al. 2023, V-D4RL; SPEC section 10).

DreamerV2 trained only on offline data, with an ensemble of K = cfg.model.ensemble prior
(transition) heads, each trained with its own balanced KL to the posterior (see
:meth:`WorldModel.loss`), and a pessimistic imagined reward

    r~ = r - lambda * u,   lambda = cfg.train.offline_penalty,

where u (the "mean disagreement") is, at a deterministic state h, the mean over latent
dimensions of the standard deviation across members of each member's predicted latent
(means for Gaussian latents, class probabilities for discrete ones). The penalty of a
transition s_t -> s_{t+1} is taken at h_{t+1}, the state whose latent the members predict.

Imagination steps with a member drawn uniformly at random per step (one draw shared by
the whole batch, from torch's global generator), as the V-D4RL code does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coworld.algos.dreamer import DreamerAgent
from coworld.config import Config
from coworld.errors import UserError


def disagreement(predictions: Tensor) -> Tensor:
    """predictions (K, …, Z) -> u (…): mean over Z of the std over the K members."""
    return predictions.std(0, unbiased=False).mean(-1)


class OfflineDV2Agent(DreamerAgent):
    def __init__(self, cfg: Config, action_dim: int, device="cpu"):
        if cfg.model.ensemble < 2:
            raise UserError(
                f"Offline DV2 needs an ensemble of at least 2 prior heads; model.ensemble is "
                f"{cfg.model.ensemble}. Use the offline-dv2 preset or --set model.ensemble=7"
            )
        super().__init__(cfg, action_dim, device)

    def imagine_step(self, state: dict, action: Tensor) -> dict:
        head = int(torch.randint(len(self.wm.rssm.prior_heads), ()))
        return self.wm.rssm.img_step(state, action, head=head)

    def uncertainty(self, deter: Tensor) -> Tensor:
        """u (…) at deterministic states ``deter`` (…, D)."""
        rssm = self.wm.rssm
        preds = torch.stack([rssm.prediction(p) for p in rssm.head_params(deter)])
        return disagreement(preds)

    def imagined_reward(self, imag: dict) -> Tensor:
        reward = self.wm.reward(imag["feat"])
        return reward - self.cfg.train.offline_penalty * self.uncertainty(imag["state"]["deter"])
