"""The model-free pixel baselines of the paper's comparison (docs/algorithms.md#model-free-pixel-baselines):
DrQ+BC (TD3+BC on a DrQ encoder), CQL from pixels (conservative Q-learning on the same encoder) and
CURL (SAC with a contrastive auxiliary loss and a momentum key encoder), trained on offline data.

The three share everything but their distinctive loss: the frame-stacked, randomly shifted inputs
(:mod:`coworld.nets.pixel`), the conv encoder trained through the critic, twin Q heads with a
Polyak-averaged target, the n-step targets and the actor. :class:`PixelAgent` is that shared agent;
each method is a subclass that overrides one or two hooks (``critic_extra``, ``actor_objective``,
``after_step``). Every distinctive term is a short pure function below, with its equation.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coworld.algos.dreamer import resolve_device
from coworld.algos.sac import soft_update, squashed_logp
from coworld.config import Config
from coworld.errors import UserError
from coworld.nets.pixel import (
    PixelEncoder,
    Trunk,
    channels_first,
    mlp,
    push_frame,
    random_shift,
    stack_frames,
)

# ----------------------------------------------------------------------------------------- equations


def wmean(x: Tensor, w: Tensor) -> Tensor:
    """Mean of x weighted by w (0/1 validity of each transition): sum(w x) / max(sum w, 1)."""
    return (w * x).sum() / w.sum().clamp(min=1.0)


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """sigma(step) = start + (end - start) * min(step / duration, 1) (DrQ-v2's exploration std)."""
    mix = min(max(step / duration, 0.0), 1.0) if duration > 0 else 1.0
    return (1.0 - mix) * start + mix * end


def nstep_return(reward: Tensor, discount: Tensor, is_first: Tensor, t0: Tensor, n: int, gamma: float):
    """n-step targets inside a replay window (docs/algorithms.md#frame-stacks):

        R = sum_{k=1..m} gamma^(k-1) c_(k-1) r_(t0+k),   bootstrap discount = gamma^m c_m,

    with c_k = prod_{j=1..k} discount_(t0+j) (0 after a terminal step) and m <= n the number of steps
    before the window reaches the start of another episode (m = n inside one episode). reward[t]
    arrives with image[t], so the step from t0 earns reward[t0 + 1].

    reward, discount (B, L) float; is_first (B, L) bool; t0 (P,) long window positions.
    Returns (R, bootstrap index t0 + m, bootstrap discount, valid = [m > 0]), each (B, P).
    """
    seen = is_first.float().cumsum(1)
    base = seen[:, t0]
    ret = torch.zeros_like(base)
    cont = torch.ones_like(base)
    alive = torch.ones_like(base)
    m = torch.zeros_like(base)
    for k in range(1, n + 1):
        idx = t0 + k
        alive = alive * (seen[:, idx] == base).float()
        ret = ret + alive * gamma ** (k - 1) * cont * reward[:, idx]
        cont = cont * torch.where(alive > 0, discount[:, idx], torch.ones_like(cont))
        m = m + alive
    valid = (m > 0).float()
    return ret, t0 + m.long(), torch.pow(gamma, m) * cont * valid, valid


def td3bc_actor_loss(q: Tensor, action: Tensor, data_action: Tensor, alpha: float, w: Tensor) -> tuple[Tensor, Tensor]:
    """TD3+BC (Fujimoto & Gu 2021, Eq. 5; V-D4RL's DrQ+BC):

        L_actor = -lambda * mean Q(s, pi(s)) + mean (pi(s) - a)^2,   lambda = alpha / mean |Q(s, pi(s))| (no gradient).

    q (N,), action / data_action (N, A), w (N,) validity. Returns (loss, lambda)."""
    lam = alpha / wmean(q.abs(), w).detach()
    return -lam * wmean(q, w) + wmean(((action - data_action) ** 2).mean(-1), w), lam


def cql_term(q_data: Tensor, q_rand: Tensor, q_cur: Tensor, q_next: Tensor, logp_cur: Tensor, logp_next: Tensor,
             action_dim: int, temp: float, importance: bool, w: Tensor) -> Tensor:
    """CQL(H)'s conservative term for one Q head (Kumar et al. 2020, Eq. 4; V-D4RL cql.py):

        temp * mean_s log sum_a exp(Q(s, a) / temp) - mean_(s,a)~D Q(s, a),

    the log-sum-exp over M uniform actions, M policy actions at s and M policy actions at s' (all
    evaluated at s). ``importance``: each sample is divided by its proposal density (Kumar et al.,
    Appendix F): Q - log(0.5^A) for uniform actions on [-1, 1]^A, Q - log pi(a|.) for policy ones;
    otherwise the data action's Q joins the set unweighted (V-D4RL's default).
    q_data (N,); q_rand / q_cur / q_next, logp_cur / logp_next (N, M); w (N,)."""
    if importance:
        log_uniform = action_dim * math.log(0.5)
        cat = torch.cat([q_rand - log_uniform, q_next - logp_next, q_cur - logp_cur], 1)
    else:
        cat = torch.cat([q_rand, q_data[:, None], q_next, q_cur], 1)
    return wmean(temp * torch.logsumexp(cat / temp, 1) - q_data, w)


def infonce_bilinear(z_anchor: Tensor, z_positive: Tensor, W: Tensor) -> Tensor:
    """CURL's contrastive loss (Laskin et al. 2020, Eq. 2 with the bilinear score of Sec. 4.5):

        logits_ij = z_i^T W z'_j (minus the row's maximum, which leaves the softmax unchanged),
        L = mean_i -log softmax_j(logits_ij)[j = i],

    anchors z_i from the online encoder, keys z'_j from the momentum encoder; the other keys of the
    batch are the negatives. z_anchor, z_positive (N, F); W (F, F)."""
    logits = z_anchor @ (W @ z_positive.T)
    logits = logits - logits.max(1, keepdim=True).values
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


# ------------------------------------------------------------------------------------------ networks


class PixelActor(nn.Module):
    """The actor on (detached) conv features: its own trunk, then a two-layer MLP head.

    kind "drq" (DrQ-v2 / V-D4RL): a = tanh(mu(s)) + clip(sigma * eps, -c, c) with a scheduled sigma,
    kept inside (-1, 1) (straight-through, as DrQ-v2's truncated normal); log pi from N(tanh mu, sigma).
    kind "sac" (CURL): tanh of a Gaussian with learned log std in [log_std_min, log_std_max].
    The deterministic action is tanh(mu) for both."""

    def __init__(self, enc_dim: int, action_dim: int, mf):
        super().__init__()
        self.kind, self.lo, self.hi = mf.actor, mf.log_std_min, mf.log_std_max
        self.trunk = Trunk(enc_dim, mf.feature_dim, mf.trunk_tanh)
        self.head = mlp(mf.feature_dim, mf.hidden, action_dim * (2 if self.kind == "sac" else 1))

    def _params(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.head(z)
        if self.kind != "sac":
            return torch.tanh(out), None
        mu, log_std = out.chunk(2, -1)
        return mu, self.lo + 0.5 * (self.hi - self.lo) * (torch.tanh(log_std) + 1)

    def sample(self, z: Tensor, std: float, clip: float | None) -> tuple[Tensor, Tensor]:
        """z (..., feature_dim) -> (action (..., A), log pi (...)). ``std`` / ``clip``: the drq kind's."""
        mu, log_std = self._params(z)
        if log_std is None:
            eps = torch.randn_like(mu) * std
            if clip is not None:
                eps = eps.clamp(-clip, clip)
            x = mu + eps
            a = x - x.detach() + x.detach().clamp(-1 + 1e-6, 1 - 1e-6)
            return a, torch.distributions.Normal(mu, std).log_prob(a).sum(-1)
        u = mu + torch.randn_like(mu) * log_std.exp()
        return torch.tanh(u), squashed_logp(u, mu, log_std.exp())

    def mode(self, z: Tensor) -> Tensor:
        mu, log_std = self._params(z)
        return mu if log_std is None else torch.tanh(mu)


class TwinCritic(nn.Module):
    """Q1, Q2 on [trunk(h), a]: the trunk projects the conv features, two MLP heads read it."""

    def __init__(self, enc_dim: int, action_dim: int, mf):
        super().__init__()
        self.trunk = Trunk(enc_dim, mf.feature_dim, mf.trunk_tanh)
        self.heads = nn.ModuleList([mlp(mf.feature_dim + action_dim, mf.hidden, 1) for _ in range(2)])

    def q(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """z (N, F) and action (N, A) or (N, M, A) -> (Q1, Q2), each (N,) or (N, M)."""
        if action.dim() == 3:
            z = z[:, None].expand(-1, action.shape[1], -1)
        za = torch.cat([z, action], -1)
        return self.heads[0](za)[..., 0], self.heads[1](za)[..., 0]

    def forward(self, h: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        return self.q(self.trunk(h), action)


# ------------------------------------------------------------------------------------------- agents


class PixelAgent(nn.Module):
    """The shared offline actor-critic on stacked, shifted frames (docs/algorithms.md#model-free-pixel-baselines).

    One update on a (B, L) replay window: the P = L - K - n + 1 transitions whose frame stacks (K
    frames) and n-step targets lie in it (one per window at train.length = K + n); both observations
    randomly shifted; a critic step on the encoder and twin Q heads (plus ``critic_extra``); an actor
    step on detached features every ``actor_every`` updates (``actor_objective``); the Polyak targets
    every ``target_every`` updates; then ``after_step``. Randomness comes from the global torch
    generator, which the run's checkpoint saves and restores.
    """

    name = "model-free"
    momentum_encoder = False  # CURL: a Polyak copy of the encoder computes the targets and the keys

    def __init__(self, cfg: Config, action_dim: int, device="cpu"):
        super().__init__()
        mf = self.mf = cfg.modelfree
        self.cfg, self.action_dim, self.updates = cfg, int(action_dim), 0
        self.value_gamma = mf.gamma  # the critic's discount, for the evaluations' overestimation measure
        self.device = resolve_device(device)
        k, n = mf.frame_stack, mf.nstep
        for key in ("frame_stack", "nstep", "feature_dim", "hidden", "filters", "conv_layers", "actor_every",
                    "target_every", "cql_samples"):
            if getattr(mf, key) <= 0:
                raise UserError(f"modelfree.{key} must be positive; got {getattr(mf, key)}")
        if mf.pad < 0:
            raise UserError(f"modelfree.pad must be >= 0 (pixels of random shift; 0 = no augmentation); got {mf.pad}")
        if mf.cql_temp <= 0:
            raise UserError(f"modelfree.cql_temp must be positive (the log-sum-exp divides Q by it); got {mf.cql_temp}")
        if not 0.0 < mf.gamma <= 1.0:
            raise UserError(f"modelfree.gamma is a discount: in (0, 1]; got {mf.gamma}")
        if cfg.train.amp != "none" or cfg.train.compile:
            raise UserError(f"{self.name} runs eagerly in fp32; leave train.amp at none and train.compile at false")
        if cfg.train.length < k + n:
            raise UserError(f"train.length is {cfg.train.length} but {self.name} needs windows of at least "
                            f"modelfree.frame_stack + modelfree.nstep = {k + n} steps; set --set train.length={k + n}")
        self.encoder = PixelEncoder(3 * k, mf.filters, mf.conv_layers, cfg.env.image_size)
        self.actor = PixelActor(self.encoder.out_dim, self.action_dim, mf)
        self.critic = TwinCritic(self.encoder.out_dim, self.action_dim, mf)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if self.momentum_encoder else None
        if mf.actor == "sac":
            self.log_alpha = nn.Parameter(torch.tensor(math.log(mf.init_temperature)))
        self.build_extra()
        self.to(self.device)
        self.critic_opt = torch.optim.Adam([*self.encoder.parameters(), *self.critic.parameters()], lr=mf.lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=mf.actor_lr)
        self.optimizers = {"critic_opt": self.critic_opt, "actor_opt": self.actor_opt}
        if mf.actor == "sac":
            self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=mf.alpha_lr, betas=(mf.alpha_beta, 0.999))
            self.optimizers["alpha_opt"] = self.alpha_opt
        self.build_extra_optimizers()

    # hooks of the methods ------------------------------------------------------------------------

    def build_extra(self) -> None:
        """Extra parameters of a method (before the move to the device)."""

    def build_extra_optimizers(self) -> None:
        """Extra optimizers of a method (added to ``self.optimizers``)."""

    def critic_extra(self, inp: dict) -> tuple[Tensor, dict]:
        """A term added to the critic loss (CQL); ``inp`` holds h, z, q1, q2, h_next, action, std, w."""
        return torch.zeros((), device=self.device), {}

    def actor_objective(self, q: Tensor, logp: Tensor, action: Tensor, data_action: Tensor, w: Tensor) -> tuple[Tensor, dict]:
        """The actor loss: -Q (drq actor) or alpha log pi - Q (sac actor), averaged."""
        if self.mf.actor == "sac":
            return wmean(self.alpha().detach() * logp - q, w), {}
        return wmean(-q, w), {}

    def after_step(self, obs: Tensor, obs_aug: Tensor, h_metrics: dict) -> None:
        """Called at the end of every update (CURL's contrastive step)."""

    # the shared update ---------------------------------------------------------------------------

    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def std(self) -> float:
        mf = self.mf
        return linear_schedule(mf.std_start, mf.std_end, mf.std_updates, self.updates)

    def transitions(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The (B, L) window -> N = B * P transitions: stacked obs (N, 3K, H, W) uint8, the data action
        taken there (N, A), the n-step return, the stacked bootstrap obs, its discount and validity."""
        k, n = self.mf.frame_stack, self.mf.nstep
        image = batch["image"].to(self.device)
        b, length = image.shape[:2]
        is_first = batch["is_first"].to(self.device).bool()
        t0 = torch.arange(k - 1, length - n, device=self.device)
        ret, boot, disc, valid = nstep_return(batch["reward"].to(self.device).float(),
                                              batch["discount"].to(self.device).float(), is_first, t0, n,
                                              self.mf.gamma)
        obs = stack_frames(image, is_first, t0.expand(b, -1), k)
        nxt = stack_frames(image, is_first, boot, k)
        action = batch["action"].to(self.device).float()[:, t0 + 1]
        flat = lambda x: x.flatten(0, 1)
        return {"obs": flat(obs), "next": flat(nxt), "action": flat(action), "ret": flat(ret),
                "discount": flat(disc), "w": flat(valid)}

    def update(self, batch: dict[str, Tensor]) -> dict:
        mf = self.mf
        tr = self.transitions(batch)
        obs_aug, next_aug = random_shift(tr["obs"], mf.pad), random_shift(tr["next"], mf.pad)
        action, w, std = tr["action"], tr["w"], self.std()
        metrics: dict = {}

        # critic (and encoder)
        h = self.encoder(obs_aug)
        with torch.no_grad():
            h_next = self.encoder(next_aug)
            h_target = self.key_encoder(next_aug) if self.key_encoder is not None else h_next
            a_next, logp_next = self.actor.sample(self.actor.trunk(h_next), std, mf.std_clip)
            v = torch.min(*self.critic_target(h_target, a_next))
            if mf.actor == "sac":
                v = v - self.alpha() * logp_next
            target = tr["ret"] + tr["discount"] * v
        z = self.critic.trunk(h)
        q1, q2 = self.critic.q(z, action)
        td = wmean((q1 - target) ** 2, w) + wmean((q2 - target) ** 2, w)
        extra, extra_metrics = self.critic_extra({"h": h, "z": z, "q1": q1, "q2": q2, "h_next": h_next,
                                                  "action": action, "std": std, "w": w})
        self.critic_opt.zero_grad(set_to_none=True)
        (td + extra).backward()
        self.critic_opt.step()
        metrics.update({"critic/td_loss": td.detach(), "critic/q": q1.detach().mean(),
                        "critic/target": target.mean(), "data/reward": tr["ret"].mean(), **extra_metrics})

        # actor (and temperature)
        if self.updates % mf.actor_every == 0:
            hd = h.detach()
            a, logp = self.actor.sample(self.actor.trunk(hd), std, mf.std_clip)
            q = torch.min(*self.critic(hd, a))
            loss, actor_metrics = self.actor_objective(q, logp, a, action, w)
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_opt.step()
            metrics.update({"actor/loss": loss.detach(), "actor/logp": logp.detach().mean(), **actor_metrics})
            if mf.actor == "sac":  # CURL's temperature loss: alpha * (-log pi - target entropy)
                alpha_loss = wmean(self.alpha() * (-logp.detach() + self.action_dim), w)
                self.alpha_opt.zero_grad(set_to_none=True)
                alpha_loss.backward()
                self.alpha_opt.step()
                metrics["actor/alpha"] = self.alpha().detach()

        # targets
        if self.updates % mf.target_every == 0:
            for target_head, head in zip(self.critic_target.heads, self.critic.heads):
                soft_update(head, target_head, mf.critic_tau)
            if self.key_encoder is not None:  # CURL: encoder and the critic's trunk at the encoder's rate
                soft_update(self.critic.trunk, self.critic_target.trunk, mf.encoder_tau)
                soft_update(self.encoder, self.key_encoder, mf.encoder_tau)
            else:
                soft_update(self.critic.trunk, self.critic_target.trunk, mf.critic_tau)
        self.after_step(tr["obs"], obs_aug, metrics)
        self.updates += 1
        return metrics

    # acting --------------------------------------------------------------------------------------

    def initial_policy_state(self, n: int):
        return None  # the first call (is_first) fills the frame stack

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], state, is_first: np.ndarray, explore: bool):
        """obs["image"] (N, 64, 64, 3) uint8 -> actions (N, A) float32, the last K frames as the state.
        explore=False: the deterministic action tanh(mu); explore=True samples (drq: the scheduled std)."""
        frame = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        first = torch.as_tensor(np.asarray(is_first, dtype=bool), device=self.device)
        stack = push_frame(state, frame, first, self.mf.frame_stack)
        z = self.actor.trunk(self.encoder(channels_first(stack)))
        action = self.actor.sample(z, self.std(), None)[0] if explore else self.actor.mode(z)
        return action.clamp(-1, 1).float().cpu().numpy().astype(np.float32), stack

    @torch.no_grad()
    def policy_value(self, state) -> np.ndarray:
        """min_i Q_i(s, tanh mu(s)) (N,) of the frame stacks held in an ``act`` state: the critic's value
        of the deterministic policy, for the evaluations' overestimation measure (paper Fig. 5b)."""
        h = self.encoder(channels_first(state))
        return torch.min(*self.critic(h, self.actor.mode(self.actor.trunk(h)))).float().cpu().numpy()

    # checkpoints ---------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """Weights (targets and key encoder included), optimizer states and the update counter."""
        return {"nets": self.state_dict(), **{k: o.state_dict() for k, o in self.optimizers.items()},
                "updates": self.updates}

    def load_checkpoint_state(self, d: dict) -> None:
        try:
            self.load_state_dict(d["nets"])
        except RuntimeError as exc:
            raise UserError("checkpoint does not match this agent's configuration (network sizes, frame stack or "
                            f"action dimension differ); load it with the config it was saved with. Details: {exc}") from None
        for key, opt in self.optimizers.items():
            opt.load_state_dict(d[key])
        self.updates = int(d["updates"])


class DrQBCAgent(PixelAgent):
    """DrQ+BC (V-D4RL): the DrQ-v2 actor-critic with TD3+BC's actor loss (:func:`td3bc_actor_loss`)."""

    name = "drqbc"

    def actor_objective(self, q, logp, action, data_action, w):
        loss, lam = td3bc_actor_loss(q, action, data_action, self.mf.bc_alpha, w)
        return loss, {"actor/lambda": lam.detach()}


class CQLAgent(PixelAgent):
    """CQL from pixels (V-D4RL's variant): the critic loss gains :func:`cql_term` for each Q head."""

    name = "cql"

    def critic_extra(self, inp):
        mf = self.mf
        z, h, w = inp["z"], inp["h"], inp["w"]
        n, m = z.shape[0], mf.cql_samples
        rand = torch.rand(n, m, self.action_dim, device=self.device) * 2 - 1
        with torch.no_grad():
            z_cur = self.actor.trunk(h.detach())[:, None].expand(-1, m, -1)
            z_nxt = self.actor.trunk(inp["h_next"])[:, None].expand(-1, m, -1)
            a_cur, logp_cur = self.actor.sample(z_cur, inp["std"], mf.std_clip)
            a_nxt, logp_nxt = self.actor.sample(z_nxt, inp["std"], mf.std_clip)
        qs_rand, qs_cur, qs_nxt = self.critic.q(z, rand), self.critic.q(z, a_cur), self.critic.q(z, a_nxt)
        terms = [cql_term(q_data, q_rand, q_cur, q_nxt, logp_cur, logp_nxt, self.action_dim, mf.cql_temp,
                          mf.cql_importance, w)
                 for q_data, q_rand, q_cur, q_nxt in zip((inp["q1"], inp["q2"]), qs_rand, qs_cur, qs_nxt)]
        total = mf.cql_weight * (terms[0] + terms[1])
        return total, {"critic/cql": total.detach(), "critic/q_random": qs_rand[0].detach().mean(),
                       "critic/q_policy": qs_cur[0].detach().mean()}


class CURLAgent(PixelAgent):
    """CURL (Laskin et al. 2020): SAC on the shared encoder, whose critic trunk output is also trained
    by :func:`infonce_bilinear` against a momentum key encoder, after every update."""

    name = "curl"
    momentum_encoder = True

    def build_extra(self):
        self.W = nn.Parameter(torch.rand(self.mf.feature_dim, self.mf.feature_dim))

    def build_extra_optimizers(self):
        params = [*self.encoder.parameters(), *self.critic.trunk.parameters(), self.W]
        self.curl_opt = torch.optim.Adam(params, lr=self.mf.encoder_lr)
        self.optimizers["curl_opt"] = self.curl_opt

    def after_step(self, obs, obs_aug, metrics):
        z_anchor = self.critic.trunk(self.encoder(obs_aug))  # the anchor: the critic's own shifted view
        with torch.no_grad():
            z_key = self.critic_target.trunk(self.key_encoder(random_shift(obs, self.mf.pad)))  # a second shift
        loss = infonce_bilinear(z_anchor, z_key, self.W)
        self.curl_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.curl_opt.step()
        metrics["curl/loss"] = loss.detach()


AGENTS = {"drqbc": DrQBCAgent, "cql": CQLAgent, "curl": CURLAgent}
