"""CoWorld: collaborative world models for offline visual RL (NeurIPS 2024).

Part 1 (this part): the three collaborative mechanisms and the multi-source
selection, each next to the paper equation it implements (docs/algorithms.md#two-agents, #stage-a, #stage-b,
#stage-c, #multi-source).

    stage A  state alignment          Eq. 3    state_alignment_loss / state_alignment_hook
    stage B  reward alignment         Eqs. 4-5 relabel_reward / eta_at / reward_alignment_hook
    stage C  min-max value constraint Eq. 6    value_constraint_loss / value_constraint_hook
    actions  source/target adapter    (none)   ActionAdapter
    multi    source selection         App. C   domain_distances / select_source
    state    state-input source       Table 4  StateSourceAgent (docs/algorithms.md#state-input-source)

The hook builders return the callables that plug into a DreamerAgent's updates:
``world_model_step(batch, extra_loss=hook)`` and ``behaviour_step(post, critic_extra=hook)``.
Each builder returns ``None`` when its stage is switched off in the config
(the paper's ablations), so ``extra_loss=None`` simply runs a plain Dreamer update.

Shapes follow docs/shapes.md: world-model sequences (B, L, ...), imagination (H + 1, N, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from coworld.algos.dreamer import DreamerAgent, Optimizer
from coworld.config import Config
from coworld.errors import UserError
from coworld.nets import WorldModel

# ---------------------------------------------------------------------------
# Part 1: the collaborative mechanisms
# ---------------------------------------------------------------------------


def embedding_kl(source_embed: torch.Tensor, target_embed: torch.Tensor) -> torch.Tensor:
    """Per-frame KL( softmax(sg e_S) || softmax(e_T) ), softmax over the embedding units.

    source_embed, target_embed: (..., E). Returns (...,). The source side is detached,
    so only ``target_embed`` can receive gradient.
    """
    log_p = F.log_softmax(source_embed.detach().float(), dim=-1)
    log_q = F.log_softmax(target_embed.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# --- Stage A: offline-to-online state alignment (Eq. 3, docs/algorithms.md#stage-a) ---


def state_alignment_loss(
    target_embed: torch.Tensor, source_embed: torch.Tensor, beta2: float, scale: str
) -> torch.Tensor:
    """Eq. 3:  L_dom = beta_2 * KL( softmax(sg E_S(o^T)) || softmax(E_T(o^T)) ).

    target_embed: E_T(o^T), (B, L, E), with gradient to the target encoder.
    source_embed: E_S(o^T), (B, L, E), the source encoder on the same target frames;
    it is detached here, so the source encoder never receives gradient.

    The KL is averaged over frames, then multiplied by the ``align_scale`` factor:
    "released" multiplies by L, which equals the authors' released code (sum over
    the L time steps, mean over the batch); "per_frame" multiplies by 1.
    """
    per_frame = embedding_kl(source_embed, target_embed)  # (B, L)
    if scale == "released":
        factor = target_embed.shape[1]
    elif scale == "per_frame":
        factor = 1
    else:
        raise UserError(f"coworld.align_scale must be 'released' or 'per_frame'; got {scale!r}")
    return beta2 * factor * per_frame.mean()


def state_alignment_hook(source_agent, cfg: Config, source_obs: torch.Tensor | None = None):
    """Build ``extra_loss(out)`` for the TARGET agent's ``world_model_step`` (stage A).

    The source encoder, frozen, embeds the same target frames (``out["image"]``, already
    preprocessed to o / 255 - 0.5, channels-first, so it goes straight to the encoder);
    the loss of :func:`state_alignment_loss` is added to the target world-model loss, so
    only the target encoder (``out["embed"]``) is pulled toward the source's embedding.
    A state-input source embeds ``source_obs`` instead, the target batch's recorded states
    (B, L, n), step for step with its frames (docs/algorithms.md#state-input-source).
    Returns ``None`` when ``cfg.coworld.state_align`` is off.
    """
    if not cfg.coworld.state_align:
        return None
    if getattr(source_agent.wm, "obs_key", "image") != "image" and source_obs is None:
        raise ValueError("a state-input source needs the target batch's states for stage A")

    def extra_loss(out):
        with torch.no_grad():
            if source_obs is None:  # without gradient the encoder runs in chunks of frames (NO_GRAD_CHUNK)
                source_embed = source_agent.wm.encoder(out["image"])
            else:
                source_embed = source_agent.wm.encode(source_obs.to(out["embed"].device))
        loss = state_alignment_loss(out["embed"], source_embed, cfg.coworld.beta2, cfg.coworld.align_scale)
        return loss, {"coworld/align_loss": loss.detach()}

    return extra_loss


# --- Stage B: online-to-offline reward alignment (Eqs. 4-5, docs/algorithms.md#stage-b) ---


def relabel_reward(pred_source_reward: torch.Tensor, true_target_reward: torch.Tensor, k: float) -> torch.Tensor:
    """Eq. 4:  r~ = (1 - k) * sg(rhat_S(s'^T)) + k * r^T.

    The source reward head's prediction on the target latents is mixed with the true
    target reward; k (the "target-informed reward factor") weighs the true reward.
    The result carries no gradient: it is a regression target.
    """
    return (1 - k) * pred_source_reward.detach() + k * true_target_reward


def eta_at(progress: float, cfg: Config) -> float:
    """Eta of Eq. 5, the weight of the source's own reward NLL, at ``progress`` in [0, 1] through
    the reward-alignment stage (0 at its first update, 1 at its end).

    "linear" (the paper: eta "gradually decreases ... throughout this training stage"): from
    eta_start at the first reward-alignment update down to eta_floor at the end of the stage.
    "frozen": the constant eta_frozen (the released code never advances its counter).
    """
    c = cfg.coworld
    if c.eta_schedule == "frozen":
        return c.eta_frozen
    if c.eta_schedule != "linear":
        raise UserError(f"coworld.eta_schedule must be 'linear' or 'frozen'; got {c.eta_schedule!r}")
    frac = min(max(progress, 0.0), 1.0)
    return c.eta_start + frac * (c.eta_floor - c.eta_start)


def reward_nll(pred_mean: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``reward`` under a unit-variance Gaussian at ``pred_mean``."""
    return (0.5 * (reward - pred_mean) ** 2).mean() + 0.5 * math.log(2 * math.pi)


def reward_alignment_extra(
    nll_source: torch.Tensor, nll_target: torch.Tensor, eta: float, reward_scale: float
) -> torch.Tensor:
    """The amount added to the source world-model loss so that its reward term becomes Eq. 5.

    The agent's own loss already holds c_r * NLL_S. Adding
        (eta - 1) * c_r * NLL_S + (1 - eta) * c_r * NLL_T
    turns it into
        c_r * [ eta * NLL(r^S | rhat_S(s^S)) + (1 - eta) * NLL(r~ | rhat_S(s'^T)) ].
    """
    return reward_scale * ((eta - 1) * nll_source + (1 - eta) * nll_target)


def reward_alignment_hook(source_agent, target_batch: dict, eta: float, cfg: Config, adapter: "ActionAdapter"):
    """Build ``extra_loss(out)`` for the SOURCE agent's ``world_model_step`` (stage B).

    On the target batch (o^T, a^T, r^T) the source encoder and RSSM run WITH gradient
    (target actions mapped through ``adapter``) to give s'^T; the source reward head's
    prediction there is relabelled with Eq. 4 and regressed onto (the NLL_T term), and
    the source's own reward NLL is rescaled by eta (see :func:`reward_alignment_extra`).
    Image and KL losses stay on the source batch only: the target pass adds nothing else.
    Returns ``None`` when ``cfg.coworld.reward_align`` is off.
    """
    if not cfg.coworld.reward_align:
        return None
    wm = source_agent.wm
    device = next(wm.parameters()).device
    target_batch = {k: v.to(device) for k, v in target_batch.items()}
    # eta as a 0-d float64 tensor: the same arithmetic as the Python float (the factors are rounded to
    # the loss's float32 either way), and a compiled update takes it as an input instead of a constant
    eta_metric, eta = torch.tensor(eta), torch.tensor(eta, dtype=torch.float64, device=device)

    def extra_loss(out):
        # NLL_S: the source's own reward term, recomputed on the source posterior features
        # the way the world-model loss computes it (mean over B, L of the per-step NLL).
        nll_source = wm.reward_nll(out["feat"], out["reward"]).mean()
        # NLL_T: the source model on the target batch (gradient reaches encoder, RSSM, head).
        embed = wm.encode(target_batch[getattr(wm, "obs_key", "image")])  # frames, or a state-input source's recorded states
        action = adapter(target_batch["action"])
        post, _ = wm.observe(embed, action, target_batch["is_first"])
        pred = wm.reward(wm.feat(post))  # (B, L)
        relabelled = relabel_reward(pred, target_batch["reward"], cfg.coworld.k)
        nll_target = reward_nll(pred, relabelled)
        loss = reward_alignment_extra(nll_source, nll_target, eta, cfg.model.reward_scale)
        metrics = {
            "coworld/eta": eta_metric,
            "coworld/reward_nll_source": nll_source.detach(),
            "coworld/reward_nll_target": nll_target.detach(),
            "coworld/relabelled_reward": relabelled.mean(),
        }
        return loss, metrics

    extra_loss.draws_random = True  # the filter samples latents (see DreamerAgent's add_extra)
    return extra_loss


# --- Stage C: min-max value constraint (Eq. 6, docs/algorithms.md#stage-c) ---------------


def value_constraint_loss(
    v_target: torch.Tensor, v_source: torch.Tensor, weight: torch.Tensor, alpha: float, no_max: bool = False
) -> torch.Tensor:
    """The extra term of Eq. 6:  alpha * mean( w_t * max(v_T(s_t), sg v_S(s_t)) ).

    Where the frozen source critic values a state at least as high as the target critic,
    the max picks the constant sg v_S and the term gives no gradient; where v_T is higher,
    the gradient alpha * w_t / n pushes v_T down. ``no_max`` is the paper's "w/o max"
    ablation: alpha * mean(w_t * v_T), which pushes every value down.
    v_target, v_source, weight: same shape, e.g. (H, N).
    """
    if no_max:
        capped = v_target
    else:
        # torch.where, not torch.maximum: at a tie the gradient goes wholly to sg v_S (none to v_T).
        v_source = v_source.detach()
        capped = torch.where(v_target > v_source, v_target, v_source)
    return alpha * (weight.detach() * capped).mean()


def value_constraint_hook(source_agent, cfg: Config):
    """Build ``critic_extra(imag)`` for the TARGET agent's ``behaviour_step`` (stage C).

    The source critic, frozen, is evaluated on the target's imagined features; the
    term of :func:`value_constraint_loss` is taken over the same steps as the critic
    regression (the states that have a lambda-return target).
    Returns ``None`` when ``cfg.coworld.value_constraint`` is off.
    """
    if not cfg.coworld.value_constraint:
        return None

    def critic_extra(imag):
        steps = imag["target"].shape[0]  # critic regresses on the first `steps` states
        feat = imag["feat"][:steps].detach()
        with torch.no_grad():
            v_source = source_agent.critic(feat)
        v_target = imag["value"][:steps]
        weight = imag["weight"][:steps]
        loss = value_constraint_loss(v_target, v_source, weight, cfg.coworld.alpha, cfg.coworld.no_max)
        metrics = {
            "coworld/value_constraint": loss.detach(),
            "coworld/source_value": v_source.mean(),
            "coworld/capped_frac": (v_target.detach() > v_source).float().mean(),
        }
        return loss, metrics

    return critic_extra


# --- Action adapter (docs/algorithms.md#two-agents) -------------------------------


class ActionAdapter:
    """Maps target actions (..., A_T) into the source action space (..., A_S), for the source
    model reading target sequences (stage B) (``coworld.action_adapter``):

    "pad": keep the first min(A_S, A_T) dimensions, zero-pad the rest;
    "strict": the two spaces must have the same dimension (refused otherwise, before training).
    """

    def __init__(self, source_dim: int, target_dim: int, kind: str = "pad"):
        if kind not in ("pad", "strict"):
            raise UserError(f"coworld.action_adapter must be 'pad' or 'strict'; got {kind!r}")
        if kind == "strict" and source_dim != target_dim:
            raise UserError(
                f"coworld.action_adapter is 'strict' but the source has {source_dim}-D actions and the target "
                f"{target_dim}-D; use --set coworld.action_adapter=pad to map them (first dims kept, rest zero)"
            )
        self.source_dim = source_dim
        self.target_dim = target_dim

    def __call__(self, action: torch.Tensor) -> torch.Tensor:
        if action.shape[-1] != self.target_dim:
            raise UserError(
                f"action adapter expects target actions with {self.target_dim} dims, got {action.shape[-1]}; "
                "check that the target dataset matches the target environment"
            )
        keep = min(self.source_dim, self.target_dim)
        out = action.new_zeros(*action.shape[:-1], self.source_dim)
        out[..., :keep] = action[..., :keep]
        return out


# --- Multi-source selection (paper Appendix C, docs/algorithms.md#multi-source) ---


@torch.no_grad()
def domain_distances(target_agent, source_agents, target_images: torch.Tensor,
                     source_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """D_i = per-frame mean KL( softmax(sg E_Si(o^T)) || softmax(E_T(o^T)) ), one per source.

    target_images: (B, L, 64, 64, 3) uint8 target frames. ``source_inputs``: what each source encodes
    (default the same frames; a state-input source: the frames' recorded states). Returns (K,).
    """
    def embed(agent, inputs):
        return agent.wm.encode(inputs.to(next(agent.wm.parameters()).device)).float().cpu()

    target_embed = embed(target_agent, target_images)
    inputs = source_inputs or [target_images] * len(source_agents)
    return torch.stack([embedding_kl(embed(src, x), target_embed).mean() for src, x in zip(source_agents, inputs)])


def select_source(distances: torch.Tensor) -> int:
    """The closest source: argmin_i D_i (one-hot weights over the K candidates)."""
    return int(torch.argmin(distances))


# --- State-input source (paper Table 4, docs/algorithms.md#state-input-source) ------------


class StateSourceAgent(DreamerAgent):
    """A DreamerV2 agent whose world model reads the low-dimensional ``state`` observation through an
    MLP encoder and reconstructs it (``WorldModel(state_dim=n)``); RSSM, heads, actor and critic are
    those of the image agent, so its features have the target's layout (stage C reads them).

    It acts on ``obs["state"]`` and filters batches' ``state`` key: the inherited image paths are
    handed the state in the image's place (the world model's ``encode`` takes either).
    """

    def __init__(self, cfg: Config, action_dim: int, state_dim: int, device="cpu"):
        super().__init__(cfg, action_dim, device=device)
        m, b = cfg.model, cfg.behaviour
        self.state_dim = int(state_dim)
        self.wm = WorldModel(cfg, self.action_dim, state_dim=self.state_dim).to(self.device)
        self.model_opt = Optimizer(self.wm.parameters(), m.lr, eps=b.eps, clip=b.grad_clip,
                                   weight_decay=m.weight_decay, scaler=cfg.train.amp == "fp16", device=self.device)

    def act(self, obs, state, is_first, explore):
        return super().act({"image": obs["state"]}, state, is_first, explore)

    def posterior(self, batch):
        return super().posterior({**batch, "image": batch["state"]})
