"""Would training several seeds in one process speed up the `tiny` model's convolutions?

Vectorising seeds (``torch.func.vmap`` over stacked parameters) runs each conv layer as one grouped
convolution with ``groups = seeds``. This times, per layer of the `tiny` encoder and decoder (depth 8,
64 x 64 images), forward plus backward of ``seeds`` separate convolutions against one grouped
convolution over the same inputs, and prints each layer's times and the ratio (above 1: grouped is
faster). Results: docs/results.md ("Sixth round").

    python3 scripts/bench_grouped_conv.py --seeds 5 --frames 128 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (in channels, out channels, kernel, input height = width) of the tiny preset's layers (depth 8)
ENCODER = [(3, 8, 4, 64), (8, 16, 4, 31), (16, 32, 4, 14), (32, 64, 4, 6)]
DECODER = [(256, 32, 5, 1), (32, 16, 5, 5), (16, 8, 6, 13), (8, 3, 6, 30)]


def best_of(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_pair(transposed: bool, cin: int, cout: int, k: int, hw: int, seeds: int, frames: int):
    """Two closures: ``seeds`` separate fwd + bwd passes, and one grouped pass over the same work."""
    conv = F.conv_transpose2d if transposed else F.conv2d

    def weight(groups: int):  # conv2d: (out, in / groups, k, k); transposed: (in, out / groups, k, k)
        shape = (groups * cin, cout, k, k) if transposed else (groups * cout, cin, k, k)
        return torch.randn(*shape, requires_grad=True)

    xs = [torch.randn(frames, cin, hw, hw, requires_grad=True) for _ in range(seeds)]
    ws = [weight(1) for _ in range(seeds)]
    xg = torch.randn(frames, seeds * cin, hw, hw, requires_grad=True)
    wg = weight(seeds)

    def separate():
        for x, w in zip(xs, ws):
            conv(x, w, stride=2).sum().backward()

    def grouped():
        conv(xg, wg, stride=2, groups=seeds).sum().backward()

    return separate, grouped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--frames", type=int, default=128, help="frames per seed (tiny: batch 8 x length 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    total_sep = total_grp = 0.0
    for name, transposed, layers in (("encoder", False, ENCODER), ("decoder", True, DECODER)):
        for cin, cout, k, hw in layers:
            separate, grouped = layer_pair(transposed, cin, cout, k, hw, args.seeds, args.frames)
            a, b = best_of(separate, args.reps), best_of(grouped, args.reps)
            total_sep, total_grp = total_sep + a, total_grp + b
            print(f"{name} {cin:>3} -> {cout:<3} at {hw:>2}x{hw:<2}: {args.seeds} separate {a * 1e3:7.1f} ms, "
                  f"grouped {b * 1e3:7.1f} ms, separate / grouped {a / b:.2f}")
    print(f"all layers: separate {total_sep * 1e3:.0f} ms, grouped {total_grp * 1e3:.0f} ms, "
          f"separate / grouped {total_sep / total_grp:.2f} ({args.seeds} seeds, {args.frames} frames each, "
          f"{args.threads} thread(s))")


if __name__ == "__main__":
    main()
