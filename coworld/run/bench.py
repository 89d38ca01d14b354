"""Update benchmark: time per DreamerV2 update (world model / behaviour), memory, FLOPs.

``bench`` builds the agent for a config (Offline DV2's when the config has an ensemble),
feeds it one random batch of the requested shape, and times each update kind asked for
(``kinds``: `coworld bench --kind`, else ``$COWORLD_BENCH_KINDS``, else all three):

- ``source``: a Dreamer update (what the source agent, and plain Dreamer, do);
- ``target``: a CoWorld target update: world model with stage A (state alignment against a
  second, source agent), behaviour with stage C (the source critic's value constraint);
- ``align``: a source update with stage B (reward alignment on a second, target batch).

For each it reports

- milliseconds per update, split into the world-model step and the behaviour step, and
  updates per second (the device is synchronised only around each timed phase);
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident
  set size (``ru_maxrss``) on a CPU;
- FLOPs of one update counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
  convolutions, forward and backward), the achieved FLOP/s, and that as a fraction of the
  machine's square-matmul FLOP/s measured in the same dtype;
- with ``compile``, the seconds of the first update (compilation included; later processes
  reuse the on-disk inductor cache, see ``coworld.algos.dreamer.compile_cache_dir``).

The top-level figures are those of the first kind; ``result["kinds"]`` holds every kind's.
To compare two git revisions interleaved, see ``scripts/bench_compare.py``.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from coworld.algos.coworld import ActionAdapter, reward_alignment_hook, state_alignment_hook, value_constraint_hook
from coworld.algos.dreamer import DreamerAgent, resolve_device
from coworld.algos.offline_dv2 import OfflineDV2Agent
from coworld.config import Config
from coworld.run.session import free_cores, keep_freed_memory

DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KINDS = ("source", "target", "align")


def kinds_from_env() -> tuple[str, ...]:
    """The kinds named in $COWORLD_BENCH_KINDS (comma-separated), else all three."""
    text = os.environ.get("COWORLD_BENCH_KINDS", "").strip()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip()) or KINDS
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        from coworld.errors import UserError

        raise UserError(f"COWORLD_BENCH_KINDS: unknown kind(s) {unknown}; choose from {', '.join(KINDS)}")
    return kinds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(batch: int, length: int, action_dim: int, device) -> dict:
    is_first = torch.zeros(batch, length, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    return {
        "image": torch.randint(0, 256, (batch, length, 64, 64, 3), dtype=torch.uint8, device=device),
        "action": torch.rand(batch, length, action_dim, device=device) * 2 - 1,
        "reward": torch.randn(batch, length, device=device),
        "discount": torch.ones(batch, length, device=device),
        "is_first": is_first,
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool, device=device),
    }


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of repeated square matmuls (n = 4096 on GPU, 1024 on CPU) in ``dtype``."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        reps += 4
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed > seconds:
            return 2 * n**3 * reps / elapsed


def _peak_memory(dev: torch.device) -> tuple[int, str]:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process max RSS (so far)"


def bench(
    cfg: Config, *, batch: int, length: int, updates: int = 20, warmup: int = 3,
    device: str = "auto", amp: str = "none", compile: bool = False, action_dim: int = 6,
    kinds: tuple[str, ...] | None = None,
) -> dict:
    """Time ``updates`` updates of each kind after ``warmup`` untimed ones. Returns JSON-serialisable figures."""
    cfg = copy.deepcopy(cfg)
    cfg.train.batch, cfg.train.length, cfg.train.amp, cfg.train.compile = batch, length, amp, compile
    kinds = tuple(kinds) if kinds else kinds_from_env()
    # train.threads = 0: the free cores, as a training run resolves it (printed with the figures)
    torch.set_num_threads(cfg.train.threads or free_cores()[0])
    keep_freed_memory(cfg.train.malloc)
    dev = resolve_device(device)
    agent_cls = OfflineDV2Agent if cfg.model.ensemble >= 2 else DreamerAgent
    agent = agent_cls(cfg, action_dim, device=dev)
    other = None  # the second agent of the CoWorld kinds (the source of a target update)
    data, target_data = random_batch(batch, length, action_dim, dev), random_batch(batch, length, action_dim, dev)
    adapter = ActionAdapter(action_dim, action_dim, "pad")
    probe = matmul_flops(dev, DTYPES[amp])

    def hooks(kind: str):
        if kind == "source":
            return agent, None, None
        if kind == "target":
            return agent, state_alignment_hook(other, cfg), value_constraint_hook(other, cfg)
        return agent, reward_alignment_hook(agent, target_data, cfg.coworld.eta_frozen, cfg, adapter), None

    results = {}
    for kind in kinds:
        if kind == "target" and other is None:
            other = agent_cls(cfg, action_dim, device=dev)
        start = time.perf_counter()
        for i in range(max(warmup, 1)):
            learner, wm_hook, critic_hook = hooks(kind)
            post, _ = learner.world_model_step(data, extra_loss=wm_hook)
            learner.behaviour_step(post, critic_extra=critic_hook)
            learner.finish_update()
            if i == 0:
                _sync(dev)
                first_s = time.perf_counter() - start
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

        wm_times, beh_times = [], []
        for _ in range(updates):
            learner, wm_hook, critic_hook = hooks(kind)
            _sync(dev)
            t0 = time.perf_counter()
            post, _ = learner.world_model_step(data, extra_loss=wm_hook)
            _sync(dev)
            t1 = time.perf_counter()
            learner.behaviour_step(post, critic_extra=critic_hook)
            learner.finish_update()
            _sync(dev)
            t2 = time.perf_counter()
            wm_times.append(t1 - t0)
            beh_times.append(t2 - t1)
        peak, peak_kind = _peak_memory(dev)

        # FLOPs counted on the eager path (the same operations; a compiled graph hides them from the counter)
        steps = (learner._wm_losses, learner._behaviour_losses)
        enabled = [step.enabled for step in steps]
        for step in steps:
            step.enabled = False
        try:
            learner, wm_hook, critic_hook = hooks(kind)
            with FlopCounterMode(display=False) as counter:
                post, _ = learner.world_model_step(data, extra_loss=wm_hook)
            wm_flops = counter.get_total_flops()
            with FlopCounterMode(display=False) as counter:
                learner.behaviour_step(post, critic_extra=critic_hook)
            beh_flops = counter.get_total_flops()
        finally:
            for step, flag in zip(steps, enabled):
                step.enabled = flag

        wm_s, beh_s = statistics.mean(wm_times), statistics.mean(beh_times)
        total_s = wm_s + beh_s
        flops = wm_flops + beh_flops
        results[kind] = {
            "kind": kind,
            "ms_world_model": 1e3 * wm_s, "ms_behaviour": 1e3 * beh_s, "ms_total": 1e3 * total_s,
            "ms_total_median": 1e3 * statistics.median(w + b for w, b in zip(wm_times, beh_times)),
            "updates_per_s": 1 / total_s, "first_update_s": first_s,
            "peak_memory_bytes": int(peak), "peak_memory_kind": peak_kind,
            "flops_world_model": int(wm_flops), "flops_behaviour": int(beh_flops), "flops_total": int(flops),
            "achieved_flops_per_s": flops / total_s,
            "matmul_flops_per_s": probe,
            "fraction_of_matmul_peak": flops / total_s / probe,
        }
    head = {
        "preset": cfg.preset, "batch": batch, "length": length, "updates": updates,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "amp": amp, "compile": compile,
        "latent": cfg.model.latent, "agent": agent_cls.__name__,
        "parameters": sum(p.numel() for m in (agent.wm, agent.actor, agent.critic) for p in m.parameters()),
    }
    return {**head, **results[kinds[0]], "kinds": results}


def print_bench(r: dict) -> None:
    print(f"preset {r['preset']} ({r['agent']}, {r['latent']} latents, {r['parameters'] / 1e6:.2f}M params)"
          f"  batch {r['batch']}x{r['length']}  device {r['device']} [{r['device_name']}]"
          f"  threads {r['threads']}  amp {r['amp']}  compile {r['compile']}")
    names = {"source": "source (Dreamer)", "target": "target (CoWorld A+C)", "align": "source + B (reward align)"}
    for k in r.get("kinds", {r.get("kind", "source"): r}).values():
        print(f"  {names.get(k.get('kind'), k.get('kind')):26s} world model {k['ms_world_model']:.1f} ms"
              f"  behaviour {k['ms_behaviour']:.1f} ms  total {k['ms_total']:.1f} ms (median {k['ms_total_median']:.1f})"
              f"  -> {k['updates_per_s']:.2f} updates/s over {r['updates']} updates"
              + (f"; first update {k['first_update_s']:.1f} s (compilation)" if r["compile"] else ""))
        print(f"  {'':26s} FLOPs/update {k['flops_total'] / 1e9:.2f} G (world model {k['flops_world_model'] / 1e9:.2f} G,"
              f" behaviour {k['flops_behaviour'] / 1e9:.2f} G); achieved {k['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s"
              f" = {100 * k['fraction_of_matmul_peak']:.1f}% of measured matmul {k['matmul_flops_per_s'] / 1e9:.1f}"
              f" GFLOP/s; peak memory {k['peak_memory_bytes'] / 2**20:.0f} MiB ({k['peak_memory_kind']})")
