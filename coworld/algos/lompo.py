"""LOMPO, latent offline model-based policy optimisation (Rafailov et al. 2021, "Offline
Reinforcement Learning from Images with Latent Space Models"; docs/algorithms.md#lompo).

The parts, and where they come from in this package:

- latent model: the DreamerV2 world model (:class:`coworld.nets.WorldModel`) with an ensemble of
  K = ``model.ensemble`` latent forward models, the RSSM's prior heads, each trained with its own
  balanced KL to the posterior (as for Offline DV2);
- uncertainty u(s'): the ensemble's disagreement about the next latent at the deterministic
  state h' every member reads (``lompo.penalty_kind``: Offline DV2's "meandis" / "std", or
  "loglik_var", the variance over members of the log-likelihood of the sampled next latent);
- latent rollouts: from posterior latents of real windows, H = ``lompo.horizon`` steps of the
  current policy in the model, one member drawn per step; each model transition gets the
  penalised reward r~ = r^(s') - lambda * u(s') (:func:`penalised_reward`) and is stored in a ring
  buffer of model transitions (:class:`ModelBuffer`);
- real latent transitions: consecutive posterior latents (s_t, a_{t+1}, r_{t+1}, s_{t+1}) of the
  same real window, with the recorded reward (:func:`real_transitions`);
- policy: the soft actor-critic of :mod:`coworld.algos.sac` on latent features [z, h], trained on
  batches with a fixed fraction ``lompo.real_ratio`` of real transitions (:func:`mixed_batch`).

One update (the offline loop's unit): a world-model step on a (B, L) window; after
``lompo.wm_updates`` model-only updates, also a rollout batch (every ``lompo.rollout_every``
updates) and ``lompo.sac_updates`` SAC steps. Random numbers come from torch's global generator
(saved with every checkpoint), so a resumed run continues bit-identically.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from coworld.algos.dreamer import Optimizer, resolve_device
from coworld.algos.offline_dv2 import disagreement
from coworld.algos.sac import SAC
from coworld.config import Config
from coworld.errors import UserError
from coworld.nets import WorldModel

TRANSITION_KEYS = ("s", "a", "r", "s2", "terminal")


def penalised_reward(reward: Tensor, u: Tensor, lam: float) -> Tensor:
    """The reward of the uncertainty-penalised latent MDP (paper, Sec. 4): r~ = r^ - lambda * u."""
    return reward - lam * u


def loglik_variance(logliks: Tensor) -> Tensor:
    """u = Var_k[log T_k(s' | s, a)] over the K members (dim 0), population variance: (K, …) -> (…)."""
    return logliks.var(0, unbiased=False)


def real_transitions(feat: Tensor, action: Tensor, reward: Tensor, is_first: Tensor, is_terminal: Tensor) -> dict:
    """Real latent transitions of a batch-major window (docs/shapes.md).

    feat (B, L, F) posterior features; action, reward, is_first, is_terminal (B, L, …) as sampled.
    action[t] led to image[t] and reward[t] arrived with it, so the transition from state t is
    (s = feat[t], a = action[t + 1], r = reward[t + 1], s2 = feat[t + 1], terminal[t + 1]); pairs
    whose second step starts a new episode are dropped. Returns flat (M, …) tensors, M <= B (L - 1).
    """
    keep = ~is_first[:, 1:].bool()
    return {"s": feat[:, :-1][keep], "a": action[:, 1:][keep], "r": reward[:, 1:][keep].float(),
            "s2": feat[:, 1:][keep], "terminal": is_terminal[:, 1:][keep].float()}


def split_batch(batch: int, real_ratio: float) -> tuple[int, int]:
    """(real, model) transitions of a SAC batch: round(batch * real_ratio) real, the rest model."""
    n_real = int(round(batch * real_ratio))
    return n_real, batch - n_real


def mixed_batch(real: dict, model: dict, batch: int, real_ratio: float) -> dict:
    """A SAC batch: ``split_batch`` real transitions drawn uniformly (with replacement) from
    ``real``, the rest from ``model``; the real ones first. With no real (or no model) transitions
    the whole batch comes from the other source."""
    n_real, n_model = split_batch(batch, real_ratio)
    m_real, m_model = len(real["r"]), len(model["r"])
    if m_real == 0:
        n_real, n_model = 0, batch
    elif m_model == 0:
        n_real, n_model = batch, 0
    parts = []
    for source, n, m in ((real, n_real, m_real), (model, n_model, m_model)):
        if n:
            idx = torch.randint(m, (n,), device=source["r"].device)
            parts.append({k: source[k][idx] for k in TRANSITION_KEYS})
    return {k: torch.cat([p[k] for p in parts]) for k in TRANSITION_KEYS}


class ModelBuffer:
    """A ring buffer of model transitions (s, a, r~, s2, terminal); the oldest are overwritten.
    Its contents are part of the agent's checkpoint (only the filled part is saved)."""

    def __init__(self, capacity: int, feat_dim: int, action_dim: int, device):
        if capacity <= 0:
            raise UserError(f"lompo.buffer must be positive; got {capacity}")
        self.capacity = capacity
        shapes = {"s": (feat_dim,), "a": (action_dim,), "r": (), "s2": (feat_dim,), "terminal": ()}
        self.data = {k: torch.zeros(capacity, *shape, device=device) for k, shape in shapes.items()}
        self.next, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, items: dict) -> None:
        n = len(items["r"])
        if n > self.capacity:  # keep the newest
            items = {k: v[-self.capacity:] for k, v in items.items()}
            n = self.capacity
        idx = (self.next + torch.arange(n)) % self.capacity
        for k in TRANSITION_KEYS:
            self.data[k][idx.to(self.data[k].device)] = items[k].detach().to(self.data[k].dtype)
        self.next = (self.next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def view(self) -> dict:
        return {k: v[: self.size] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"data": {k: v.clone() for k, v in self.view().items()}, "next": self.next, "size": self.size}

    def load_state_dict(self, d: dict) -> None:
        size = int(d["size"])
        for k in TRANSITION_KEYS:
            self.data[k].zero_()
            self.data[k][:size] = d["data"][k].to(self.data[k].device)
        self.next, self.size = int(d["next"]), size


class LompoAgent(nn.Module):
    """World model with a prior ensemble + SAC on latent features + a buffer of penalised rollouts."""

    def __init__(self, cfg: Config, action_dim: int, device="cpu"):
        super().__init__()
        if cfg.model.ensemble < 2:
            raise UserError(f"LOMPO needs an ensemble of at least 2 latent forward models; model.ensemble is "
                            f"{cfg.model.ensemble}. Use e.g. --set model.ensemble=5")
        c = cfg.lompo
        for name in ("horizon", "rollout_starts", "rollout_every", "batch", "sac_updates", "hidden"):
            if getattr(c, name) <= 0:
                raise UserError(f"lompo.{name} must be positive; got {getattr(c, name)}")
        if cfg.train.amp != "none" or cfg.train.compile:
            raise UserError("LOMPO runs its updates eagerly in float32: leave train.amp=none and train.compile=false")
        if not 0.0 <= c.real_ratio <= 1.0:
            raise UserError(f"lompo.real_ratio is a fraction of the SAC batch: between 0 and 1; got {c.real_ratio}")
        for name in ("gamma", "tau"):
            if not 0.0 < getattr(c, name) <= 1.0:
                raise UserError(f"lompo.{name} must be in (0, 1]; got {getattr(c, name)}")
        if c.penalty < 0:
            raise UserError(f"lompo.penalty (lambda) must be >= 0: a negative one rewards model uncertainty; got {c.penalty}")
        self.cfg, self.action_dim = cfg, int(action_dim)
        self.value_gamma = c.gamma  # SAC's discount, for the overestimation measure and offline diagnostics
        self.device = resolve_device(device)
        self.wm = WorldModel(cfg, self.action_dim)
        self.sac = SAC(self.wm.feat_dim, self.action_dim, hidden=c.hidden, lr=c.lr, gamma=c.gamma, tau=c.tau)
        self.to(self.device)
        b = cfg.behaviour
        self.model_opt = Optimizer(self.wm.parameters(), cfg.model.lr, eps=b.eps, clip=b.grad_clip,
                                   weight_decay=cfg.model.weight_decay, device=self.device)
        self.buffer = ModelBuffer(c.buffer, self.wm.feat_dim, self.action_dim, self.device)
        self.updates = 0

    # ------------------------------------------------------------------ model

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict, dict]:
        """One world-model step (docs/algorithms.md#world-model, with the ensemble's KL terms).
        Returns (posterior of the forward pass, detached; metrics)."""
        loss, out, metrics = self.wm.loss(batch)
        metrics["model/loss"] = loss.detach()
        metrics["model/grad_norm"] = self.model_opt.step(loss)
        return {k: v.detach() for k, v in out["post"].items()}, metrics

    @torch.no_grad()
    def posterior(self, batch: dict[str, Tensor]) -> dict:
        """Posterior states (B, L, …) of a batch under the current model."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        post, _ = self.wm.observe(self.wm.encode(batch["image"]), batch["action"], batch["is_first"])
        return post

    def uncertainty(self, state: dict) -> Tensor:
        """u (…) of next latents ``state`` (deter (…, D), sampled stoch (…, Z)): see ``lompo.penalty_kind``."""
        rssm = self.wm.rssm
        heads = rssm.head_params(state["deter"])
        kind = self.cfg.lompo.penalty_kind
        if kind != "loglik_var":
            return disagreement(torch.stack([rssm.prediction(p) for p in heads]), kind)
        z = state["stoch"]
        if rssm.discrete:
            onehot = z.reshape(*z.shape[:-1], rssm.stoch, rssm.classes)
            logliks = [(torch.log_softmax(p["logits"], -1) * onehot).sum((-2, -1)) for p in heads]
        else:
            logliks = [torch.distributions.Normal(p["mean"], p["std"]).log_prob(z).sum(-1) for p in heads]
        return loglik_variance(torch.stack(logliks))

    @torch.no_grad()
    def rollout(self, start: dict[str, Tensor], horizon: int) -> dict:
        """H steps of the current SAC policy in the latent model from ``start`` (N, …).

        Time-major: "feat" (H + 1, N, F), "action" (H, N, A), "reward" (H, N) the reward head at
        the next state, "uncertainty" (H, N), "penalised" (H, N) = reward - lambda * u, "terminal"
        (H, N) (the continuation head below 0.5; never without one), "alive" (H, N): no terminal
        before step t in this rollout, so the transition is one the model can make.
        """
        lam = self.cfg.lompo.penalty
        state, feats, actions, rewards, us, terminals = start, [self.wm.feat(start)], [], [], [], []
        for _ in range(horizon):
            action, _ = self.sac.policy(feats[-1])
            head = int(torch.randint(len(self.wm.rssm.prior_heads), ()))
            state = self.wm.rssm.img_step(state, action, head=head)
            feat = self.wm.feat(state)
            feats.append(feat)
            actions.append(action)
            rewards.append(self.wm.reward(feat))
            us.append(self.uncertainty(state))
            terminals.append(self.wm.continuation(feat) < 0.5)
        reward, u, terminal = torch.stack(rewards), torch.stack(us), torch.stack(terminals)
        ended = torch.cumsum(terminal.float(), 0) - terminal.float()  # terminals strictly before step t
        return {"feat": torch.stack(feats), "action": torch.stack(actions), "reward": reward, "uncertainty": u,
                "penalised": penalised_reward(reward, u, lam), "terminal": terminal, "alive": ended == 0}

    @staticmethod
    def rollout_transitions(roll: dict) -> dict:
        """The rollout's transitions that the model can make (alive), flattened: (M, …)."""
        alive = roll["alive"]
        return {"s": roll["feat"][:-1][alive], "a": roll["action"][alive], "r": roll["penalised"][alive],
                "s2": roll["feat"][1:][alive], "terminal": roll["terminal"][alive].float()}

    # ------------------------------------------------------------------ update

    def update(self, batch: dict[str, Tensor], wm_hook=None, critic_hook=None) -> dict:
        """One update: world-model step; after ``lompo.wm_updates``, rollouts into the buffer and SAC steps."""
        if wm_hook is not None or critic_hook is not None:
            raise UserError("LOMPO takes no CoWorld alignment hooks (use --algo coworld for those)")
        c = self.cfg.lompo
        batch = {k: v.to(self.device) for k, v in batch.items()}
        post, metrics = self.world_model_step(batch)
        if self.updates >= c.wm_updates:
            metrics.update(self.policy_step(post, batch))
        self.updates += 1
        return metrics

    def policy_step(self, post: dict, batch: dict) -> dict:
        c = self.cfg.lompo
        feat = self.wm.feat(post)
        real = real_transitions(feat, batch["action"], batch["reward"], batch["is_first"], batch["is_terminal"])
        metrics = {}
        if (self.updates - c.wm_updates) % c.rollout_every == 0:
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.items()}
            n = flat["deter"].shape[0]
            if c.rollout_starts < n:
                pick = torch.randperm(n, device=self.device)[: c.rollout_starts]
                flat = {k: v[pick] for k, v in flat.items()}
            roll = self.rollout(flat, c.horizon)
            self.buffer.add(self.rollout_transitions(roll))
            metrics.update({"lompo/model_reward": roll["reward"].mean(), "lompo/uncertainty": roll["uncertainty"].mean(),
                            "lompo/penalised_reward": roll["penalised"].mean(),
                            "lompo/alive": roll["alive"].float().mean()})
        sac = {}
        for _ in range(c.sac_updates):
            sample = mixed_batch(real, self.buffer.view(), c.batch, c.real_ratio)
            sac = self.sac.update(sample["s"], sample["a"], sample["r"], sample["s2"], sample["terminal"])
        metrics.update({f"sac/{k}": v for k, v in sac.items()})
        metrics["lompo/real_reward"] = real["r"].mean() if len(real["r"]) else torch.zeros(())
        metrics["lompo/buffer"] = float(len(self.buffer))
        return metrics

    # ------------------------------------------------------------------ acting

    def initial_policy_state(self, n: int):
        return self.wm.rssm.initial(n, self.device), torch.zeros(n, self.action_dim, device=self.device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], state, is_first: np.ndarray, explore: bool):
        """Filter the frame into the posterior, act with SAC on its features (tanh of the mean when
        ``explore`` is False)."""
        latent, prev_action = state
        image = torch.as_tensor(obs["image"], device=self.device)
        first = torch.as_tensor(np.asarray(is_first, dtype=bool), device=self.device)
        latent = self.wm.rssm.obs_step(latent, prev_action, self.wm.encode(image), first)
        action, _ = self.sac.policy(self.wm.feat(latent), explore)
        action = action.float().clamp(-1, 1)
        return action.cpu().numpy().astype(np.float32), (latent, action)

    def value(self, feat: Tensor) -> Tensor:
        """V(s) ~ min(Q1, Q2)(s, deterministic action) on features (…, F)."""
        action, _ = self.sac.policy(feat, explore=False)
        return torch.min(*self.sac.q(feat, action))

    @torch.no_grad()
    def policy_value(self, state) -> np.ndarray:
        latent, _ = state
        return self.value(self.wm.feat(latent)).float().cpu().numpy()

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        return {"wm": self.wm.state_dict(), "model_opt": self.model_opt.state_dict(),
                "sac": self.sac.checkpoint_state(), "buffer": self.buffer.state_dict(), "updates": self.updates}

    def load_checkpoint_state(self, d: dict) -> None:
        try:
            self.wm.load_state_dict(d["wm"])
            self.sac.load_checkpoint_state(d["sac"])
        except RuntimeError as exc:
            raise UserError("checkpoint does not match this agent's configuration (network sizes or action "
                            f"dimension differ); load it with the config it was saved with. Details: {exc}") from None
        self.model_opt.load_state_dict(d["model_opt"])
        self.buffer.load_state_dict(d["buffer"])
        self.updates = int(d["updates"])
