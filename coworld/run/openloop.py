"""Open-loop video prediction: how far ahead can the world model imagine the true future?

For a few sequences of a replay batch the posterior filters the first ``context`` frames
(docs/algorithms.md#world-model: q(z_t | h_t, e_t)); from the last filtered state the prior alone is rolled forward
with the TRUE actions the data took (p(z_t | h_t), no images seen). Every latent state is
decoded to the decoder's mean image. The result is tiled into one picture, three rows per
sequence: the real frames, the model's frames (reconstructions for the first ``context``
columns, open-loop predictions after), and their absolute difference.
"""

from __future__ import annotations

import numpy as np
import torch

from coworld.errors import UserError
from coworld.run.checkpoint import forked_rng


def _to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """Decoder mean (…, 3, 64, 64) in the preprocessed range o / 255 - 0.5 -> uint8 (…, 64, 64, 3)."""
    image = decoded.float().movedim(-3, -1)
    return ((image + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def openloop_predict(agent, batch: dict, context: int = 5, horizon: int | None = None,
                     rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(real, model) frames, both uint8 (rows, context + horizon, 64, 64, 3).

    ``batch`` is a batch-major replay sample (image (B, L, 64, 64, 3) uint8, action (B, L, A),
    is_first (B, L)); ``horizon`` defaults to the rest of the window, L - context.
    Runs on a forked torch RNG, so the caller's random stream is left exactly as it was.
    """
    B, L = batch["image"].shape[:2]
    horizon = L - context if horizon is None else horizon
    if context < 1 or horizon < 0 or context + horizon > L:
        raise UserError(f"open-loop prediction needs 1 <= context and context + horizon <= sequence length "
                        f"{L}; got context={context}, horizon={horizon}")
    n, T = min(rows, B), context + horizon
    wm, device = agent.wm, agent.device
    image = torch.as_tensor(batch["image"][:n, :T]).to(device)
    action = torch.as_tensor(batch["action"][:n, :T]).to(device).float()
    is_first = torch.as_tensor(batch["is_first"][:n, :T]).to(device).bool()

    with forked_rng(device):
        post, _ = wm.observe(wm.encode(image[:, :context]), action[:, :context], is_first[:, :context])
        decoded = [wm.decoder(wm.feat(post))]  # (n, context, 3, 64, 64): reconstructions
        state = {k: v[:, -1] for k, v in post.items()}
        for t in range(context, T):
            # An episode starting inside the open-loop part restarts from the initial state.
            state, act = wm.rssm.reset(state, action[:, t], is_first[:, t])
            state = wm.rssm.img_step(state, act)
            decoded.append(wm.decoder(wm.feat(state))[:, None])
    return image.cpu().numpy(), _to_uint8(torch.cat(decoded, 1))


def openloop_strip(agent, batch: dict, context: int = 5, horizon: int | None = None,
                   rows: int = 3) -> np.ndarray:
    """One uint8 image (rows * 3 * 64, (context + horizon) * 64, 3): for each of the first
    ``rows`` sequences a row of real frames, a row of model frames and a row of |real - model|.

    Log it with ``session.logger.image(step, "openloop", strip)``.
    """
    real, model = openloop_predict(agent, batch, context, horizon, rows)
    diff = np.abs(real.astype(np.int16) - model.astype(np.int16)).astype(np.uint8)
    n, T, h, w, c = real.shape
    grid = np.stack([real, model, diff], 1)  # (n, 3, T, h, w, c)
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(n * 3 * h, T * w, c)
