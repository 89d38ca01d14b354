import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from coworld.config import load_config
from coworld.nets import RSSM, Decoder, Encoder, GRUCell, WorldModel, preprocess
from coworld.nets.world_model import (
    gaussian_nll, gaussian_std, kl_balance, mlp, spatial_softmax_xy, straight_through_onehot,
)

SMALL = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.classes=3",
    "model.units=16", "model.keypoints=0",  # DreamerV2's encoder; the keypoint tests switch them on
]


def small_cfg(*extra):
    return load_config("tiny", SMALL + list(extra))


def test_preprocess_scale_and_layout():
    img = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    img[..., 1] = 255
    x = preprocess(img)
    assert x.shape == (2, 3, 64, 64)
    assert torch.all(x[:, 0] == -0.5) and torch.all(x[:, 1] == 0.5)
    assert x.is_contiguous()  # channels-first in memory, not a permuted view (the loss and encoder read it)


def test_encoder_decoder_shapes():
    enc = Encoder(4)
    e = enc(torch.zeros(2, 3, 3, 64, 64))
    assert e.shape == (2, 3, 8 * 4 * 2 * 2) and enc.out_dim == 128
    dec = Decoder(10, 4)
    assert dec(torch.zeros(2, 3, 10)).shape == (2, 3, 3, 64, 64)
    kernels = [m.kernel_size[0] for m in dec.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == [5, 5, 6, 6]


def _plain_decoder(dec: Decoder, feat: torch.Tensor) -> torch.Tensor:
    """The decoder as the textbook layers: Linear, then nn.ConvTranspose2d / ELU as built."""
    x = dec.fc(feat).reshape(-1, 32 * dec.depth, 1, 1)
    for layer in dec.net:
        x = torch.nn.functional.elu(x) if isinstance(layer, torch.nn.ELU) else layer(x)
    return x.reshape(*feat.shape[:-1], 3, 64, 64)


def test_decoder_equals_plain_transposed_convs():
    # the decoder computes its transposed convs another way (addmm, phase convs, in-place ELU);
    # values and every gradient must equal the plain layers' up to float rounding
    torch.manual_seed(0)
    dec = Decoder(10, 4)
    feat = torch.randn(2, 3, 10, requires_grad=True)
    ours, plain = dec(feat), _plain_decoder(dec, feat)
    assert torch.allclose(ours, plain, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [feat, *dec.parameters()], g)
    ref = torch.autograd.grad(plain, [feat, *dec.parameters()], g)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_encoder_gradients_equal_out_of_place_elu():
    torch.manual_seed(0)
    enc = Encoder(4)
    x = torch.rand(5, 3, 64, 64) - 0.5
    ours = enc(x)
    y = x
    for layer in enc.net:
        y = torch.nn.functional.elu(y) if isinstance(layer, torch.nn.ELU) else layer(y)
    plain = y.reshape(5, -1)
    assert torch.allclose(ours, plain, atol=1e-6)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, list(enc.parameters()), g),
                    torch.autograd.grad(plain, list(enc.parameters()), g)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_encoder_without_gradient_runs_in_chunks_with_the_same_values(monkeypatch):
    import coworld.nets.world_model as wm_module

    torch.manual_seed(0)
    enc = Encoder(4)
    x = torch.rand(3, 5, 3, 64, 64) - 0.5
    with torch.no_grad():
        whole = enc(x)
    monkeypatch.setattr(wm_module, "NO_GRAD_CHUNK", 4)  # 15 frames: chunks of 4, 4, 4, 3
    calls = []
    enc.net.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    with torch.no_grad():
        chunked = enc(x)
    assert calls == [4, 4, 4, 3]
    assert chunked.shape == (3, 5, enc.out_dim) and torch.allclose(chunked, whole, atol=1e-6)
    calls.clear()
    enc(x)  # with gradient: one pass, activations kept
    assert calls == [15]


