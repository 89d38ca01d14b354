"""Pixel inputs of the model-free baselines (DrQ+BC, CQL, CURL; docs/algorithms.md#model-free-pixel-baselines):
frame stacking that never crosses an episode start, the random-shift augmentation, and the shared
convolutional encoder with the small trunk and MLP pieces their actors and critics are built from.

Images are stored channels-last uint8 ``(..., 64, 64, 3)`` (docs/shapes.md); a stack of ``K``
frames enters the networks channels-first as ``(N, 3K, 64, 64)``, oldest frame first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------- frames


def episode_starts(is_first: Tensor) -> Tensor:
    """(B, L) bool -> (B, L) long: for every position, the index of the last ``is_first`` at or
    before it (the start of its episode inside the window; position 0 counts as one)."""
    pos = torch.arange(is_first.shape[1], device=is_first.device).expand_as(is_first)
    marked = torch.where(is_first, pos, torch.zeros_like(pos))
    marked[:, 0] = 0
    return marked.cummax(dim=1).values


def stack_frames(image: Tensor, is_first: Tensor, index: Tensor, k: int) -> Tensor:
    """Frame stacks ending at ``index`` (docs/algorithms.md#frame-stacks).

    image (B, L, H, W, C) uint8, is_first (B, L) bool, index (B, P) long positions in the window.
    The stack at position t holds frames t-k+1 .. t; a frame before the start of t's episode is
    replaced by that episode's first frame (as an environment's frame stack is filled at reset), so a
    stack never mixes two episodes. Returns (B, P, k*C, H, W), oldest frame first.
    """
    b, _, h, w, c = image.shape
    start = episode_starts(is_first).gather(1, index)  # (B, P)
    pos = index[..., None] - (k - 1) + torch.arange(k, device=index.device)  # (B, P, k)
    pos = torch.maximum(pos, start[..., None]).clamp(min=0)
    rows = torch.arange(b, device=image.device)[:, None, None]
    frames = image[rows, pos]  # (B, P, k, H, W, C)
    return frames.permute(0, 1, 2, 5, 3, 4).reshape(b, index.shape[1], k * c, h, w)


def push_frame(stack: Tensor | None, frame: Tensor, is_first: Tensor, k: int) -> Tensor:
    """The acting side of :func:`stack_frames`: stack (N, k, H, W, C) of the last frames (or None),
    frame (N, H, W, C), is_first (N,) -> the new stack. An episode start fills all k slots with its
    first frame; otherwise the oldest frame drops out."""
    filled = frame[:, None].expand(-1, k, *frame.shape[1:])
    if stack is None:
        return filled.clone()
    rolled = torch.cat([stack[:, 1:], frame[:, None]], 1)
    return torch.where(is_first.view(-1, 1, 1, 1, 1), filled, rolled)


def channels_first(stack: Tensor) -> Tensor:
    """(N, k, H, W, C) -> (N, k*C, H, W), the layout :func:`stack_frames` returns."""
    n, k, h, w, c = stack.shape
    return stack.permute(0, 1, 4, 2, 3).reshape(n, k * c, h, w)


# ---------------------------------------------------------------------------------------- augmentation


def shift_crop(x: Tensor, dx: Tensor, dy: Tensor, pad: int) -> Tensor:
    """Pad (N, C, H, W) by ``pad`` pixels on each side with copies of the border and cut the H x W
    window whose top-left corner is (dy, dx) in the padded image (dx, dy (N,) in 0..2*pad): the image
    moved by (pad - dx, pad - dy) pixels, its border repeated into the uncovered strip. Computed as
    one gather with clamped indices (replicate padding), so uint8 images stay uint8."""
    n, c, h, w = x.shape
    rows = (dy[:, None] - pad + torch.arange(h, device=x.device)).clamp(0, h - 1)  # (N, H)
    cols = (dx[:, None] - pad + torch.arange(w, device=x.device)).clamp(0, w - 1)  # (N, W)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(-1, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w)


def random_shift(x: Tensor, pad: int) -> Tensor:
    """DrQ's random shift (Kostrikov et al. 2020; DrQ-v2 / V-D4RL pad 4): every image of the batch is
    moved by an independent integer offset in [-pad, pad] on each axis, replicate-padded
    (:func:`shift_crop`). ``pad = 0`` returns ``x``. Uses the global torch generator."""
    if pad <= 0:
        return x
    d = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), device=x.device)
    return shift_crop(x, d[0], d[1], pad)


# ---------------------------------------------------------------------------------------- networks


def init_weights(module: nn.Module) -> None:
    """Orthogonal initialisation as DrQ-v2 / V-D4RL: linear layers gain 1, convolutions the ReLU gain;
    biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PixelEncoder(nn.Module):
    """The conv stack of DrQ-v2 and CURL: ``layers`` 3x3 convolutions of ``filters`` channels, the
    first with stride 2, ReLU after each, flattened. Input (N, 3K, 64, 64) uint8 or float in 0..255,
    scaled to o / 255 - 0.5 (docs/shapes.md); output (N, out_dim)."""

    def __init__(self, in_channels: int, filters: int = 32, layers: int = 4, image_size: int = 64):
        super().__init__()
        convs = [nn.Conv2d(in_channels, filters, 3, stride=2)]
        convs += [nn.Conv2d(filters, filters, 3, stride=1) for _ in range(layers - 1)]
        self.convs = nn.ModuleList(convs)
        side = (image_size - 3) // 2 + 1 - 2 * (layers - 1)
        if side <= 0:
            raise ValueError(f"{layers} conv layers leave nothing of a {image_size}px image")
        self.out_dim = filters * side * side
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        # the scaling o / 255 - 0.5 folded into the first convolution (W / 255, b - 0.5 * sum W): the
        # same function without two passes over the (N, 3K, 64, 64) input
        first = self.convs[0]
        w = first.weight / 255.0
        b = first.bias - 0.5 * first.weight.sum((1, 2, 3))
        h = torch.relu(F.conv2d(x.float(), w, b, stride=first.stride))
        for conv in self.convs[1:]:
            h = torch.relu(conv(h))
        return h.flatten(1)


class Trunk(nn.Module):
    """Linear -> LayerNorm (-> tanh): the projection of the conv output to ``feature_dim`` that DrQ-v2's
    actor and critic each own (with tanh) and that CURL's encoder ends in (without)."""

    def __init__(self, inp: int, feature_dim: int, tanh: bool):
        super().__init__()
        self.linear, self.norm, self.tanh = nn.Linear(inp, feature_dim), nn.LayerNorm(feature_dim), tanh
        self.apply(init_weights)

    def forward(self, h: Tensor) -> Tensor:
        z = self.norm(self.linear(h))
        return torch.tanh(z) if self.tanh else z


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """Two hidden ReLU layers of ``hidden`` units (the heads of DrQ-v2 and CURL)."""
    net = nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, out))
    net.apply(init_weights)
    return net
