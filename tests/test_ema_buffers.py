"""Weight averaging must not corrupt the model: EMAWeightAveraging (``use_buffers=True``) averages every
buffer in float and copies it back, so integer buffers would be truncated (0.9 * 3 + 0.1 * 3 -> 2.99 -> 2)."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from tests.conftest import make_debug_model


def test_ema_of_the_model_keeps_action_ids_valid():
    model = make_debug_model(num_discrete_actions=(3, 7))
    assert all(b.is_floating_point() for b in model.buffers())  # nothing an average could truncate
    averaged = AveragedModel(model, avg_fn=get_ema_avg_fn(0.9), use_buffers=True)
    for _ in range(3):
        averaged.update_parameters(model)
    b, t, cfg = 1, 2, model.config
    z = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim)
    tau = torch.full((b, t), 0.5)
    acts = {
        "actions_discrete": torch.tensor([[[2, 6], [1, 0]]]),
        "actions_continuous": torch.zeros(b, t, cfg.num_continuous_actions),
    }
    # the highest ids stay in range and map to the same embeddings
    torch.testing.assert_close(averaged.module(z, tau, tau, **acts), model(z, tau, tau, **acts))