def test_mlp_in_place_elu_gives_the_plain_values_and_gradients():
    torch.manual_seed(0)
    net = mlp(6, 2, 16, 3)
    x = torch.randn(9, 6, requires_grad=True)
    ours = net(x)
    y = x
    for layer in net:
        y = torch.nn.functional.elu(y) if isinstance(layer, torch.nn.ELU) else layer(y)
    assert all(m.inplace for m in net if isinstance(m, torch.nn.ELU))
    assert torch.allclose(ours, y, atol=1e-6)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, [x, *net.parameters()], g),
                    torch.autograd.grad(y, [x, *net.parameters()], g)):
        assert torch.allclose(a, b, atol=1e-6)


def test_encoder_remat_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    enc = Encoder(4)
    again = Encoder(4, remat=3)  # 2 x 5 frames in chunks of 3, 3, 3, 1
    again.load_state_dict(enc.state_dict())
    x = (torch.rand(2, 5, 3, 64, 64) - 0.5).requires_grad_()
    kept, recomputed = enc(x), again(x)
    assert torch.allclose(kept, recomputed, atol=1e-6) and recomputed.shape == (2, 5, enc.out_dim)
    g = torch.randn_like(kept)
    for a, b in zip(torch.autograd.grad(kept, [x, *enc.parameters()], g),
                    torch.autograd.grad(recomputed, [x, *again.parameters()], g)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # where nothing needs a gradient, no recomputation is set up: one plain forward
    calls = []
    again.net.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    with torch.no_grad():
        again(x)
    assert calls == [10]
    calls.clear()
    again.remat = 10  # no more frames than a chunk: the plain path, with gradient too
    assert torch.allclose(again(x), kept, atol=1e-6) and calls == [10]


def test_conv_remat_world_model_loss_and_gradients_unchanged():
    torch.manual_seed(0)
    wm = WorldModel(small_cfg(), 3)
    again = WorldModel(small_cfg("model.conv_remat=3"), 3)  # 2 x 4 frames in chunks of 3, 3, 2
    again.load_state_dict(wm.state_dict())
    batch = {
        "image": torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(2, 4, 3) * 2 - 1, "reward": torch.randn(2, 4),
        "discount": torch.ones(2, 4), "is_first": torch.zeros(2, 4, dtype=torch.bool),
    }
    torch.manual_seed(1)
    loss, _, metrics = wm.loss(batch)
    torch.manual_seed(1)
    loss_r, _, metrics_r = again.loss(batch)
    assert loss_r.item() == pytest.approx(loss.item(), rel=1e-6)
    assert metrics_r["model/image_loss"].item() == pytest.approx(metrics["model/image_loss"].item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(loss, list(wm.parameters())),
                    torch.autograd.grad(loss_r, list(again.parameters()))):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    calls = []
    again.decoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    again.loss(batch)[0].backward()
    assert calls[:3] == [3, 3, 2] and sorted(calls[3:]) == [2, 3, 3]  # forward, then again in backward


def test_image_nll_hand_values_and_gradient():
    mean = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.0], [0.0, -1.0]]], requires_grad=True)  # (2, 2, 2)
    target = torch.zeros(2, 2, 2)
    nll = gaussian_nll(mean, target, event_dims=2)
    # 0.5 * sum of squares + 4 * 0.5 * log(2 pi): 0.5 * 30 and 0.5 * 1.25
    log2pi = math.log(2 * math.pi)
    assert torch.allclose(nll, torch.tensor([15.0 + 2 * log2pi, 0.625 + 2 * log2pi]))
    (grad,) = torch.autograd.grad(nll, mean, torch.tensor([1.0, 2.0]))
    # d/d mean of 0.5 (mean - target)^2 is (mean - target), times the upstream gradient per image
    assert torch.allclose(grad, torch.stack([mean[0], 2 * mean[1]]).detach())
    # a bf16 mean (autocast) gets a bf16 gradient, the loss stays float32
    half = mean.detach().bfloat16().requires_grad_()
    out = gaussian_nll(half, target, event_dims=2)
    assert out.dtype == torch.float32
    assert torch.autograd.grad(out.sum(), half)[0].dtype == torch.bfloat16
    # a target that needs gradients takes the plain formula (the fast path returns none for it)
    t = torch.ones(2, 2, 2, requires_grad=True)
    (gt,) = torch.autograd.grad(gaussian_nll(mean, t, event_dims=2).sum(), t)
    assert torch.allclose(gt, (t - mean).detach())


