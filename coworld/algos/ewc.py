"""Elastic weight consolidation (Kirkpatrick et al. 2017) for the DV2 Finetune + EWC baseline
(docs/algorithms.md#dv2-finetune-ewc).

After online pretraining in the source, the agent's weights theta* and a diagonal Fisher F are kept;
while it is finetuned on the target data every loss gets

    L_EWC = lambda / 2 * sum_i F_i (theta_i - theta*_i)^2

over the parameters of that loss's module (world model, actor, critic; the slow critic is a copy and
gets none). F is an *empirical* Fisher from batch gradients: B times the mean over N source batches of
the squared gradient of the agent's own (batch-mean) loss on that batch. Per-sample gradients would
cost B * L backward passes per batch; near a minimum the squared gradient of a mean over B independent
sequences is about 1 / B of the per-sequence Fisher, hence the factor B (the L steps of a window are
strongly correlated and count as one sample). With a negative log-likelihood loss that Fisher
approximates the loss's Hessian, so ``lambda = 1`` makes the penalty EWC's Laplace estimate of how much
the source loss would grow (source and target weighted equally); there is no further normalisation,
each module's penalty stays in the units of its own loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from coworld.algos.dreamer import frozen
from coworld.errors import UserError

MODULES = ("wm", "actor", "critic")  # the agent attributes whose parameters are consolidated


def ewc_penalty(params: list[Tensor], anchors: list[Tensor], fisher: list[Tensor], lam: float) -> Tensor:
    """L_EWC = lambda / 2 * sum_i F_i (theta_i - theta*_i)^2, summed over every element of every tensor.

    params: the current theta (with gradient); anchors: theta* and fisher: F, same shapes, no gradient.
    Its gradient is lambda * F_i * (theta_i - theta*_i).
    """
    total = params[0].new_zeros((), dtype=torch.float32)
    for p, a, f in zip(params, anchors, fisher, strict=True):
        total = total + (f * (p.float() - a) ** 2).sum()
    return 0.5 * lam * total


def empirical_fisher(gradients: Iterable[list[Tensor]], scale: float = 1.0) -> list[Tensor]:
    """F_i = scale * (1 / N) * sum_n g_{n,i}^2: the mean of the squared gradients of N batches, times
    ``scale`` (the batch size B: from batch-mean gradients to a per-sequence Fisher, see the module doc).

    gradients: one list of tensors (one per parameter) per batch. Returns one tensor per parameter.
    """
    total, n = None, 0
    for grads in gradients:
        squares = [g.detach().float() ** 2 for g in grads]
        total = squares if total is None else [t + s for t, s in zip(total, squares, strict=True)]
        n += 1
    if n == 0:
        raise UserError("the Fisher needs at least one batch; set coworld.ewc_batches >= 1")
    return [t * (scale / n) for t in total]


def named_params(agent, module: str) -> list[tuple[str, Tensor]]:
    return list(getattr(agent, module).named_parameters())


def batch_gradients(agent, batch: dict) -> dict[str, list[Tensor]]:
    """Gradients of the agent's own losses on one batch, per module: the world-model loss w.r.t. the
    world model, then (imagining from the batch's posterior, world model frozen) the actor loss w.r.t.
    the actor and the critic loss w.r.t. the critic. Parameters a loss does not reach get zeros."""
    def grads(loss, module):
        params = [p for _, p in named_params(agent, module)]
        out = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]

    batch = {k: v.to(agent.device) for k, v in batch.items()}
    loss, post, _ = agent.wm_losses(batch)
    result = {"wm": grads(loss, "wm")}
    with frozen(agent.wm):
        actor_loss, critic_loss, _ = agent.behaviour_losses(post)
    result["actor"] = grads(actor_loss, "actor")
    result["critic"] = grads(critic_loss, "critic")
    return result


class EWC:
    """theta* and F of one agent's world model, actor and critic, computed once (:meth:`compute`) and
    checkpointed with the run (``state_dict`` / ``load_state_dict``), so a resumed run reuses them."""

    def __init__(self):
        self.anchor: dict[str, dict[str, Tensor]] | None = None
        self.fisher: dict[str, dict[str, Tensor]] | None = None
        self.batches = 0

    @property
    def ready(self) -> bool:
        return self.fisher is not None

    def compute(self, agent, sample, n: int) -> dict:
        """theta* = the agent's current weights; F from ``n`` batches of ``sample()`` (B sequences each).
        Returns metrics."""
        per_batch = []
        for _ in range(n):
            batch = sample()
            scale = batch["action"].shape[0]
            per_batch.append(batch_gradients(agent, batch))
        self.fisher, self.anchor = {}, {}
        for m in MODULES:
            names = [name for name, _ in named_params(agent, m)]
            fisher = empirical_fisher((g[m] for g in per_batch), scale)
            self.fisher[m] = dict(zip(names, fisher))
            self.anchor[m] = {name: p.detach().float().clone() for name, p in named_params(agent, m)}
        self.batches = n
        return {f"ewc/fisher_mean_{m}": float(torch.cat([f.flatten() for f in self.fisher[m].values()]).mean())
                for m in MODULES}

    def penalty(self, agent, module: str, lam: float) -> Tensor:
        """:func:`ewc_penalty` over the parameters of ``agent.<module>``."""
        params = named_params(agent, module)
        fisher, anchor = self.fisher[module], self.anchor[module]
        for name, p in params:
            if name not in fisher or fisher[name].shape != p.shape:
                raise UserError(f"EWC: parameter {module}.{name} does not match the consolidated weights "
                                "(the network changed after the Fisher was computed); start a new run")
            if fisher[name].device != p.device:  # restored from a checkpoint read onto another device
                fisher[name], anchor[name] = fisher[name].to(p.device), anchor[name].to(p.device)
        return ewc_penalty([p for _, p in params], [anchor[n] for n, _ in params],
                           [fisher[n] for n, _ in params], lam)

    def state_dict(self) -> dict:
        return {"batches": self.batches, "fisher": self.fisher or {}, "anchor": self.anchor or {}}

    def load_state_dict(self, d: dict) -> None:
        self.batches = int(d["batches"])
        self.fisher = d["fisher"] or None
        self.anchor = d["anchor"] or None


def ewc_hooks(agent, ewc: EWC, lam: float):
    """(wm_hook, critic_hook) for ``DreamerAgent.update`` that add L_EWC to the losses.

    wm_hook adds the world model's penalty to the world-model loss. critic_hook adds the critic's
    *and the actor's* penalties to the critic loss: the agent back-propagates its actor and critic
    losses in one backward pass, so the actor's penalty there sends its gradient,
    lambda * F * (theta - theta*), to the actor's parameters, exactly as if it were added to the
    actor loss (its optimizer clips and steps them). ``critic/loss`` then includes both penalties;
    ``ewc/*_penalty`` logs each.
    """
    def wm_hook(out):
        loss = ewc.penalty(agent, "wm", lam)
        return loss, {"ewc/wm_penalty": loss.detach()}

    def critic_hook(imag):
        actor, critic = ewc.penalty(agent, "actor", lam), ewc.penalty(agent, "critic", lam)
        return actor + critic, {"ewc/actor_penalty": actor.detach(), "ewc/critic_penalty": critic.detach()}

    return wm_hook, critic_hook
