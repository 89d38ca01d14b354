"""The DreamerV2 world model: conv encoder, RSSM, conv decoder, reward / discount heads.

Everything follows docs/algorithms.md#world-model. Shapes use the letters of docs/shapes.md. A latent
state is a dict with ``deter (…, D)``, ``stoch (…, Z)`` (flattened) and the parameters
of its distribution: ``mean``/``std`` (Gaussian) or ``logits (…, stoch, classes)``
(discrete). Distributions are always evaluated in float32, also under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from coworld.config import Config, ModelConfig

LOG_2PI = math.log(2 * math.pi)


def mlp(inp: int, out: int, units: int, layers: int) -> nn.Sequential:
    """``layers`` hidden Linear+ELU layers of width ``units``, then a linear output.

    ELU in place: a Linear's backward needs its input, not its output, and the ELU's backward can use
    its result, so each hidden layer keeps one activation for backward instead of two (at 150 x 50
    the behaviour step's imagined features pass these MLPs 120,000 at a time)."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, units), nn.ELU(inplace=True)]
        inp = units
    mods.append(nn.Linear(inp, out))
    return nn.Sequential(*mods)


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every linear and (transposed) conv layer in ``module``:
    the TensorFlow/Keras default that DreamerV2 and V-D4RL train with (``model.init = "glorot"``).
    For a transposed conv the bound sqrt(6 / (fan_in + fan_out)) is the same whichever side is "in"."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def preprocess(image: Tensor) -> Tensor:
    """uint8 ``(…, 64, 64, 3)`` -> float ``(…, 3, 64, 64)`` in [-0.5, 0.5] (o / 255 - 0.5), contiguous.

    Contiguous channels-first, not a permuted view of the channels-last input: the encoder and the
    image loss then run over plain memory (elementwise ops on the permuted layout were several times
    slower on a CPU)."""
    x = image.permute(*range(image.dim() - 3), -1, -3, -2)
    if image.dtype == torch.float32:  # no in-place ops on the caller's tensor
        return (x / 255.0 - 0.5).contiguous()
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(255.0).sub_(0.5)  # the same values as ``x / 255 - 0.5``, without two temporaries


def gaussian_nll(mean: Tensor, target: Tensor, event_dims: int = 0) -> Tensor:
    """Negative log-likelihood of ``target`` under N(mean, 1), summed over the last ``event_dims``:
    0.5 (target - mean)^2 + 0.5 log(2 pi) per element."""
    if event_dims and not target.requires_grad:  # images: one pass forward and one backward
        return _HalfSquaredSum.apply(mean, target, event_dims) + 0.5 * LOG_2PI * math.prod(mean.shape[-event_dims:])
    nll = 0.5 * (target.float() - mean.float()) ** 2 + 0.5 * LOG_2PI
    return nll.sum(dim=tuple(range(-event_dims, 0))) if event_dims else nll


class _HalfSquaredSum(torch.autograd.Function):
    """0.5 * sum over the last ``k`` dims of (mean - target)^2, in float32; gradient (mean - target) * g
    for ``mean`` only (the target is data). The same value autograd gives for the plain formula,
    computed without its full-size temporaries: the image loss of a batch is 1.5 M elements at the
    tiny preset (8 x 16 frames), and ``0.5 * (t - m) ** 2`` summed makes several full-size tensors
    forward and backward; this keeps one (t - m) and makes one more for the gradient."""

    @staticmethod
    def forward(ctx, mean, target, k):
        diff = mean.float() - target.float()
        ctx.save_for_backward(diff)
        ctx.k, ctx.dtype = k, mean.dtype
        return 0.5 * diff.square().sum(dim=tuple(range(-k, 0)))

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        g = diff * grad.reshape(*grad.shape, *([1] * ctx.k))
        return g.to(ctx.dtype), None, None


# ----------------------------------------------------------------------------- encoder / decoder

# frames per pass of the encoder where no gradient is kept (stage A's frozen source encoder, posteriors
# for evaluation): its activations are freed chunk by chunk, so the peak holds one chunk's (150 x 50
# frames at coworld-official sizes: ~2 GiB less)
NO_GRAD_CHUNK = 1024


def recompute_in_chunks(fn, chunk: int, *xs: Tensor) -> Tensor:
    """``fn(*xs)`` over the leading dim in chunks of ``chunk``, concatenated; each chunk's activations
    are not kept but recomputed in backward (``model.conv_remat``)."""
    parts = zip(*(x.split(chunk) for x in xs))
    return torch.cat([checkpoint(fn, *part, use_reentrant=False) for part in parts])


class Encoder(nn.Module):
    """4 convs, kernel 4, stride 2, channels d, 2d, 4d, 8d, ELU (docs/algorithms.md#world-model). 64x64 -> 8d x 2 x 2."""

    def __init__(self, depth: int, remat: int = 0, keypoints: int = 0, temp: float = 10.0):
        super().__init__()
        self.remat = remat  # > 0: above this many frames, recompute the activations in backward in chunks
        chans = [3, depth, 2 * depth, 4 * depth, 8 * depth]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            # in place: the conv's backward does not need its output, and the ELU's backward
            # uses its result, so one activation per layer is kept for backward instead of two
            layers += [nn.Conv2d(cin, cout, 4, stride=2), nn.ELU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.keypoints = keypoints  # k > 0: keypoints of conv layer k appended (docs/algorithms.md#world-model)
        self.keypoint_dim = self.size(depth, keypoints) - self.size(depth)
        if keypoints:
            self.log_temp = nn.Parameter(torch.full((chans[keypoints], 1, 1), math.log(temp)))
        self.out_dim = self.size(depth, keypoints)

    @staticmethod
    def size(depth: int, keypoints: int = 0) -> int:
        """E: the last layer's 8d x 2 x 2 map, plus (x, y) per channel of layer ``keypoints`` (d 2^(k-1) channels)."""
        return 32 * depth + (2 * depth * 2 ** (keypoints - 1) if keypoints else 0)

    def _embed(self, x: Tensor) -> Tensor:
        """(N, 3, 64, 64) -> (N, E): the last layer's map flattened, then the keypoints if any."""
        if not self.keypoints:
            return self.net(x).flatten(1)
        k = 2 * self.keypoints  # the conv of layer k is net[k - 2], its ELU net[k - 1]
        h = F.elu(self.net[k - 2](self.net[:k - 2](x)))  # not in place: read twice
        return torch.cat([self.net[k:](h).flatten(1), spatial_softmax_xy(h * self.log_temp.exp())], 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: preprocessed ``(…, 3, 64, 64)`` -> embed ``(…, E)``."""
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if not torch.is_grad_enabled() and x.shape[0] > NO_GRAD_CHUNK:
            y = torch.cat([self._embed(c) for c in x.split(NO_GRAD_CHUNK)])
        elif self.remat and torch.is_grad_enabled() and x.shape[0] > self.remat:
            y = recompute_in_chunks(self._embed, self.remat, x)
        else:
            y = self._embed(x)
        return y.reshape(*lead, self.out_dim)


def spatial_softmax_xy(h: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 2 C): per channel, the expected x and then y in [-1, 1] (left/top = -1) under
    the softmax of its H x W values (docs/algorithms.md#world-model, "Keypoints")."""
    n, c, rows, cols = h.shape
    p = torch.softmax(h.reshape(n, c, rows * cols).float(), -1).view(n, c, rows, cols)
    xs = torch.linspace(-1.0, 1.0, cols, device=h.device)
    ys = torch.linspace(-1.0, 1.0, rows, device=h.device)
    return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], 1).to(h.dtype)


def _phase_conv_transpose(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2)`` as one ordinary conv2d and a pixel shuffle.

    Output pixel (2m + a, 2n + b) of a stride-2 transposed conv only meets the kernel taps of parity
    (a, b): y[2m + a] = sum_s x[m - s] W[a + 2 s]. The four phases are four convolutions with the
    flipped taps of each parity (kernel ceil(k / 2), zero-padded input); stacked as 4 x C_out output
    channels they are one conv2d, and ``pixel_shuffle`` interleaves them. The same products as the
    transposed conv, summed in another order.
    """
    cin, cout, k, _ = weight.shape
    H, W = x.shape[-2:]
    K = (k + 1) // 2
    w = F.pad(weight, (0, 2 * K - k, 0, 2 * K - k)).reshape(cin, cout, K, 2, K, 2).flip(2, 4)
    w = w.permute(1, 3, 5, 0, 2, 4).reshape(cout * 4, cin, K, K)
    z = F.conv2d(x, w, bias.repeat_interleave(4), padding=K - 1)  # (N, 4 C_out, H', W'), phases (a, b)
    n, _, h, w_ = z.shape
    # interleave the phases: (N, C, a, b, H', W') -> (N, C, H', a, W', b); the same result as
    # F.pixel_shuffle(z, 2), whose CPU kernel was ~1.5x slower than this copy at these shapes
    y = z.view(n, cout, 2, 2, h, w_).permute(0, 1, 4, 2, 5, 3).reshape(n, cout, 2 * h, 2 * w_)
    rows, cols = 2 * H - 2 + k, 2 * W - 2 + k
    # a fresh tensor, never a view: the ELU after it works in place
    return y if (rows, cols) == y.shape[-2:] else y[..., :rows, :cols].contiguous()


class _ConvTranspose2(torch.autograd.Function):
    """Stride-2 transposed conv: forward by :func:`_phase_conv_transpose` (CPU's transposed-conv
    forward kernel is several times slower than an ordinary conv), backward by the same aten kernel
    that autograd uses for ``conv_transpose2d`` (so gradients for a given output gradient are those
    of ``nn.ConvTranspose2d``). Under autocast it computes in the autocast dtype, like the module."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        xc, wc, bc = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(xc, wc)
        with torch.autocast(device, enabled=False):
            return _phase_conv_transpose(xc, wc, bc)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.to(x.dtype), x, weight, [weight.shape[1]], [2, 2], [0, 0], [1, 1], True, [0, 0], 1,
            list(ctx.needs_input_grad))
        dx, dw, db = ctx.dtypes
        return (gx.to(dx) if gx is not None else None, gw.to(dw) if gw is not None else None,
                gb.to(db) if gb is not None else None)


