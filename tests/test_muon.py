"""``parameter_groups`` and ``MuonAdamW``: Muon updates exactly the blocks' matrices, AdamW everything else,
as one checkpointable optimiser that learning-rate schedules scale as a whole; a Muon state is never resumed
where Muon cannot run."""

from __future__ import annotations

import copy

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.training import MuonAdamW, WarmupCosineLR, parameter_groups

needs_muon = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9"
)


def small_model(seed: int = 0) -> DynamicsTransformer:
    torch.manual_seed(seed)
    config = DynamicsConfig(latent_tokens=4, latent_dim=8, dim=32, depth=2, heads=4, kv_heads=2, k_max=4)
    return DynamicsTransformer(config)


def backward_once(model: DynamicsTransformer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 3, 4, 8, generator=generator)
    tau = torch.full((2, 3), 0.5)
    d = torch.full((2, 3), 0.25)
    model.zero_grad()
    model(z, tau, d).square().mean().backward()


def train_in_lockstep(runs, seeds) -> None:
    """One backward + optimiser step + scheduler step per seed for each (model, optimizer, scheduler), then
    the first two models' weights are bit-identical."""
    for seed in seeds:
        for model, optimizer, scheduler in runs:
            backward_once(model, seed)
            optimizer.step()
            scheduler.step()
    (first, *_), (second, *_) = runs
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(p, q), name


def test_parameter_groups_flag_exactly_the_blocks_linear_weights():
    model = small_model()
    hidden, other, undecayed = parameter_groups(model)
    linear_in_blocks = {
        id(m.weight) for block in model.blocks for m in block.modules() if isinstance(m, torch.nn.Linear)
    }
    assert hidden["hidden_matrix"] and not other["hidden_matrix"] and not undecayed["hidden_matrix"]
    assert {id(p) for p in hidden["params"]} == linear_in_blocks
    assert {id(model.latent_in.weight), id(model.latent_out.weight)} <= {id(p) for p in other["params"]}
    assert undecayed["weight_decay"] == 0.0 and "weight_decay" not in hidden and "weight_decay" not in other
    everything = [p for group in (hidden, other, undecayed) for p in group["params"]]
    assert len(everything) == len(list(model.parameters())) == len({id(p) for p in everything})


@needs_muon
def test_hidden_matrices_take_muon_steps_and_the_rest_adamw_steps():
    """Two steps of MuonAdamW equal, parameter for parameter, two steps of a separate torch.optim.Muon on the
    blocks' matrices and a separate torch.optim.AdamW on the rest, each with its own rate."""
    model, twin = small_model(), small_model()
    optimizer = MuonAdamW(
        parameter_groups(model), lr=1e-3, weight_decay=0.1, muon_lr=0.05, muon_weight_decay=0.2
    )
    hidden, other, undecayed = parameter_groups(twin)
    muon = torch.optim.Muon(hidden["params"], lr=0.05, weight_decay=0.2, momentum=0.95, nesterov=True)
    adamw = torch.optim.AdamW(
        [other, {"params": undecayed["params"], "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        weight_decay=0.1,
    )
    start = copy.deepcopy(model.state_dict())
    for seed in (1, 2):
        backward_once(model, seed)
        backward_once(twin, seed)
        optimizer.step()
        muon.step()
        adamw.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, start[name]), f"{name} never moved"
    # Muon's update is (nearly) orthogonal: its singular values are near one, the gradient's are spread.
    w = model.blocks[0].mlp.down.weight
    before = w.detach().clone()
    backward_once(model, 3)
    grad_singular = torch.linalg.svdvals(w.grad)
    optimizer.zero_grad()
    muon_only = MuonAdamW([{"params": [w], "hidden_matrix": True}], muon_lr=1.0, muon_weight_decay=0.0)
    backward_once(model, 3)
    muon_only.step()
    update_singular = torch.linalg.svdvals(before - w.detach())
    assert grad_singular.max() / grad_singular.min() > 5
    assert update_singular.min() > 0.4 and update_singular.max() < 1.6


@needs_muon
def test_schedule_scales_both_rates_and_a_checkpoint_resumes_exactly():
    model = small_model()
    optimizer = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=3, total_steps=10, min_lr_ratio=0.1)
    for seed in range(4):
        backward_once(model, seed)
        optimizer.step()
        scheduler.step()
    factor = scheduler.lr_factor(4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.02 * factor, 1e-3 * factor, 1e-3 * factor]
    )

    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    saved_scheduler = scheduler.state_dict()
    assert any("momentum_buffer" in s for s in saved_optimizer["state"].values())  # Muon's state is saved
    assert any("exp_avg_sq" in s for s in saved_optimizer["state"].values())  # and AdamW's

    resumed = small_model(seed=7)  # other weights, overwritten by the checkpoint
    resumed.load_state_dict(saved_model)
    resumed_optimizer = MuonAdamW(parameter_groups(resumed), lr=1e-3, muon_lr=0.02)
    resumed_scheduler = WarmupCosineLR(resumed_optimizer, warmup_steps=3, total_steps=10, min_lr_ratio=0.1)
    resumed_optimizer.load_state_dict(saved_optimizer)  # Lightning's order: build both, then load both
    resumed_scheduler.load_state_dict(saved_scheduler)
    train_in_lockstep(
        [(model, optimizer, scheduler), (resumed, resumed_optimizer, resumed_scheduler)], (10, 11)
    )
    # the inner optimisers follow the loaded groups: a rate set on the outer groups reaches them
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_plain_parameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="hidden_matrix"):
        MuonAdamW(small_model().parameters())


