"""Update benchmark: time per DreamerV2 update (world model / behaviour), memory, FLOPs.

``bench`` builds the agent for a config (Offline DV2's when the config has an ensemble),
feeds it one random batch of the requested shape, and reports

- milliseconds per update, split into the world-model step and the behaviour step, and
  updates per second (the device is synchronised only around each timed phase);
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident
  set size (``ru_maxrss``) on a CPU;
- FLOPs of one update counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
  convolutions, forward and backward), the achieved FLOP/s, and that as a fraction of the
  machine's square-matmul FLOP/s measured in the same dtype.
"""

from __future__ import annotations

import copy
import platform
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from coworld.algos.dreamer import DreamerAgent, resolve_device
from coworld.algos.offline_dv2 import OfflineDV2Agent
from coworld.config import Config

DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def bench(
    cfg: Config, *, batch: int, length: int, updates: int = 20, warmup: int = 3,
    device: str = "auto", amp: str = "none", compile: bool = False, action_dim: int = 6,
) -> dict:
    """Time ``updates`` updates after ``warmup`` untimed ones. Returns JSON-serialisable figures."""
    cfg = copy.deepcopy(cfg)
    cfg.train.batch, cfg.train.length, cfg.train.amp, cfg.train.compile = batch, length, amp, compile
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dev = resolve_device(device)
    agent_cls = OfflineDV2Agent if cfg.model.ensemble >= 2 else DreamerAgent
    agent = agent_cls(cfg, action_dim, device=dev)
    data = random_batch(batch, length, action_dim, dev)

    for _ in range(warmup):
        agent.update(data)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    wm_times, beh_times = [], []
    for _ in range(updates):
        _sync(dev)
        t0 = time.perf_counter()
        post, _ = agent.world_model_step(data)
        _sync(dev)
        t1 = time.perf_counter()
        agent.behaviour_step(post)
        agent.finish_update()
        _sync(dev)
        t2 = time.perf_counter()
        wm_times.append(t1 - t0)
        beh_times.append(t2 - t1)

    if dev.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process max RSS"

    with FlopCounterMode(display=False) as counter:
        post, _ = agent.world_model_step(data)
    wm_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        agent.behaviour_step(post)
    beh_flops = counter.get_total_flops()

    wm_s, beh_s = statistics.mean(wm_times), statistics.mean(beh_times)
    total_s = wm_s + beh_s
    flops = wm_flops + beh_flops
    probe = matmul_flops(dev, DTYPES[amp])
    return {
        "preset": cfg.preset, "batch": batch, "length": length, "updates": updates,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "amp": amp, "compile": compile,
        "latent": cfg.model.latent, "agent": agent_cls.__name__,
        "parameters": sum(p.numel() for m in (agent.wm, agent.actor, agent.critic) for p in m.parameters()),
        "ms_world_model": 1e3 * wm_s, "ms_behaviour": 1e3 * beh_s, "ms_total": 1e3 * total_s,
        "ms_total_median": 1e3 * statistics.median(w + b for w, b in zip(wm_times, beh_times)),
        "updates_per_s": 1 / total_s,
        "peak_memory_bytes": int(peak), "peak_memory_kind": peak_kind,
        "flops_world_model": int(wm_flops), "flops_behaviour": int(beh_flops), "flops_total": int(flops),
        "achieved_flops_per_s": flops / total_s,
        "matmul_flops_per_s": probe,
        "fraction_of_matmul_peak": flops / total_s / probe,
    }


def print_bench(r: dict) -> None:
    print(f"preset {r['preset']} ({r['agent']}, {r['latent']} latents, {r['parameters'] / 1e6:.2f}M params)"
          f"  batch {r['batch']}x{r['length']}  device {r['device']} [{r['device_name']}]"
          f"  threads {r['threads']}  amp {r['amp']}  compile {r['compile']}")
    print(f"  time/update  world model {r['ms_world_model']:.1f} ms  behaviour {r['ms_behaviour']:.1f} ms"
          f"  total {r['ms_total']:.1f} ms (median {r['ms_total_median']:.1f})"
          f"  -> {r['updates_per_s']:.2f} updates/s over {r['updates']} updates")
    print(f"  peak memory  {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['peak_memory_kind']})")
    print(f"  FLOPs/update {r['flops_total'] / 1e9:.2f} G (world model {r['flops_world_model'] / 1e9:.2f} G,"
          f" behaviour {r['flops_behaviour'] / 1e9:.2f} G)")
    print(f"  achieved     {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
          f"{100 * r['fraction_of_matmul_peak']:.1f}% of measured matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