class Decoder(nn.Module):
    """feat -> Linear(32d) -> transposed convs (kernels 5, 5, 6, 6, stride 2): 1->5->13->30->64."""

    def __init__(self, feat_dim: int, depth: int):
        super().__init__()
        self.depth = depth
        self.fc = nn.Linear(feat_dim, 32 * depth)
        chans = [32 * depth, 4 * depth, 2 * depth, depth, 3]
        kernels = [5, 5, 6, 6]
        layers: list[nn.Module] = []
        for i, (cin, cout, k) in enumerate(zip(chans[:-1], chans[1:], kernels)):
            layers.append(nn.ConvTranspose2d(cin, cout, k, stride=2))
            if i < len(kernels) - 1:
                layers.append(nn.ELU(inplace=True))  # in place, as in the encoder
        self.net = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        """feat ``(…, F)`` -> mean image ``(…, 3, 64, 64)`` (preprocessed scale)."""
        lead = feat.shape[:-1]
        x = self.fc(feat).reshape(-1, 32 * self.depth)
        # The first transposed conv sees a 1x1 input: it is a matrix product (one addmm instead of
        # the CPU's slow transposed-conv kernel; same parameters, equal up to float rounding).
        first = self.net[0]
        cin, cout, k, _ = first.weight.shape
        bias = first.bias.repeat_interleave(k * k)
        x = torch.addmm(bias, x, first.weight.reshape(cin, cout * k * k)).reshape(-1, cout, k, k)
        for layer in self.net[1:]:  # the other transposed convs: see _ConvTranspose2
            x = _ConvTranspose2.apply(x, layer.weight, layer.bias) if isinstance(layer, nn.ConvTranspose2d) else layer(x)
        return x.reshape(*lead, 3, 64, 64)