def test_gaussian_std_formula():
    x = torch.tensor([-100.0, 0.0, 2.0, 100.0])
    expected = 2 / (1 + torch.exp(-x / 2)) + 0.1
    assert torch.allclose(gaussian_std(x, 0.1), expected)
    assert gaussian_std(torch.tensor(0.0), 0.1).item() == pytest.approx(1.1)
    rssm = RSSM(small_cfg().model, 2, 8)
    params = rssm.params(torch.cat([torch.zeros(1, 4), torch.full((1, 4), 2.0)], -1))
    assert torch.allclose(params["std"], torch.full((1, 4), 2 / (1 + math.exp(-1)) + 0.1))


def test_gru_update_gate_bias():
    cell = GRUCell(3, 2)
    torch.nn.init.zeros_(cell.linear.weight)
    torch.nn.init.zeros_(cell.linear.bias)
    h = torch.tensor([[1.0, -2.0]])
    # cand = tanh(0) = 0, update = sigmoid(0 - 1): out = (1 - sigmoid(-1)) * h
    out = cell(torch.randn(1, 3), h)
    assert torch.allclose(out, (1 - 1 / (1 + math.e)) * h)
    assert isinstance(GRUCell(3, 2, norm=True).norm, torch.nn.LayerNorm)


def test_straight_through_sample():
    logits = torch.randn(5, 4, requires_grad=True)
    sample = straight_through_onehot(logits)
    assert torch.all(sample.detach().sum(-1) == 1)
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    c = torch.randn(5, 4)
    (sample * c).sum().backward()
    logits2 = logits.detach().clone().requires_grad_(True)
    (torch.softmax(logits2, -1) * c).sum().backward()
    assert torch.allclose(logits.grad, logits2.grad)


def test_kl_formulas_match_torch():
    rssm = RSSM(small_cfg().model, 2, 8)
    q = {"mean": torch.randn(3, 4), "std": torch.rand(3, 4) + 0.2}
    p = {"mean": torch.randn(3, 4), "std": torch.rand(3, 4) + 0.2}
    ref = kl_divergence(Normal(q["mean"], q["std"]), Normal(p["mean"], p["std"])).sum(-1)
    assert torch.allclose(rssm.kl(q, p), ref, atol=1e-5)
    drssm = RSSM(small_cfg("model.latent=discrete").model, 2, 8)
    ql, pl = torch.randn(3, 4, 3), torch.randn(3, 4, 3)
    qp, pp = ql.softmax(-1), pl.softmax(-1)
    ref = (qp * (qp.log() - pp.log())).sum((-2, -1))
    assert torch.allclose(drssm.kl({"logits": ql}, {"logits": pl}), ref, atol=1e-5)


def _gaussian_pair():
    rssm = RSSM(small_cfg("model.stoch=1").model, 2, 8)
    q_mean = torch.tensor([[1.0], [3.0]], requires_grad=True)  # KL to N(0,1): 0.5 and 4.5
    p_mean = torch.zeros(2, 1, requires_grad=True)
    q = {"mean": q_mean, "std": torch.ones(2, 1)}
    p = {"mean": p_mean, "std": torch.ones(2, 1)}
    return rssm, q, p, q_mean, p_mean


def test_kl_balance_above_free_nats():
    rssm, q, p, q_mean, p_mean = _gaussian_pair()
    loss, kl = kl_balance(rssm, q, p, alpha=0.8, free=1.0)
    assert loss.item() == pytest.approx(2.5) and kl.item() == pytest.approx(2.5)
    loss.backward()
    # d/dmu_q of mean KL = (mu_q - mu_p) / 2 per row; only the (1 - alpha) term reaches q
    assert torch.allclose(q_mean.grad, 0.2 * torch.tensor([[0.5], [1.5]]))
    assert torch.allclose(p_mean.grad, 0.8 * torch.tensor([[-0.5], [-1.5]]))


def test_kl_balance_below_free_nats():
    rssm, q, p, q_mean, p_mean = _gaussian_pair()
    loss, kl = kl_balance(rssm, q, p, alpha=0.8, free=3.0)
    assert loss.item() == pytest.approx(3.0) and kl.item() == pytest.approx(2.5)
    loss.backward()
    assert torch.all(q_mean.grad == 0) and torch.all(p_mean.grad == 0)


