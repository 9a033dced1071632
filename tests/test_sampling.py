"""Per-frame step sizes and signal levels (docs/design.md §3.1-3.2)."""

import math

import pytest
import torch

from dreamer_dynamics.model import context_signal_level
from dreamer_dynamics.objective import sample_signal_and_step, step_level_probs, with_context_prefix


def _draw(k_max=64, n=200_000, **kw):
    return sample_signal_and_step(n // 100, 100, k_max, generator=torch.Generator().manual_seed(0), **kw)


def test_step_sizes_uniform_over_powers_of_two():
    tau, d = _draw()
    assert tau.dtype == d.dtype == torch.float32 and tau.shape == (2000, 100)
    levels = torch.log2(1 / d).round().long()
    assert torch.equal(1 / torch.pow(2.0, levels.float()), d)  # d is exactly 1/K
    freq = torch.bincount(levels.flatten(), minlength=7).float() / d.numel()
    torch.testing.assert_close(freq, torch.full((7,), 1 / 7), atol=0.006, rtol=0)  # uniform in log2 K


def test_signal_levels_on_their_step_grid_and_never_clean():
    tau, d = _draw()
    k = 1 / d
    idx = tau * k
    assert torch.equal(idx, idx.round())  # tau = i / K exactly
    assert (tau >= 0).all() and (tau <= 1 - d).all() and (tau < 1).all()
    for steps in (1, 4, 64):  # tau uniform over {0, ..., K-1}/K for each K
        sel = idx[k == steps].long()
        freq = torch.bincount(sel, minlength=steps).float() / sel.numel()
        torch.testing.assert_close(
            freq, torch.full((steps,), 1 / steps), atol=4 / math.sqrt(sel.numel()), rtol=0
        )


def test_d_min_share_knob():
    _, d = _draw(d_min_share=0.75)
    share = (d == 1 / 64).float().mean().item()
    assert abs(share - 0.75) < 0.01
    assert abs((d == 1.0).float().mean().item() - 0.25 / 6) < 0.005
    torch.testing.assert_close(step_level_probs(8, 0.5), torch.tensor([0.5 / 3, 0.5 / 3, 0.5 / 3, 0.5]))


def test_k_max_one_is_flow_matching_on_full_steps():
    tau, d = sample_signal_and_step(3, 5, 1)
    assert (d == 1).all() and (tau == 0).all()


def test_seeded_and_validated():
    a = sample_signal_and_step(2, 3, 16, generator=torch.Generator().manual_seed(5))
    b = sample_signal_and_step(2, 3, 16, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="power of two"):
        sample_signal_and_step(2, 3, 48)
    with pytest.raises(ValueError, match="d_min_share"):
        sample_signal_and_step(2, 3, 16, d_min_share=1.5)


def test_one_power_of_two_check_serves_k_max_and_step_counts():
    from dreamer_dynamics.model import DynamicsConfig
    from dreamer_dynamics.objective import is_power_of_two

    assert [n for n in range(-4, 70) if is_power_of_two(n)] == [1, 2, 4, 8, 16, 32, 64]
    assert DynamicsConfig.debug(k_max=8).d_min == 0.125
    with pytest.raises(ValueError, match="power of two"):
        DynamicsConfig.debug(k_max=12)


def test_context_prefix_labels_the_first_frames_as_rollout_context():
    """The first n frames of every row get the labels a rollout's context frames carry (tau_ctx, d_min), the
    rest keep their drawn levels; the inputs are not modified and n = 0 is the paper's schedule."""
    tau, d = sample_signal_and_step(64, 6, 16, generator=torch.Generator().manual_seed(1), d_min_share=0.5)
    before = tau.clone(), d.clone()
    level = context_signal_level(0.1, 16)  # 14/16
    new_tau, new_d = with_context_prefix(tau, d, 2, level, 1 / 16)
    assert (new_tau[:, :2] == 0.875).all() and (new_d[:, :2] == 1 / 16).all()
    assert torch.equal(new_tau[:, 2:], tau[:, 2:]) and torch.equal(new_d[:, 2:], d[:, 2:])
    assert (tau[:, :2] != 0.875).any()  # they were drawn, and the originals are untouched
    assert torch.equal(tau, before[0]) and torch.equal(d, before[1])
    same = with_context_prefix(tau, d, 0, level, 1 / 16)
    assert same[0] is tau and same[1] is d
    coarse, _ = with_context_prefix(tau, d, 1, context_signal_level(0.1, 4), 1 / 4)  # 0.9 would round to 1
    assert (coarse[:, 0] == 0.75).all()  # the cleanest training level: tau = 1 is never one
    for frames in (-1, 6):
        with pytest.raises(ValueError, match="leave a frame to predict"):
            with_context_prefix(tau, d, frames, level, 1 / 16)


def test_bootstrap_row_share_keeps_other_rows_at_d_min():
    """Rows outside the share hold every frame at d_min with tau uniform on the d_min grid; rows inside draw K
    by the schedule (the share of bootstrap rows is ~r); r = 1 draws every row like the plain schedule."""
    k_max, rows, time = 8, 4000, 6
    gen = torch.Generator().manual_seed(0)
    tau, d = sample_signal_and_step(
        rows, time, k_max, generator=gen, d_min_share=0.0, bootstrap_row_share=0.25
    )
    bootstrap_rows = (d > 1 / k_max).any(1)
    assert abs(bootstrap_rows.float().mean().item() - 0.25) < 0.03
    flow = ~bootstrap_rows
    assert torch.all(d[flow] == 1 / k_max)
    levels = torch.bincount((tau[flow] * k_max).long().flatten(), minlength=k_max).float()
    assert levels.min() / levels.max() > 0.85  # uniform on the d_min grid, not the coarse grids' 0
    assert torch.all(d[bootstrap_rows] > 1 / k_max)  # d_min_share 0: inside the share no frame sits at d_min
    plain = sample_signal_and_step(50, time, k_max, generator=torch.Generator().manual_seed(1))
    full = sample_signal_and_step(
        50, time, k_max, generator=torch.Generator().manual_seed(1), bootstrap_row_share=1.0
    )
    assert torch.equal(plain[1], full[1]) and torch.equal(plain[0], full[0])  # the same draws before the rows
    with pytest.raises(ValueError, match="bootstrap_row_share"):
        sample_signal_and_step(2, 2, k_max, bootstrap_row_share=1.5)