def test_without_torch_muon_every_group_falls_back_to_adamw(monkeypatch):
    """torch < 2.9 has no torch.optim.Muon: a warning, and AdamW at lr for every group (not at muon_lr)."""
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    model = small_model()
    with pytest.warns(UserWarning, match="no torch.optim.Muon.*AdamW at lr"):
        optimizer = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 1e-3]
    backward_once(model, 0)
    optimizer.step()
    assert all("exp_avg" in optimizer.state[p] for p in model.parameters())


def test_flattened_or_sharded_matrices_fall_back_to_adamw_with_the_reason():
    """FSDP1 flattens the blocks' weights (1-D views), FSDP2 shards them (DTensor): no whole matrix to
    orthogonalise, so AdamW at lr for every group, not a crash and not AdamW at Muon's rate."""
    model = small_model()
    groups = parameter_groups(model)
    flat = [torch.nn.Parameter(p.detach().flatten()) for p in groups[0]["params"]]
    groups[0] = {**groups[0], "params": flat}
    with pytest.warns(UserWarning, match="sharded or flattened"):
        optimizer = MuonAdamW(groups, lr=1e-3, muon_lr=0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 1e-3]


def test_parameter_groups_by_name():
    """Only linear maps are decayed; registers, the action base token, embedding tables, norm gains and
    biases are not (shrinking them changes what they represent)."""
    model = small_model()
    names = {id(p): name for name, p in model.named_parameters()}
    hidden, decayed, undecayed = (
        {names[id(p)] for p in group["params"]} for group in parameter_groups(model)
    )
    assert hidden == {n for n in names.values() if n.startswith("blocks.") and n.endswith(".weight")} - {
        n for n in names.values() if "norm" in n
    }
    assert decayed == {"latent_in.weight", "latent_out.weight", "shortcut.proj.weight"}
    assert {
        "registers",
        "actions.base",
        "shortcut.signal_table.weight",
        "shortcut.step_table.weight",
    } <= undecayed
    assert {"latent_in.bias", "out_norm.weight"} <= undecayed


@needs_muon
def test_a_muon_state_is_refused_where_muon_cannot_run(monkeypatch):
    """A state saved with Muon on the blocks' matrices (momentum buffers, Muon's rate) cannot continue as
    AdamW: loading it says why in one line instead of failing on the first step or running AdamW at Muon's
    rate."""
    model = small_model()
    optimizer = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    backward_once(model, 0)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.warns(UserWarning, match="no torch.optim.Muon"):
        fallback = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    with pytest.raises(ValueError, match=r"saved with Muon.*no torch.optim.Muon") as error:
        fallback.load_state_dict(saved)
    assert "\n" not in str(error.value)


@needs_muon
def test_an_adamw_state_is_refused_where_muon_runs(monkeypatch):
    """The other way round: an all-AdamW state (saved where Muon could not run) would put Muon at AdamW's
    rate on the blocks' matrices."""
    model = small_model()
    with monkeypatch.context() as patch:
        patch.delattr(torch.optim, "Muon")
        with pytest.warns(UserWarning):
            fallback = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    backward_once(model, 0)
    fallback.step()
    optimizer = MuonAdamW(parameter_groups(model), lr=1e-3, muon_lr=0.02)
    with pytest.raises(ValueError, match="saved without Muon"):
        optimizer.load_state_dict(copy.deepcopy(fallback.state_dict()))