@pytest.mark.parametrize("latent", ["gaussian", "discrete"])
def test_is_first_resets_state_inside_window(latent):
    rssm = RSSM(small_cfg(f"model.latent={latent}").model, 2, 8)
    embed_a, embed_b = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    action_a, action_b = torch.randn(1, 5, 2), torch.randn(1, 5, 2)
    embed_b[:, 2:], action_b[:, 2:] = embed_a[:, 2:], action_a[:, 2:]  # same after the reset
    is_first = torch.zeros(1, 5, dtype=torch.bool)
    is_first[0, [0, 2]] = True
    outs = []
    for embed, action, first in [(embed_a, action_a, is_first), (embed_b, action_b, is_first),
                                 (embed_b, action_b, torch.zeros_like(is_first))]:
        torch.manual_seed(1)
        outs.append(rssm.observe(embed, action, first))
    (post_a, prior_a), (post_b, prior_b), (post_c, _) = outs
    assert not torch.allclose(post_a["deter"][:, 1], post_b["deter"][:, 1])
    for key in post_a:
        assert torch.equal(post_a[key][:, 2:], post_b[key][:, 2:]), key
        assert torch.equal(prior_a[key][:, 2:], prior_b[key][:, 2:]), key
    assert not torch.allclose(post_c["deter"][:, 2:], post_a["deter"][:, 2:])
    # the state after a reset is the zero state stepped with a zero action
    zero = rssm.initial(1, "cpu")
    assert torch.allclose(post_a["deter"][:, 2], rssm.deter_step(zero, torch.zeros(1, 2)))


def test_spatial_softmax_xy_hand_values():
    h = torch.full((1, 2, 3, 5), -1e4)
    h[0, 0, 2, 4] = 0.0  # channel 0: one peak at the bottom-right cell
    h[0, 1, 0, 0] = h[0, 1, 0, 2] = 0.0  # channel 1: two equal peaks in the top row, columns 0 and 2
    # columns sit at x = -1, -0.5, 0, 0.5, 1 and rows at y = -1, 0, 1; the output is (x0, x1, y0, y1)
    assert torch.allclose(spatial_softmax_xy(h), torch.tensor([[1.0, -0.5, 1.0, -1.0]]))
    flat = torch.zeros(1, 1, 3, 5)  # a uniform map: the centre
    assert torch.allclose(spatial_softmax_xy(flat), torch.zeros(1, 2), atol=1e-6)


def test_encoder_keypoints_append_to_the_unchanged_embedding():
    torch.manual_seed(0)
    plain = Encoder(4)
    torch.manual_seed(0)
    keyed = Encoder(4, keypoints=1, temp=5.0)
    x = torch.rand(2, 3, 3, 64, 64) - 0.5
    out = keyed(x)
    assert keyed.keypoint_dim == 8 and out.shape == (2, 3, 4 * 8 * 2 * 2 + 8)
    assert torch.allclose(out[..., :-8], plain(x), atol=1e-6)  # same weights, same conv embedding
    first = torch.nn.functional.elu(keyed.net[0](x.reshape(-1, 3, 64, 64)))  # conv layer 1: 4 channels, 31 x 31
    assert torch.allclose(out[..., -8:].reshape(6, 8), spatial_softmax_xy(5.0 * first), atol=1e-5)


def test_encoder_size_by_hand_and_the_state_encoder_matches_it():
    # depth 8: the last map 64 x 2 x 2 = 256; layers 1..4 have 8, 16, 32, 64 channels, 2 numbers each
    assert [Encoder.size(8, k) for k in range(5)] == [256, 272, 288, 320, 384]
    for k in range(5):
        assert Encoder(8, keypoints=k).out_dim == Encoder.size(8, k)
    state_model = WorldModel(small_cfg("model.keypoints=1", "model.keypoint_scale=1"), 2, state_dim=6)
    assert state_model.encoder.out_dim == 4 * 32 + 2 * 4 and state_model.keypoint_head is None