class StateEncoder(nn.Module):
    """Low-dimensional state ``(…, n)`` -> embed ``(…, E)``: an MLP with ``STATE_LAYERS`` hidden ELU layers
    of width ``units`` and an ELU output, so that its embedding has the conv encoder's size and
    activation (a state-input CoWorld source, docs/algorithms.md#state-input-source)."""

    def __init__(self, state_dim: int, out_dim: int, units: int):
        super().__init__()
        self.net = nn.Sequential(mlp(state_dim, out_dim, units, STATE_LAYERS), nn.ELU())
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class StateDecoder(nn.Module):
    """feat ``(…, F)`` -> mean state ``(…, n)``: an MLP with ``STATE_LAYERS`` hidden ELU layers."""

    def __init__(self, feat_dim: int, state_dim: int, units: int):
        super().__init__()
        self.net = mlp(feat_dim, state_dim, units, STATE_LAYERS)

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat)


STATE_LAYERS = 2  # hidden layers of the state encoder and decoder (width model.units)


# ----------------------------------------------------------------------------- RSSM


class GRUCell(nn.Module):
    """DreamerV2's GRU: one linear layer on [x, h] gives reset, candidate and update parts
    (optionally LayerNorm-ed); the update gate is sigmoid(u - 1), so a fresh cell leans
    towards keeping its state (docs/algorithms.md#world-model)."""

    def __init__(self, inp: int, size: int, norm: bool = False):
        super().__init__()
        self.size = size
        self.linear = nn.Linear(inp + size, 3 * size, bias=not norm)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x, h.to(x.dtype)], -1)))
        return self.gates(parts, h)

    def gates(self, parts: Tensor, h: Tensor) -> Tensor:
        """The new state from the (normalised) linear output ``parts`` (…, 3 D) and h (…, D):
        h + u * (c - h) with c = tanh(sigmoid(r) * c~), u = sigmoid(u~ - 1) (= u c + (1 - u) h)."""
        reset, cand, update = parts.split(self.size, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return torch.lerp(h, cand.to(h.dtype), update.to(h.dtype))


def gaussian_std(raw: Tensor, min_std: float) -> Tensor:
    """std = 2 * sigmoid(x / 2) + min_std (docs/algorithms.md#world-model, #behaviour-learning); lies in (min_std, 2 + min_std)."""
    return 2 * torch.sigmoid(raw / 2) + min_std


def straight_through_onehot(logits: Tensor) -> Tensor:
    """Sample one-hot vectors from Categorical(logits) over the last dim. The forward value
    is the one-hot sample; the gradient is that of the probabilities (straight-through)."""
    probs = torch.softmax(logits, -1)
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


class RSSM(nn.Module):
    """h_t = GRU(h_{t-1}, MLP([z_{t-1}, a_t])); prior p(z_t | h_t); posterior q(z_t | h_t, e_t).

    ``heads`` prior heads (Offline DV2's transition ensemble, docs/algorithms.md#offline-dv2); plain DV2 has one.
    Head 0 is the prior used by :meth:`observe`; imagination uses head 0 unless told otherwise.
    """

    def __init__(self, m: ModelConfig, action_dim: int, embed_dim: int, heads: int = 1):
        super().__init__()
        self.discrete = m.latent == "discrete"
        self.stoch, self.classes, self.min_std = m.stoch, m.classes, m.min_std
        self.stoch_dim = m.stoch * m.classes if self.discrete else m.stoch
        self.deter_dim = m.deter
        stats = m.stoch * m.classes if self.discrete else 2 * m.stoch
        self.img_in = nn.Sequential(nn.Linear(self.stoch_dim + action_dim, m.hidden), nn.ELU(inplace=True))
        self.cell = GRUCell(m.hidden, m.deter, norm=m.layer_norm)
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(m.deter, m.hidden), nn.ELU(inplace=True), nn.Linear(m.hidden, stats))
            for _ in range(heads)
        )
        self.post_head = nn.Sequential(
            nn.Linear(m.deter + embed_dim, m.hidden), nn.ELU(inplace=True), nn.Linear(m.hidden, stats)
        )

    # --- distributions -------------------------------------------------------------------

    def params(self, raw: Tensor) -> dict[str, Tensor]:
        raw = raw.float()
        if self.discrete:
            return {"logits": raw.reshape(*raw.shape[:-1], self.stoch, self.classes)}
        mean, std = raw.chunk(2, -1)
        return {"mean": mean, "std": gaussian_std(std, self.min_std)}

    def sample(self, params: dict[str, Tensor]) -> Tensor:
        """Reparameterised (Gaussian) or straight-through (discrete) sample, flattened (…, Z)."""
        if self.discrete:
            return straight_through_onehot(params["logits"]).flatten(-2)
        return params["mean"] + params["std"] * torch.randn_like(params["mean"])

    def prediction(self, params: dict[str, Tensor]) -> Tensor:
        """The predicted latent summary (…, Z): the mean (Gaussian) or class probabilities."""
        if self.discrete:
            return torch.softmax(params["logits"], -1).flatten(-2)
        return params["mean"]

    def kl(self, q: dict[str, Tensor], p: dict[str, Tensor]) -> Tensor:
        """KL(q || p) per state (…), summed over latent dims."""
        if self.discrete:
            logq = torch.log_softmax(q["logits"], -1)
            logp = torch.log_softmax(p["logits"], -1)
            return (logq.exp() * (logq - logp)).sum((-2, -1))
        var_ratio = (q["std"] / p["std"]) ** 2
        diff = ((q["mean"] - p["mean"]) / p["std"]) ** 2
        return 0.5 * (var_ratio + diff - 1 - var_ratio.log()).sum(-1)

    def entropy(self, params: dict[str, Tensor]) -> Tensor:
        if self.discrete:
            logp = torch.log_softmax(params["logits"], -1)
            return -(logp.exp() * logp).sum((-2, -1))
        return (0.5 * (1 + LOG_2PI) + params["std"].log()).sum(-1)

    # --- steps ---------------------------------------------------------------------------

    def initial(self, n: int, device) -> dict[str, Tensor]:
        """The zero state a window (or an episode) starts from (docs/algorithms.md#world-model)."""
        state = {
            "deter": torch.zeros(n, self.deter_dim, device=device),
            "stoch": torch.zeros(n, self.stoch_dim, device=device),
        }
        if self.discrete:
            state["logits"] = torch.zeros(n, self.stoch, self.classes, device=device)
        else:
            state["mean"] = torch.zeros(n, self.stoch, device=device)
            state["std"] = torch.ones(n, self.stoch, device=device)
        return state

    def reset(self, state: dict, action: Tensor, is_first: Tensor) -> tuple[dict, Tensor]:
        """Replace the state by the initial one (and the action by zero) where is_first."""
        first = is_first.reshape(-1, 1)
        out = {}
        for k, v in state.items():
            mask = first.reshape(-1, *[1] * (v.dim() - 1))
            out[k] = torch.where(mask, 1.0 if k == "std" else 0.0, v)  # the values of initial()
        return out, action * (~first).to(action.dtype)

    def deter_step(self, state: dict, action: Tensor) -> Tensor:
        x = self.img_in(torch.cat([state["stoch"], action.to(state["stoch"].dtype)], -1))
        return self.cell(x, state["deter"])

    def prior(self, deter: Tensor, head: int | Tensor = 0) -> dict[str, Tensor]:
        """Prior head ``head`` at ``deter``; ``head`` may be a 0-d integer tensor (no host sync)."""
        if isinstance(head, Tensor):
            raw = self._select_head(deter, head)
        else:
            raw = self.prior_heads[head](deter)
        params = self.params(raw)
        return {"deter": deter, "stoch": self.sample(params), **params}

    def _select_head(self, deter: Tensor, head: Tensor) -> Tensor:
        """``prior_heads[head](deter)`` for a 0-d index tensor: the members' weights are stacked and
        indexed, so the value is the chosen member's (the same ops on the same numbers)."""
        index = head.reshape(1)  # index_select, not [head]: inductor cannot index by a 0-d tensor without a host sync

        def member(layers, name):
            return torch.stack([getattr(m, name) for m in layers]).index_select(0, index)[0]

        first = [h[0] for h in self.prior_heads]
        last = [h[2] for h in self.prior_heads]
        x = self.prior_heads[0][1](F.linear(deter, member(first, "weight"), member(first, "bias")))
        return F.linear(x, member(last, "weight"), member(last, "bias"))

    def img_step(self, state: dict, action: Tensor, head: int | Tensor = 0) -> dict[str, Tensor]:
        """One prior step: (s_{t-1}, a_t) -> s_t."""
        return self.prior(self.deter_step(state, action), head)

    # The posterior steps split the two input layers that read a concatenation, img_in on
    # [z_{t-1}, a_t] and the posterior's first layer on [h_t, e_t]: W [x, y] + b = W_x x + (W_y y + b).
    # The parts of the inputs known before the loop (actions, embeddings) are projected for the
    # whole window at once; the loop does one addmm per layer. Equal to the concatenated layers
    # up to float rounding (the sums are taken in another order).

    def _split_linear(self, linear: nn.Linear, k: int, rest: Tensor) -> tuple[Tensor, Tensor]:
        """(W[:, :k]^T (k, out), rest @ W[:, k:]^T + b (…, out)), in the autocast dtype if one is on."""
        w, b = linear.weight, linear.bias
        device = w.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            w, b = w.to(dtype), b.to(dtype)  # cast once, not at every step of the loop
        return w[:, :k].t(), F.linear(rest.to(w.dtype), w[:, k:], b)

    def _post_step(self, stoch: Tensor, deter: Tensor, first: Tensor, w_stoch: Tensor, pre_action: Tensor,
                   w_deter: Tensor, pre_embed: Tensor) -> dict:
        """One posterior step from the previous (stoch, deter), reset to zero where ``first`` (N, 1);
        ``pre_action`` / ``pre_embed`` (N, hidden): the projected action (zeroed where first) and embed."""
        stoch = torch.where(first, 0.0, stoch)
        deter = torch.where(first, 0.0, deter)
        x = self.img_in[1](torch.addmm(pre_action, stoch.to(w_stoch.dtype), w_stoch))
        deter = self.cell(x, deter)
        hidden = self.post_head[1](torch.addmm(pre_embed, deter.to(w_deter.dtype), w_deter))
        params = self.params(self.post_head[2](hidden))
        return {"deter": deter, "stoch": self.sample(params), **params}

    def obs_step(self, state: dict, action: Tensor, embed: Tensor, is_first: Tensor) -> dict:
        """One posterior step: (s_{t-1}, a_t, e_t) -> q(z_t | h_t, e_t); resets where is_first."""
        first = is_first.reshape(-1, 1)
        action = action * (~first).to(action.dtype)
        w_stoch, pre_action = self._split_linear(self.img_in[0], self.stoch_dim, action)
        w_deter, pre_embed = self._split_linear(self.post_head[0], self.deter_dim, embed)
        return self._post_step(state["stoch"], state["deter"], first, w_stoch, pre_action, w_deter, pre_embed)

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: dict | None = None):
        """Filter a batch-major window. embed (B, L, E), action (B, L, A), is_first (B, L).

        Returns (post, prior) dicts with (B, L, …) tensors. The prior (head 0) is computed
        from the posterior's deterministic states in one batched call after the loop.
        """
        B, L = embed.shape[:2]
        if state is None:
            state = self.initial(B, embed.device)
        first = is_first.transpose(0, 1).unsqueeze(-1)  # (L, B, 1)
        action = action.transpose(0, 1) * (~first).to(action.dtype)  # (L, B, A), zero where is_first
        w_stoch, pre_action = self._split_linear(self.img_in[0], self.stoch_dim, action)
        w_deter, pre_embed = self._split_linear(self.post_head[0], self.deter_dim, embed.transpose(0, 1))
        stoch, deter = state["stoch"], state["deter"]
        posts = []
        for t in range(L):
            post = self._post_step(stoch, deter, first[t], w_stoch, pre_action[t], w_deter, pre_embed[t])
            stoch, deter = post["stoch"], post["deter"]
            posts.append(post)
        post = {k: torch.stack([s[k] for s in posts], 1) for k in posts[0]}
        return post, self.prior(post["deter"])

    def head_params(self, deter: Tensor) -> list[dict[str, Tensor]]:
        """Distribution parameters of every prior head at ``deter``."""
        return [self.params(head(deter)) for head in self.prior_heads]


