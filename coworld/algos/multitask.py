"""Multi-Task DreamerV2 (the paper's Table 6 baseline; docs/algorithms.md#multi-task-dv2).

One world model learns the source (online simulator) and the target (offline dataset) together;
each domain has its own actor, critic and slow critic, which learn in imagination from their own
domain's posterior states. The model reads which domain it is in through its action input:

    u_t = [a_t, 0, ..., 0, onehot_K(d)]      (a_t zero-padded to the larger action space, K = 2)

so the indicator reaches the recurrent state h_t, hence the prior p(z_t | h_t), the reward head and
every imagined step (the actor's action is mapped the same way before each prior step).
Domain 0 is the source, domain 1 the target.

Every world-model update sees both domains: a batch of ``B // 2`` source windows stacked on top of
``B - B // 2`` target windows (:func:`joint_batch`), one DreamerV2 loss over all ``B`` rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coworld.algos.dreamer import CompiledStep, DreamerAgent, Optimizer, resolve_device
from coworld.config import Config
from coworld.errors import UserError
from coworld.nets import Actor, Critic, WorldModel

NUM_DOMAINS = 2
SOURCE, TARGET = 0, 1
WM_KEYS = ("image", "action", "reward", "discount", "is_first", "is_terminal")  # what the world model reads


def model_action(action: Tensor, domain: int, joint_dim: int, num_domains: int = NUM_DOMAINS) -> Tensor:
    """The world model's action input (docs/algorithms.md#multi-task-dv2):

        u = [a, 0_{joint_dim - A_d}, onehot_K(domain)],   (…, A_d) -> (…, joint_dim + K).
    """
    pad = joint_dim - action.shape[-1]
    if pad < 0:
        raise ValueError(f"{action.shape[-1]}-D actions do not fit a {joint_dim}-D joint action space")
    onehot = torch.zeros(*action.shape[:-1], num_domains, dtype=action.dtype, device=action.device)
    onehot[..., domain] = 1.0
    return torch.cat([F.pad(action, (0, pad)), onehot], -1)


def split_batch(batch: int) -> tuple[int, int]:
    """(source rows, target rows) of a joint world-model batch of ``batch`` windows: B // 2 and B - B // 2."""
    if batch < 2:
        raise UserError(f"multitask-dv2 needs train.batch >= 2 (one window per domain at least); got {batch}")
    return batch // 2, batch - batch // 2


def joint_batch(source: dict, target: dict, joint_dim: int) -> dict:
    """Source rows on top of target rows (batch axis), each domain's actions in the model's action
    space (:func:`model_action`). Only the keys the world model reads are kept."""
    out = {}
    for key in WM_KEYS:
        s, t = source[key], target[key]
        if key == "action":
            s, t = model_action(s.float(), SOURCE, joint_dim), model_action(t.float(), TARGET, joint_dim)
        out[key] = torch.cat([s, t.to(s.device)], 0)
    return out


class DomainBehaviour(DreamerAgent):
    """The actor, critic and slow critic of one domain, on the shared world model.

    Reuses :class:`DreamerAgent`'s behaviour learning and acting; what differs is the action the
    world model reads (:func:`model_action`), in every imagined step and while acting. It owns no
    world-model optimizer: :class:`MultiTaskAgent` steps the shared model once per update.
    """

    def __init__(self, cfg: Config, wm: WorldModel, action_dim: int, domain: int, joint_dim: int, device):
        nn.Module.__init__(self)  # not DreamerAgent.__init__: the world model is shared, not built here
        b = cfg.behaviour
        self.cfg, self.action_dim, self.device = cfg, int(action_dim), device
        self.domain, self.joint_dim = domain, joint_dim
        self.wm = wm
        feat = wm.feat_dim
        self.actor = Actor(feat, self.action_dim, b.actor_units, b.actor_layers, b.actor_min_std, b.actor_dist).to(device)
        self.critic = Critic(feat, b.critic_units, b.critic_layers).to(device)
        self.slow_critic = Critic(feat, b.critic_units, b.critic_layers).to(device)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)
        amp = cfg.train.amp
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        opt = dict(eps=b.eps, clip=b.grad_clip, scaler=amp == "fp16", device=device)
        self.actor_opt = Optimizer(self.actor.parameters(), b.actor_lr, weight_decay=b.weight_decay, **opt)
        self.critic_opt = Optimizer(self.critic.parameters(), b.critic_lr, weight_decay=b.weight_decay, **opt)
        self.updates = 0
        name = "source" if domain == SOURCE else "target"
        self._behaviour_losses = CompiledStep(self.behaviour_losses, f"{name} behaviour step", cfg.train.compile)

    def model_action(self, action: Tensor) -> Tensor:
        return model_action(action, self.domain, self.joint_dim)

    def imagine_step(self, state: dict, action: Tensor) -> dict:
        return self.wm.rssm.img_step(state, self.model_action(action))

    def initial_policy_state(self, n: int):
        """(latent state, previous action in the model's action space)."""
        latent, _ = super().initial_policy_state(n)
        return latent, torch.zeros(n, self.joint_dim + NUM_DOMAINS, device=self.device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], state, is_first: np.ndarray, explore: bool):
        action, (latent, taken) = super().act(obs, state, is_first, explore)
        return action, (latent, self.model_action(taken))

    def state(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "slow_critic": self.slow_critic.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict()}

    def load(self, d: dict, updates: int) -> None:
        self.actor.load_state_dict(d["actor"])
        self.critic.load_state_dict(d["critic"])
        self.slow_critic.load_state_dict(d["slow_critic"])
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.updates = updates