def test_world_model_loss_adds_the_keypoint_term():
    cfg = small_cfg("model.keypoints=2", "model.keypoint_scale=3")
    wm = WorldModel(cfg, 3)
    no_weight = small_cfg("model.keypoints=2", "model.keypoint_scale=0")
    assert WorldModel(no_weight, 3).keypoint_head is None
    batch = {
        "image": torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(2, 4, 3) * 2 - 1, "reward": torch.randn(2, 4),
        "discount": torch.ones(2, 4), "is_first": torch.zeros(2, 4, dtype=torch.bool),
    }
    loss, out, metrics = wm.loss(batch)
    target = out["embed"][..., -16:]  # layer 2 has 2d = 8 channels
    ref = gaussian_nll(wm.keypoint_head(out["feat"]), target, event_dims=1).mean()
    assert metrics["model/keypoint_loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    parts = (metrics["model/image_loss"] + metrics["model/reward_loss"] + metrics["model/kl_loss"]
             + 3 * metrics["model/keypoint_loss"])
    assert loss.item() == pytest.approx(parts.item(), rel=1e-5)


@pytest.mark.parametrize("latent", ["gaussian", "discrete"])
def test_world_model_loss_and_feat_layout(latent):
    cfg = small_cfg(f"model.latent={latent}", "model.discount_head=true")
    wm = WorldModel(cfg, 3)
    batch = {
        "image": torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8),
        "action": torch.rand(2, 4, 3) * 2 - 1, "reward": torch.randn(2, 4),
        "discount": torch.ones(2, 4), "is_first": torch.zeros(2, 4, dtype=torch.bool),
    }
    loss, out, metrics = wm.loss(batch)
    Z = 4 * 3 if latent == "discrete" else 4
    assert out["feat"].shape == (2, 4, Z + 16) and wm.feat_dim == Z + 16
    assert torch.equal(out["feat"][..., :Z], out["post"]["stoch"])
    assert torch.equal(out["feat"][..., Z:], out["post"]["deter"])
    assert out["embed"].shape == (2, 4, 128) and out["image"].shape == (2, 4, 3, 64, 64)
    parts = (metrics["model/image_loss"] + metrics["model/reward_loss"] + metrics["model/kl_loss"]
             + metrics["model/discount_loss"])
    assert loss.item() == pytest.approx(parts.item(), rel=1e-5)
    # image NLL is summed over the 3*64*64 pixels of a unit-variance Gaussian
    assert metrics["model/image_loss"].item() > 0.5 * math.log(2 * math.pi) * 3 * 64 * 64
    assert wm.reward_nll(out["feat"], batch["reward"]).shape == (2, 4)


def test_glorot_init_bounds_variance_and_zero_biases():
    from coworld.algos.dreamer import DreamerAgent

    torch.manual_seed(0)
    agent = DreamerAgent(load_config("tiny", ["model.init=glorot"]), action_dim=2)
    layers = [m for net in (agent.wm, agent.actor, agent.critic) for m in net.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(layers) > 15
    for layer in layers:
        w = layer.weight
        k = w[0, 0].numel()  # receptive field (1 for a linear layer)
        fan_sum = (w.shape[0] + w.shape[1]) * k
        bound = math.sqrt(6.0 / fan_sum)
        assert w.abs().max() <= bound
        if w.numel() >= 4096:  # variance of U(-b, b) = b^2 / 3 = 2 / (fan_in + fan_out)
            assert abs(w.var().item() * fan_sum / 2.0 - 1.0) < 0.1
        if layer.bias is not None:
            assert torch.count_nonzero(layer.bias) == 0
    # "torch" keeps PyTorch's initialisation: e.g. the decoder's input layer has non-zero biases, and
    # the conv encoder's first layer has the smaller U(+-1/sqrt(fan_in)) weights
    torch.manual_seed(0)
    plain = DreamerAgent(load_config("tiny", ["model.init=torch"]), action_dim=2)
    assert torch.count_nonzero(plain.wm.decoder.fc.bias) > 0
    w = plain.wm.encoder.net[0].weight
    assert w.abs().max() <= 1 / math.sqrt(w[0].numel())