# ----------------------------------------------------------------------------- world model


def kl_balance(
    rssm: RSSM, post: dict, prior: dict, alpha: float, free: float
) -> tuple[Tensor, Tensor]:
    """KL balancing with free nats on the batch mean (docs/algorithms.md#world-model; DreamerV2 Eq. 2 and its
    ``free_avg``): alpha * max(mean KL(sg q || p), free) + (1 - alpha) * max(mean KL(q || sg p), free).

    Returns (loss, mean KL(q || p)).
    """
    sg = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
    lhs = rssm.kl(sg(post), prior).mean()  # trains the prior
    rhs = rssm.kl(post, sg(prior)).mean()  # trains the posterior
    loss = alpha * lhs.clamp(min=free) + (1 - alpha) * rhs.clamp(min=free)
    return loss, lhs.detach()


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder and heads, with the DreamerV2 loss (docs/algorithms.md#world-model).

    ``state_dim > 0`` builds a state-input model (docs/algorithms.md#state-input-source): it reads the
    low-dimensional ``state`` observation through :class:`StateEncoder` (same embedding size E as the
    conv encoder) and reconstructs it with :class:`StateDecoder`; ``obs_key`` names the observation
    a model reads ("image" or "state"). The default (0) is the image model, unchanged."""

    def __init__(self, cfg: Config, action_dim: int, state_dim: int = 0):
        super().__init__()
        m = cfg.model
        self.cfg = m
        self.obs_key = "state" if state_dim else "image"
        self.encoder = (StateEncoder(state_dim, Encoder.size(m.depth, m.keypoints), m.units) if state_dim
                        else Encoder(m.depth, m.conv_remat, m.keypoints, m.keypoint_temp))
        self.rssm = RSSM(m, action_dim, self.encoder.out_dim, heads=max(1, m.ensemble))
        self.feat_dim = self.rssm.stoch_dim + m.deter
        self.decoder = StateDecoder(self.feat_dim, state_dim, m.units) if state_dim else Decoder(self.feat_dim, m.depth)
        self.reward_head = mlp(self.feat_dim, 1, m.units, m.reward_layers)
        self.discount_head = (
            mlp(self.feat_dim, 1, m.units, m.discount_layers) if m.discount_head else None
        )
        kp = 0 if state_dim else self.encoder.keypoint_dim
        self.keypoint_head = mlp(self.feat_dim, kp, m.units, STATE_LAYERS) if kp and m.keypoint_scale else None
        if m.init == "glorot":
            glorot_init(self)

    def encode(self, obs: Tensor) -> Tensor:
        """uint8 image (…, 64, 64, 3) -> embed (…, E); a state model: state (…, n) -> embed (…, E)."""
        return self.encoder(self.prepare(obs))

    def prepare(self, obs: Tensor) -> Tensor:
        """The encoder's and decoder's input scale: :func:`preprocess` for images, float32 for states."""
        return obs.float() if self.obs_key == "state" else preprocess(obs)

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor):
        return self.rssm.observe(embed, action, is_first)

    @staticmethod
    def feat(state: dict) -> Tensor:
        """feat = [z, h] (docs/algorithms.md#two-agents), (…, F)."""
        return torch.cat([state["stoch"], state["deter"].to(state["stoch"].dtype)], -1)

    def reward(self, feat: Tensor) -> Tensor:
        """Mean predicted reward (…), float32."""
        return self.reward_head(feat).squeeze(-1).float()

    def reward_nll(self, feat: Tensor, target: Tensor) -> Tensor:
        """Per-element NLL (…) of ``target`` under the unit-variance reward Gaussian."""
        return gaussian_nll(self.reward(feat), target)

    def continuation(self, feat: Tensor) -> Tensor:
        """Predicted probability that the episode continues at this state (…); 1 without a head."""
        if self.discount_head is None:
            return torch.ones(feat.shape[:-1], device=feat.device)
        return torch.sigmoid(self.discount_head(feat).squeeze(-1).float())

    def reconstruction_nll(self, feat: Tensor, obs: Tensor) -> Tensor:
        """-log p(obs | feat) per frame (B, L). With ``model.conv_remat`` (images only) and more frames than
        it, the decoder and the loss run in chunks of frames whose activations are recomputed in backward."""
        chunk = self.cfg.conv_remat if self.obs_key == "image" else 0
        event_dims = obs.dim() - 2

        def nll(f, o):
            return gaussian_nll(self.decoder(f), o, event_dims=event_dims)

        if not (chunk and torch.is_grad_enabled() and obs.shape[0] * obs.shape[1] > chunk):
            return nll(feat, obs)
        return recompute_in_chunks(nll, chunk, feat.flatten(0, 1), obs.flatten(0, 1)).view(obs.shape[:2])

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict, dict]:
        """L_img + c_r L_rew (+ c_d L_disc) + kl_scale L_KL (docs/algorithms.md#world-model). Returns (loss, out, metrics).

        With several prior heads (Offline DV2) L_KL is the mean over heads of each head's
        balanced KL to the posterior, so every member is trained like the prior.
        """
        m = self.cfg
        image = self.prepare(batch[self.obs_key])  # (B, L, 3, 64, 64); a state model: (B, L, n)
        embed = self.encoder(image)
        post, prior = self.observe(embed, batch["action"], batch["is_first"])
        feat = self.feat(post)

        image_loss = self.reconstruction_nll(feat, image).mean()
        reward_loss = self.reward_nll(feat, batch["reward"]).mean()
        heads = self.rssm.head_params(post["deter"]) if len(self.rssm.prior_heads) > 1 else [prior]
        kl_losses, kls = zip(
            *(kl_balance(self.rssm, post, p, m.kl_balance, m.free_nats) for p in heads)
        )
        kl_loss = torch.stack(kl_losses).mean()
        loss = image_loss + m.reward_scale * reward_loss + m.kl_scale * kl_loss
        metrics = {
            f"model/{self.obs_key}_loss": image_loss.detach(),
            "model/reward_loss": reward_loss.detach(),
            "model/kl": kls[0],
            "model/kl_loss": kl_loss.detach(),
            "model/prior_ent": self.rssm.entropy(prior).mean().detach(),
            "model/post_ent": self.rssm.entropy(post).mean().detach(),
        }
        if self.keypoint_head is not None:  # docs/algorithms.md#world-model, "Keypoints"
            target = embed[..., -self.encoder.keypoint_dim:].detach()
            kp_loss = gaussian_nll(self.keypoint_head(feat), target, event_dims=1).mean()
            loss = loss + m.keypoint_scale * kp_loss
            metrics["model/keypoint_loss"] = kp_loss.detach()
        if self.discount_head is not None:
            logits = self.discount_head(feat).squeeze(-1).float()
            disc_loss = F.binary_cross_entropy_with_logits(logits, batch["discount"].float())
            loss = loss + m.discount_scale * disc_loss
            metrics["model/discount_loss"] = disc_loss.detach()
        out = {
            "embed": embed, "post": post, "prior": prior, "feat": feat, self.obs_key: image,
            "action": batch["action"], "reward": batch["reward"], "is_first": batch["is_first"],
        }
        return loss, out, metrics
