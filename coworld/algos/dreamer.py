"""The DreamerV2 agent: a world-model step (docs/algorithms.md#world-model) and behaviour learning in
imagination (docs/algorithms.md#behaviour-learning).

Reward / state convention used throughout imagination (time-major, H + 1 states s_0..s_H):
the reward head at state s_t predicts the reward received on *entering* s_t (as in the data,
where reward[t] arrives with image[t]). The reward of the transition s_t -> s_{t+1} is
therefore the head's output at s_{t+1}; :func:`lambda_return` takes those H transition
rewards, ``reward[t]`` belonging to s_t -> s_{t+1}.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from coworld.config import Config, cache_root
from coworld.errors import UserError
from coworld.nets import Actor, Critic, WorldModel, glorot_init


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, lam: float) -> Tensor:
    """TD(lambda) targets in forward time order (docs/algorithms.md#behaviour-learning):

        R_t = reward[t] + discount[t] * ((1 - lam) * value[t + 1] + lam * R_{t + 1}),
        R_H = value[H]  (bootstrap with the value of the last imagined state).

    reward (H, N): reward of the transition s_t -> s_{t+1}; value (H + 1, N): v(s_0..s_H);
    discount (H, N): discount of that transition (gamma, times the predicted continuation).
    Returns (H, N): R_0..R_{H-1}, R_t belonging to state s_t.
    """
    ret = value[-1]
    out = []
    for t in reversed(range(reward.shape[0])):
        ret = reward[t] + discount[t] * ((1 - lam) * value[t + 1] + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1])


def discount_weights(discount: Tensor) -> Tensor:
    """w_0 = 1, w_t = prod_{i < t} discount[i] (docs/algorithms.md#behaviour-learning): (H, N) -> (H + 1, N), detached."""
    ones = torch.ones_like(discount[:1])
    return torch.cumprod(torch.cat([ones, discount], 0), 0).detach()


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} was asked for but CUDA is not available; use --set train.device=cpu")
    return device


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU lists bf16 matrix instructions (AVX512-BF16 or AMX-BF16); None where unknown."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    return ("avx512_bf16" in flags or "amx_bf16" in flags) if flags else None


def warn_slow_bf16(device: torch.device, amp: str) -> None:
    """One warning when bf16 autocast is asked for on a CPU without bf16 instructions: there every
    bf16 op is emulated (the tiny update measured ~10x slower than fp32 on an AVX2-only CPU)."""
    if amp == "bf16" and device.type == "cpu" and cpu_has_bf16() is False:
        warnings.warn("train.amp=bf16 on a CPU without AVX512-BF16 / AMX: bf16 is emulated and slower than "
                      "fp32 here (about 10x for the tiny update); use train.amp=none", RuntimeWarning, stacklevel=3)


class Optimizer:
    """Adam with grad-norm clipping, DreamerV2's weight decay and, for fp16, loss scaling.

    Weight decay as in DreamerV2 and V-D4RL: every parameter is multiplied by (1 - wd)
    before each Adam step (not scaled by the learning rate, unlike AdamW). The gradient is that
    of the loss at the parameters the forward pass used.

    ``step(loss)`` = ``zero_grad()``, ``backward(loss)``, ``apply()``; the agent calls the three
    parts itself to back-propagate two losses (actor and critic) in one backward pass.
    """

    def __init__(self, params, lr, eps, clip, weight_decay=0.0, scaler=False, device="cpu"):
        self.params = list(params)
        # fused: one kernel for all parameters (CPU or CUDA) instead of a loop of small ops; the same
        # update up to float rounding, ~4x faster for the tiny preset's world model (0.3 vs 1.3 ms)
        fused = torch.device(device).type in ("cpu", "cuda") and all(p.is_floating_point() for p in self.params)
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps, fused=fused)
        self.clip = clip
        self.decay = 1.0 - weight_decay
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if scaler else None

    def step(self, loss: Tensor) -> Tensor:
        """Backward, decay, clip, step. Returns the gradient norm before clipping (a tensor, no sync)."""
        self.zero_grad()
        self.scaled(loss).backward()
        return self.apply()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def scaled(self, loss: Tensor) -> Tensor:
        """The loss to back-propagate (multiplied by the fp16 loss scale, if any)."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def apply(self) -> Tensor:
        """After backward: weight decay, clip, Adam step. Returns the gradient norm before clipping."""
        if self.decay != 1.0:  # after backward: the graph saved the parameters the forward pass used
            with torch.no_grad():
                torch._foreach_mul_(self.params, self.decay)
        if self.scaler is None:
            norm = nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
        else:
            self.scaler.unscale_(self.opt)
            norm = nn.utils.clip_grad_norm_(self.params, self.clip)
            self.scaler.step(self.opt)
            self.scaler.update()
        return norm.detach()

    def state_dict(self) -> dict:
        d = {"opt": self.opt.state_dict()}
        if self.scaler is not None:
            d["scaler"] = self.scaler.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        self.opt.load_state_dict(d["opt"])
        if self.scaler is not None and "scaler" in d:
            self.scaler.load_state_dict(d["scaler"])


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters get no gradient inside the block; gradients still flow through the module."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def add_extra(loss: Tensor, hook, inputs: dict, metrics: dict) -> Tensor:
    """``loss + hook(inputs)[0]`` (the hook's metrics go into ``metrics``); ``loss`` when no hook."""
    if hook is None:
        return loss
    if getattr(hook, "draws_random", False) and torch.compiler.is_compiling():
        # a hook that samples (stage B filters the target batch) runs as a graph of its own, after
        # the loss's: inside one graph the compiler may interleave two independent sampling chains,
        # and the random numbers would no longer go where eager mode puts them
        torch._dynamo.graph_break()
    extra, extra_metrics = hook(inputs)
    metrics.update(extra_metrics)
    return loss + extra.float()


def compile_cache_dir() -> str:
    """Where inductor keeps compiled kernels and graphs across processes: $TORCHINDUCTOR_CACHE_DIR
    if set, else $COWORLD_CACHE/inductor, else $XDG_CACHE_HOME/coworld/inductor (~/.cache/...)."""
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache_root() / "inductor")


