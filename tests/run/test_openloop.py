import numpy as np
import pytest
import torch

from coworld.algos import DreamerAgent
from coworld.config import load_config
from coworld.errors import UserError
from coworld.run.openloop import openloop_predict, openloop_strip
from tests.algos.test_dreamer import make_batch as dreamer_batch

SMALL = [
    "model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.classes=3",
    "model.units=16", "behaviour.actor_units=16", "behaviour.critic_units=16",
]


def make_batch(B=4, L=7, A=2, seed=0):
    return dreamer_batch(B, L, A, seed)


@pytest.fixture(scope="module")
def agent():
    torch.manual_seed(0)
    return DreamerAgent(load_config("tiny", SMALL), 2)


def test_strip_layout_real_model_diff(agent):
    batch = make_batch()
    strip = openloop_strip(agent, batch, context=3, rows=2)
    assert strip.dtype == np.uint8 and strip.shape == (2 * 3 * 64, 7 * 64, 3)
    for i in range(2):
        band = strip[i * 192:(i + 1) * 192]
        for t in range(7):
            cell = lambda r: band[r * 64:(r + 1) * 64, t * 64:(t + 1) * 64]  # noqa: E731
            np.testing.assert_array_equal(cell(0), batch["image"][i, t].numpy())
            expected_diff = np.abs(cell(0).astype(int) - cell(1).astype(int))
            np.testing.assert_array_equal(cell(2), expected_diff)
    # horizon shorter than the rest of the window; rows capped by B
    assert openloop_strip(agent, batch, context=2, horizon=1, rows=10).shape == (4 * 3 * 64, 3 * 64, 3)


def test_context_frames_are_posterior_reconstructions(agent):
    batch = make_batch()
    torch.manual_seed(1)
    real, model = openloop_predict(agent, batch, context=3, rows=2)
    torch.manual_seed(1)  # same posterior samples as inside the call
    with torch.no_grad():
        wm = agent.wm
        post, _ = wm.observe(wm.encode(batch["image"][:2, :3]), batch["action"][:2, :3], batch["is_first"][:2, :3])
        recon = wm.decoder(wm.feat(post)).permute(0, 1, 3, 4, 2)
    expected = ((recon + 0.5) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(model[:, :3], expected)
    np.testing.assert_array_equal(real, batch["image"][:2].numpy())


def test_openloop_part_ignores_future_images_but_follows_actions(agent):
    batch = make_batch()
    torch.manual_seed(2)
    _, model = openloop_predict(agent, batch, context=3)
    other = dict(batch, image=batch["image"].clone())
    other["image"][:, 3:] = 255 - other["image"][:, 3:]
    torch.manual_seed(2)
    _, model_other_images = openloop_predict(agent, other, context=3)
    np.testing.assert_array_equal(model, model_other_images)
    moved = dict(batch, action=batch["action"].clone())
    moved["action"][:, 3:] = -moved["action"][:, 3:]
    torch.manual_seed(2)
    _, model_other_actions = openloop_predict(agent, moved, context=3)
    np.testing.assert_array_equal(model[:, :3], model_other_actions[:, :3])
    assert not np.array_equal(model[:, 3:], model_other_actions[:, 3:])


def test_leaves_rng_and_weights_untouched(agent):
    before_rng = torch.get_rng_state()
    before_w = [p.detach().clone() for p in agent.parameters()]
    openloop_strip(agent, make_batch(), context=2)
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert all(torch.equal(a, b) for a, b in zip(before_w, agent.parameters()))


def test_bad_context_is_a_user_error(agent):
    with pytest.raises(UserError, match="context"):
        openloop_strip(agent, make_batch(L=4), context=3, horizon=2)
