"""``save_pretrained`` / ``from_pretrained``: config JSON + safetensors, latent units and codec carried
along, rollouts in data units, no Lightning on the inference path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import DynamicsTransformer, RolloutConfig, rollout
from dreamer_dynamics.units import LatentUnits
from tests.conftest import make_debug_model, run_python

CODEC = {"class_path": "dreamer_dynamics.data.reading.patch_codec.PatchCodec", "init_args": {"image_size": 8}}


def inputs(model, t_ctx=3, horizon=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    context = torch.randn(2, t_ctx, cfg.latent_tokens, cfg.latent_dim, generator=g) * 3 + 5  # data units
    discrete = torch.stack(
        [torch.randint(0, n, (2, t_ctx + horizon), generator=g) for n in cfg.num_discrete_actions], -1
    )
    continuous = torch.randn(2, t_ctx + horizon, cfg.num_continuous_actions, generator=g)
    return context, {"actions_discrete": discrete, "actions_continuous": continuous}


def test_round_trip_with_statistics_and_codec(tmp_path):
    model = make_debug_model()
    d = model.config.latent_dim
    units = LatentUnits(torch.linspace(4, 6, d).tolist(), torch.linspace(2, 4, d).tolist())
    model.save_pretrained(tmp_path, latent_units=units, codec=CODEC, rollout={"num_steps": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = DynamicsTransformer.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.codec_spec == CODEC and loaded.rollout_defaults == RolloutConfig(num_steps=2)
    assert loaded.latent_units == units  # exactly: the floats round-trip through JSON
    assert json.loads((tmp_path / "config.json").read_text())["latent_units"] == units.to_dict()

    context, actions = inputs(model)
    got = loaded.rollout(context, 3, generator=torch.Generator().manual_seed(1), **actions)
    # reference: standardise the context, roll out in model units (K = 2 from the export), map back
    mean, std = torch.tensor(units.mean), torch.tensor(units.std)
    ref = (
        rollout(
            model,
            (context - mean) / std,
            3,
            num_steps=2,
            generator=torch.Generator().manual_seed(1),
            **actions,
        )
        * std
        + mean
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert abs(float(got.mean()) - 5) < 1.5  # data units, not the model's standardised ones


def test_without_statistics_equals_the_plain_rollout_bitwise(tmp_path):
    model = make_debug_model(seed=3)
    model.save_pretrained(tmp_path)
    loaded = DynamicsTransformer.from_pretrained(tmp_path, attention_backend="math")  # a config override
    assert loaded.latent_units == LatentUnits.identity(4) and loaded.codec_spec is None
    context, actions = inputs(model, horizon=2)
    got = loaded.rollout(context, 2, generator=torch.Generator().manual_seed(4), **actions)
    ref = rollout(model, context, 2, generator=torch.Generator().manual_seed(4), **actions)
    assert torch.equal(got, ref)


def test_inference_path_does_not_import_lightning(tmp_path):
    model = make_debug_model()
    model.save_pretrained(tmp_path / "m", latent_units=LatentUnits([0.0] * 4, [2.0] * 4))
    context, actions = inputs(model)
    torch.save({"context": context, **actions}, tmp_path / "in.pt")
    script = (
        "import sys, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"  # the same reduction order as this process
        "from dreamer_dynamics.model import DynamicsTransformer\n"
        "m = DynamicsTransformer.from_pretrained(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "out = m.rollout(x.pop('context'), 3, generator=torch.Generator().manual_seed(0), **x)\n"
        "torch.save(out, sys.argv[3])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    result = run_python(script, tmp_path / "m", tmp_path / "in.pt", tmp_path / "out.pt")
    assert result.stdout.strip() == "[]"
    expected = DynamicsTransformer.from_pretrained(tmp_path / "m").rollout(
        context, 3, generator=torch.Generator().manual_seed(0), **actions
    )
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model here"):
        DynamicsTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(ValueError, match="unsupported format 'something-else/9'"):
        DynamicsTransformer.from_pretrained(tmp_path)
    make_debug_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights file is missing"):
        DynamicsTransformer.from_pretrained(tmp_path)


def test_export_refuses_a_foreign_checkpoint(tmp_path, capsys):
    from dreamer_dynamics.export import main

    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    assert main([str(tmp_path / "x.ckpt"), str(tmp_path / "out")]) == 1
    assert "not a DynamicsModule checkpoint" in capsys.readouterr().err


def test_latent_units_are_checked_on_save_and_load(tmp_path):
    model = make_debug_model()
    record = {"mean": [0.0] * 4, "std": [1.0] * 4, "count": 10}  # statistics, not units: which std applies?
    with pytest.raises(ConfigError, match='latent_units: must be an object with exactly the keys "mean"'):
        model.save_pretrained(tmp_path, latent_units=record)
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    for units, message in (
        ({"mean": [0.0] * 4, "std": [1.0, 0.0, 1.0, 1.0]}, r"config.json: latent_units.std: must be > 0"),
        ({"mean": [0.0] * 3, "std": [1.0] * 3}, r"config.json: latent_units: 3 channels, .* latent_dim is 4"),
    ):
        path.write_text(json.dumps({**config, "latent_units": units}))
        with pytest.raises(ConfigError, match=message):
            DynamicsTransformer.from_pretrained(tmp_path)


def test_latent_units_from_stats_and_their_plain_form():
    record = {"mean": [1.0, -2.0, 0.5], "std": [3.0, 4.0, 0.0], "count": 7}
    pooled = LatentUnits.from_stats(record)  # the RMS of the channel stds: sqrt((9 + 16 + 0) / 3)
    assert pooled.mean == (1.0, -2.0, 0.5) and pooled.std == (math.sqrt(25 / 3),) * 3
    channel = LatentUnits.from_stats(record, "channel")  # each its own, the constant channel floored
    assert channel.std == (3.0, 4.0, 4e-6)
    assert LatentUnits.from_stats({"mean": [2.0], "std": [0.0]}).std == (1.0,)  # all constant
    assert LatentUnits.from_dict(json.loads(json.dumps(pooled.to_dict()))) == pooled  # exact round trip
    z = torch.tensor([[4.0, 2.0, 0.5]], dtype=torch.bfloat16)
    assert channel.standardize(z).dtype == torch.bfloat16
    torch.testing.assert_close(channel.standardize(z.float()), torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(channel.destandardize(channel.standardize(z.float())), z.float())
    with pytest.raises(ConfigError, match="scale must be one of"):
        LatentUnits.from_stats(record, "global")