_compile_state = {"failed": False, "configured": False}
# set at import, before anything asks inductor for its cache dir (it then fixes its default in the environment)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())


def _configure_compile() -> None:
    if _compile_state["configured"]:
        return
    _compile_state["configured"] = True
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True  # compiled graphs reused by later processes
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True  # forward + backward graphs too
    except (ImportError, AttributeError):
        pass
    # one compiled entry per agent and hook kind (source / target / multi-source): allow a few more
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)


class CompiledStep:
    """``fn`` run through ``torch.compile`` (forward and loss; autograd then runs the compiled
    backward), or eagerly.

    Random numbers come from torch's generator in the same order as in eager mode (inductor's
    ``fallback_random``), so a compiled update equals the eager one up to float rounding. The
    first call prints how long compiling took. If compiling fails (no C compiler, an unsupported
    op) the process warns once and runs every step eagerly from then on.
    """

    def __init__(self, fn, name: str, enabled: bool):
        self.fn, self.name, self.enabled = fn, name, enabled
        self.compiled = None
        if enabled:
            _configure_compile()
            self.compiled = torch.compile(fn, options={"fallback_random": True})
        self.timed = False

    def __call__(self, *args):
        if not self.enabled or _compile_state["failed"]:
            return self.fn(*args)
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        start = time.perf_counter()
        try:
            out = self.compiled(*args)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager
            _compile_state["failed"] = True
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}); "
                          "running the updates eagerly (train.compile=false gives the same results up to "
                          "float rounding)", RuntimeWarning, stacklevel=2)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            return self.fn(*args)
        if not self.timed:
            self.timed = True
            print(f"[compile] {self.name}: first call (compilation + one step) {time.perf_counter() - start:.1f} s; "
                  f"cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}", file=sys.stderr, flush=True)
        return out