class MultiTaskAgent(nn.Module):
    """Shared world model + a source and a target :class:`DomainBehaviour`.

    As an acting agent (the ``Agent`` protocol: evaluation, ``coworld eval``) it is the target's
    policy; the trainer collects source data with ``agent.source``.
    """

    def __init__(self, cfg: Config, source_dim: int, target_dim: int, device="cpu"):
        super().__init__()
        self.cfg = cfg
        self.device = resolve_device(device)
        self.source_dim, self.target_dim = int(source_dim), int(target_dim)
        self.joint_dim = max(self.source_dim, self.target_dim)
        self.action_dim = self.target_dim
        m = cfg.model
        self.wm = WorldModel(cfg, self.joint_dim + NUM_DOMAINS).to(self.device)
        self.source = DomainBehaviour(cfg, self.wm, self.source_dim, SOURCE, self.joint_dim, self.device)
        self.target = DomainBehaviour(cfg, self.wm, self.target_dim, TARGET, self.joint_dim, self.device)
        b = cfg.behaviour
        self.model_opt = Optimizer(self.wm.parameters(), m.lr, eps=b.eps, clip=b.grad_clip,
                                   weight_decay=m.weight_decay, scaler=cfg.train.amp == "fp16", device=self.device)
        self.updates = 0
        self._wm_losses = CompiledStep(self.wm_losses, "multi-task world-model step", cfg.train.compile)

    # ------------------------------------------------------------------ one update

    def wm_losses(self, batch: dict) -> tuple[Tensor, dict, dict]:
        """DreamerV2's world-model loss on the joint batch: (loss, detached posterior, metrics)."""
        with self.target.autocast():
            loss, out, metrics = self.wm.loss(batch)
        metrics["model/loss"] = loss.detach()
        return loss, {k: v.detach() for k, v in out["post"].items()}, metrics

    def update(self, source_batch: dict, target_batch: dict) -> dict:
        """One world-model step on both domains' windows, then each domain's behaviour step from
        its own rows' posterior states. Metrics: ``model/*`` (shared), ``source/*``, ``target/*``."""
        rows = source_batch["image"].shape[0]
        batch = {k: v.to(self.device) for k, v in joint_batch(source_batch, target_batch, self.joint_dim).items()}
        loss, post, metrics = self._wm_losses(batch)
        metrics["model/grad_norm"] = self.model_opt.step(loss)
        for name, behaviour, part in (("source", self.source, slice(0, rows)),
                                      ("target", self.target, slice(rows, None))):
            step = behaviour.behaviour_step({k: v[part] for k, v in post.items()})
            metrics.update({f"{name}/{k}": v for k, v in step.items()})
            behaviour.finish_update()
        self.updates += 1
        return metrics

    # ------------------------------------------------------------------ acting: the target policy

    def initial_policy_state(self, n: int):
        return self.target.initial_policy_state(n)

    def act(self, obs, state, is_first, explore):
        return self.target.act(obs, state, is_first, explore)

    def policy_value(self, state):
        return self.target.policy_value(state)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        return {"wm": self.wm.state_dict(), "model_opt": self.model_opt.state_dict(),
                "source": self.source.state(), "target": self.target.state(), "updates": self.updates,
                "source_dim": self.source_dim, "target_dim": self.target_dim}

    def load_checkpoint_state(self, d: dict) -> None:
        dims = (int(d["source_dim"]), int(d["target_dim"]))
        if dims != (self.source_dim, self.target_dim):
            raise UserError(f"checkpoint has source/target action dims {dims}, this agent "
                            f"{(self.source_dim, self.target_dim)}; load it with the run's own inputs")
        try:
            self.wm.load_state_dict(d["wm"])
            self.source.load(d["source"], int(d["updates"]))
            self.target.load(d["target"], int(d["updates"]))
        except RuntimeError as exc:
            raise UserError("checkpoint does not match this agent's configuration (network sizes differ); "
                            f"load it with the config it was saved with. Details: {exc}") from None
        self.model_opt.load_state_dict(d["model_opt"])
        self.updates = int(d["updates"])
