"""Offline DreamerV2 (Lu et al. 2023, V-D4RL; docs/algorithms.md, "Offline DV2").

DreamerV2 trained only on offline data, with an ensemble of K = cfg.model.ensemble prior
(transition) heads, each trained with its own balanced KL to the posterior (see
:meth:`WorldModel.loss`), and a pessimistic imagined reward

    r~ = r - lambda * u,   lambda = cfg.train.offline_penalty,

where u is the ensemble's disagreement about the next latent, at the deterministic state h
whose latent the members predict (the penalty of s_t -> s_{t+1} is taken at h_{t+1}).
``train.offline_penalty_kind`` chooses u (see :func:`disagreement`); V-D4RL recommends
"meandis" with lambda = 10.

Imagination steps with a member drawn uniformly at random per step (one draw shared by
the whole batch, from torch's global generator), as the V-D4RL code does.

Training protocol: with ``train.offline_wm_updates = N > 0`` (V-D4RL: 25,000) the first N
updates train the world model alone; every later update trains the actor and critic on
posterior states of a frozen model. With N = 0 both are updated at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coworld.algos.dreamer import DreamerAgent
from coworld.config import Config
from coworld.errors import UserError


def disagreement(predictions: Tensor, kind: str = "meandis") -> Tensor:
    """Ensemble disagreement u (…) from member predictions (K, …, Z), latent flattened last.

    "meandis" (V-D4RL's ``compute_penalty``): with m_k member k's predicted latent (the mean
    of a Gaussian latent, the class probabilities of a discrete one, flattened over
    stoch x classes) and m the members' average, u = mean_k ||m_k - m||_2.
    "std": the mean over the Z latent dimensions of the (population) std across members.
    """
    if kind == "meandis":
        return (predictions - predictions.mean(0)).norm(dim=-1).mean(0)
    if kind == "std":
        return predictions.std(0, unbiased=False).mean(-1)
    raise UserError(f"train.offline_penalty_kind must be 'meandis' or 'std'; got {kind!r}")


class OfflineDV2Agent(DreamerAgent):
    def __init__(self, cfg: Config, action_dim: int, device="cpu"):
        if cfg.model.ensemble < 2:
            raise UserError(
                f"Offline DV2 needs an ensemble of at least 2 prior heads; model.ensemble is "
                f"{cfg.model.ensemble}. Use --set model.ensemble=7 (V-D4RL's value)"
            )
        super().__init__(cfg, action_dim, device)

    def imagine_step(self, state: dict, action: Tensor) -> dict:
        head = torch.randint(len(self.wm.rssm.prior_heads), ())
        if not torch.compiler.is_compiling():
            head = int(head)  # eager: index the module list; compiled: select on a tensor (no host sync)
        return self.wm.rssm.img_step(state, action, head=head)

    def uncertainty(self, deter: Tensor) -> Tensor:
        """u (…) at deterministic states ``deter`` (…, D)."""
        rssm = self.wm.rssm
        preds = torch.stack([rssm.prediction(p) for p in rssm.head_params(deter)])
        return disagreement(preds, self.cfg.train.offline_penalty_kind)

    def imagined_reward(self, imag: dict) -> Tensor:
        reward = self.wm.reward(imag["feat"])
        u = self.uncertainty(imag["state"]["deter"])
        self._penalty = u.mean().detach()  # logged as imag/uncertainty by behaviour_losses()
        return reward - self.cfg.train.offline_penalty * u

    def behaviour_losses(self, post: dict, critic_extra=None) -> tuple[Tensor, Tensor, dict]:
        actor_loss, critic_loss, metrics = super().behaviour_losses(post, critic_extra)
        metrics["imag/uncertainty"] = self._penalty
        return actor_loss, critic_loss, metrics

    def update(self, batch: dict[str, Tensor], wm_hook=None, critic_hook=None) -> dict:
        """One update of V-D4RL's protocol: world model alone for the first
        ``offline_wm_updates`` updates, then actor-critic on a frozen model (joint when 0).
        The hooks as in :meth:`DreamerAgent.update` (CoWorld's pessimistic target)."""
        pretrain = self.cfg.train.offline_wm_updates
        if pretrain <= 0:
            return super().update(batch, wm_hook, critic_hook)
        if self.updates < pretrain:
            _, metrics = self.world_model_step(batch, extra_loss=wm_hook)
        else:
            metrics = self.behaviour_step(self.posterior(batch), critic_extra=critic_hook)
        self.finish_update()
        return metrics