class DreamerAgent(nn.Module):
    """DreamerV2: world model, actor, critic, slow critic and their optimizers (docs/algorithms.md#world-model,
    #behaviour-learning)."""

    def __init__(self, cfg: Config, action_dim: int, device="cpu"):
        super().__init__()
        self.cfg, self.action_dim = cfg, int(action_dim)
        self.device = resolve_device(device)
        m, b = cfg.model, cfg.behaviour
        self.wm = WorldModel(cfg, self.action_dim)
        F = self.wm.feat_dim
        self.actor = Actor(F, self.action_dim, b.actor_units, b.actor_layers, b.actor_min_std, b.actor_dist)
        self.critic = Critic(F, b.critic_units, b.critic_layers)
        if m.init == "glorot":  # the world model initialises itself
            for net in (self.actor, self.critic):
                glorot_init(net)
        self.slow_critic = Critic(F, b.critic_units, b.critic_layers)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)
        self.to(self.device)

        amp = cfg.train.amp
        warn_slow_bf16(self.device, amp)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        scaler = amp == "fp16"
        opt = dict(eps=b.eps, clip=b.grad_clip, scaler=scaler, device=self.device)
        self.model_opt = Optimizer(self.wm.parameters(), m.lr, weight_decay=m.weight_decay, **opt)
        self.actor_opt = Optimizer(self.actor.parameters(), b.actor_lr, weight_decay=b.weight_decay, **opt)
        self.critic_opt = Optimizer(self.critic.parameters(), b.critic_lr, weight_decay=b.weight_decay, **opt)
        self.updates = 0
        # train.compile: the forward pass and loss of each step (hooks included) as one compiled
        # graph; autograd runs its compiled backward; the optimizer steps stay eager.
        self._wm_losses = CompiledStep(self.wm_losses, "world-model step", cfg.train.compile)
        self._behaviour_losses = CompiledStep(self.behaviour_losses, "behaviour step", cfg.train.compile)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ world model

    def world_model_step(self, batch: dict[str, Tensor], extra_loss=None) -> tuple[dict, dict]:
        """One world-model gradient step on a (B, L) batch. ``extra_loss(out) -> (loss, metrics)``
        is added to the world-model loss before backward. Returns (detached posterior, metrics)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss, post, metrics = self._wm_losses(batch, extra_loss)
        metrics["model/grad_norm"] = self.model_opt.step(loss)
        return post, metrics

    def wm_losses(self, batch: dict[str, Tensor], extra_loss=None) -> tuple[Tensor, dict, dict]:
        """The forward pass of :meth:`world_model_step`: (loss, detached posterior, metrics)."""
        with self.autocast():
            loss, out, metrics = self.wm.loss(batch)
            loss = add_extra(loss, extra_loss, out, metrics)
        metrics["model/loss"] = loss.detach()
        post = {k: v.detach() for k, v in out["post"].items()}
        return loss, post, metrics

    @torch.no_grad()
    def posterior(self, batch: dict[str, Tensor]) -> dict:
        """Posterior states (B, L, …) of a batch under the current model, without gradient."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.autocast():
            embed = self.wm.encode(batch["image"])
            post, _ = self.wm.observe(embed, batch["action"], batch["is_first"])
        return post

    # ------------------------------------------------------------------ behaviour

    def imagine(self, start: dict[str, Tensor], horizon: int) -> dict:
        """Roll the prior H steps from ``start`` (N, …) with actor samples (docs/algorithms.md#behaviour-learning).

        Returns time-major "state" dict (H + 1, N, …), "feat" (H + 1, N, F), "action"
        (H, N, A) (action[t] taken in s_t), "logp" and "entropy" (H, N) of the policy at s_t.
        Actions fed to the model are clipped to [-1, 1] with a straight-through gradient,
        so the model only sees actions of the range it was trained on.
        """
        states, actions, logps, ents = [start], [], [], []
        state = start
        for _ in range(horizon):
            dist = self.actor(self.wm.feat(state).detach())
            action = dist.rsample()
            logps.append(dist.log_prob(action.detach()))
            ents.append(dist.entropy())
            action = action + (action.clamp(-1, 1) - action).detach()
            state = self.imagine_step(state, action)
            states.append(state)
            actions.append(action)
        state = {k: torch.stack([s[k] for s in states]) for k in start}
        return {
            "state": state, "feat": self.wm.feat(state), "action": torch.stack(actions),
            "logp": torch.stack(logps), "entropy": torch.stack(ents),
        }

    def imagine_step(self, state: dict, action: Tensor) -> dict:
        """One imagined transition; OfflineDV2 picks an ensemble member here."""
        return self.wm.rssm.img_step(state, action)

    def imagined_reward(self, imag: dict) -> Tensor:
        """Reward predicted at each imagined state (H + 1, N); see the module docstring."""
        return self.wm.reward(imag["feat"])

    def behaviour_step(self, post: dict, critic_extra=None) -> dict:
        """Imagine from every posterior state and update the actor, then the critic (docs/algorithms.md#behaviour-learning).

        ``critic_extra(imag) -> (loss, metrics)`` is added to the critic loss; ``imag`` then
        holds "feat" (H + 1, N, F) detached, "value" (H + 1, N) with grad, "weight"
        (H + 1, N) and "target" (H, N).

        Both losses are computed first and back-propagated together: their graphs share no
        parameter (the critic reads detached features), and the critic's forward pass does not
        read the actor, so this equals an actor step followed by a critic step.

        With ``behaviour.imag_chunk = C`` and more than C start states, the starts are taken C at a
        time and each chunk's losses, weighted by its share of the starts, are back-propagated before
        the next chunk is imagined: every loss is a mean over start states (the hooks' too), so the
        accumulated gradient is that of the whole batch (for the same noise draws), and the metrics
        are the same weighted means.
        """
        n = post["deter"].shape[0] * post["deter"].shape[1]
        chunk = self.cfg.behaviour.imag_chunk
        self.actor_opt.zero_grad()
        self.critic_opt.zero_grad()
        if not chunk or n <= chunk:
            parts = [(post, 1.0)]
        else:
            flat = {k: v.reshape(1, n, *v.shape[2:]) for k, v in post.items()}  # (1, B * L, ...)
            parts = [({k: v[:, i:i + chunk] for k, v in flat.items()}, min(chunk, n - i) / n)
                     for i in range(0, n, chunk)]
        metrics: dict = {}
        for part, share in parts:
            with frozen(self.wm):
                actor_loss, critic_loss, part_metrics = self._behaviour_losses(part, critic_extra)
            losses = [self.actor_opt.scaled(actor_loss * share), self.critic_opt.scaled(critic_loss * share)]
            torch.autograd.backward(losses)
            for k, v in part_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + share * v
        metrics["actor/grad_norm"] = self.actor_opt.apply()
        metrics["critic/grad_norm"] = self.critic_opt.apply()
        return metrics

    def behaviour_losses(self, post: dict, critic_extra=None) -> tuple[Tensor, Tensor, dict]:
        """The forward pass of :meth:`behaviour_step` (world model frozen by the caller):
        (actor loss, critic loss, metrics)."""
        b = self.cfg.behaviour
        start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in post.items()}
        with self.autocast():
            imag = self.imagine(start, b.horizon)
            reward = self.imagined_reward(imag).float()[1:]  # (H, N): transition rewards
            discount = b.gamma * self.wm.continuation(imag["feat"][1:])
            value = self.slow_critic(imag["feat"])  # (H + 1, N)
            target = lambda_return(reward, value, discount, b.lam)
            weight = discount_weights(discount)
            if b.actor_grad == "dynamics":
                objective = target
            else:
                advantage = (target - value[:-1]).detach()
                objective = imag["logp"] * advantage
                if b.actor_grad == "both":
                    mix = b.actor_grad_mix
                    objective = mix * target + (1 - mix) * objective
            actor_loss = -(weight[:-1] * (objective + b.actor_ent * imag["entropy"])).mean()
        metrics = {
            "actor/loss": actor_loss.detach(),
            "actor/entropy": imag["entropy"].mean().detach(),
            "imag/reward": reward.mean().detach(),
            "imag/value": value.mean().detach(),
            "imag/return": target.mean().detach(),
        }

        crit = {
            "feat": imag["feat"].detach(), "weight": weight, "target": target.detach(),
            "state": {k: v.detach() for k, v in imag["state"].items()},
        }
        with self.autocast():
            crit["value"] = self.critic(crit["feat"])
            critic_loss = (weight[:-1] * 0.5 * (crit["value"][:-1] - crit["target"]) ** 2).mean()
            critic_loss = add_extra(critic_loss, critic_extra, crit, metrics)
        metrics["critic/loss"] = critic_loss.detach()
        return actor_loss, critic_loss, metrics

    def update(self, batch: dict[str, Tensor], wm_hook=None, critic_hook=None) -> dict:
        """World-model step, behaviour step, and the slow-critic hard copy every N updates.
        ``wm_hook`` and ``critic_hook`` are added to the two losses, as ``extra_loss`` of
        :meth:`world_model_step` and ``critic_extra`` of :meth:`behaviour_step` (how CoWorld's
        stages and finetuning penalties plug in)."""
        post, metrics = self.world_model_step(batch, extra_loss=wm_hook)
        metrics.update(self.behaviour_step(post, critic_extra=critic_hook))
        self.finish_update()
        return metrics

    def finish_update(self) -> None:
        """Count an update; copy critic -> slow critic every ``slow_critic_every`` updates."""
        self.updates += 1
        if self.updates % self.cfg.behaviour.slow_critic_every == 0:
            self.slow_critic.load_state_dict(self.critic.state_dict())

    # ------------------------------------------------------------------ acting

    def initial_policy_state(self, n: int):
        """(latent state, previous action) for n parallel environments."""
        return self.wm.rssm.initial(n, self.device), torch.zeros(n, self.action_dim, device=self.device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], state, is_first: np.ndarray, explore: bool):
        """obs["image"] (N, 64, 64, 3) uint8 -> actions (N, A) float32 in [-1, 1], new state.
        explore=False takes the actor's mean (tanh of the mean output)."""
        latent, prev_action = state
        image = torch.as_tensor(obs["image"], device=self.device)
        is_first = torch.as_tensor(np.asarray(is_first, dtype=bool), device=self.device)
        with self.autocast():
            embed = self.wm.encode(image)
            latent = self.wm.rssm.obs_step(latent, prev_action, embed, is_first)
            dist = self.actor(self.wm.feat(latent))
            action = dist.sample() if explore else dist.mode  # the mode: tanh(x_mu) for either actor_dist
        action = action.float().clamp(-1, 1)
        latent = {k: v.float() for k, v in latent.items()}
        return action.cpu().numpy().astype(np.float32), (latent, action)

    def value(self, feat: Tensor) -> Tensor:
        """Critic value v(feat) (…)."""
        return self.critic(feat)

    @torch.no_grad()
    def policy_value(self, state) -> np.ndarray:
        """Critic value (N,) of the latent states held in an ``act`` policy state."""
        latent, _ = state
        return self.critic(self.wm.feat(latent)).float().cpu().numpy()

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        """Weights, optimizer states and the update counter; loadable with weights_only=True."""
        return {
            "wm": self.wm.state_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "slow_critic": self.slow_critic.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.updates,
        }

    def load_checkpoint_state(self, d: dict) -> None:
        try:
            self.wm.load_state_dict(d["wm"])
            self.actor.load_state_dict(d["actor"])
            self.critic.load_state_dict(d["critic"])
            self.slow_critic.load_state_dict(d["slow_critic"])
        except RuntimeError as exc:
            raise UserError(
                "checkpoint does not match this agent's configuration (network sizes or action "
                f"dimension differ); load it with the config it was saved with. Details: {exc}"
            ) from None
        self.model_opt.load_state_dict(d["model_opt"])
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.updates = int(d["updates"])
