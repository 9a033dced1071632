"""One source of presets: every packaged config builds exactly ``DynamicsConfig.preset(name)`` through the
CLI, the dataclass defaults are the quickstart model, and ``--config NAME`` finds the packaged file."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from dreamer_dynamics.cli import LINKED_DATA_FIELDS, main
from dreamer_dynamics.configs import available_configs, config_path, load_config, resolve_config_args
from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["dreamer-dynamics"])


MODEL_CONFIGS = [
    n for n in available_configs() if (load_config(n).get("model") or {}).get("model") is not None
]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_cli_config_and_python_preset_agree(name, capsys):
    """Generic over the packaged configs with a model: change a YAML, and the Python preset follows."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", name, "--print_config"])  # by name, like a pip-installed user
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    preset = dataclasses.asdict(DynamicsConfig.preset(name))
    for field in LINKED_DATA_FIELDS:  # linked from the data at run time
        preset.pop(field)
    printed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in printed.items()}
    preset = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.items()}
    assert printed == preset


def test_named_presets_are_the_packaged_configs():
    assert {"quickstart", "minecraft"} <= set(available_configs())
    quick = DynamicsConfig.quickstart()
    assert (quick.time_every, quick.k_max) == tuple(
        load_config("quickstart")["model"]["model"][k] for k in ("time_every", "k_max")
    )
    assert DynamicsConfig.minecraft().dim == load_config("minecraft")["model"]["model"]["dim"]


def test_defaults_are_quickstart_sized():
    """``fit`` without a config builds the quickstart's network size (not a 6 M-parameter model)."""
    defaults, quick = DynamicsConfig(), DynamicsConfig.quickstart(latent_tokens=16, latent_dim=32)
    sizes = (
        "dim",
        "depth",
        "heads",
        "kv_heads",
        "context_length",
        "num_registers",
        "action_tokens",
        "mlp_ratio",
    )
    assert {k: getattr(defaults, k) for k in sizes} == {k: getattr(quick, k) for k in sizes}
    count = sum(p.numel() for p in DynamicsTransformer(DynamicsConfig(latent_dim=48)).parameters())
    assert count < 500_000


def test_config_names_resolve_and_paths_stay(tmp_path):
    (tmp_path / "mine.yaml").write_text("{}")
    args = ["fit", "--config", "quickstart", "-c", str(tmp_path / "mine.yaml"), "--config=gpu_fsdp"]
    resolved = resolve_config_args(args)
    assert resolved[2] == str(config_path("quickstart")) and resolved[4] == str(tmp_path / "mine.yaml")
    assert resolved[5] == "--config=" + str(config_path("gpu_fsdp"))
    with pytest.raises(
        ConfigError, match="--config quikstart: no such file or packaged config; did you mean"
    ):
        resolve_config_args(["--config", "quikstart"])  # a bare name: the packaged configs are listed
    assert resolve_config_args(["--config", "no/such.yaml"]) == ["--config", "no/such.yaml"]  # the parser's


def test_ckpt_path_last_picks_the_newest_checkpoint_or_starts_fit_fresh(tmp_path):
    import os

    from jsonargparse import Namespace

    from dreamer_dynamics.checkpoints import find_last_checkpoint
    from dreamer_dynamics.cli import DynamicsCLI
    from dreamer_dynamics.errors import ConfigError

    cli = DynamicsCLI.__new__(DynamicsCLI)  # only the reconciliation method, no parsing
    config = Namespace(ckpt_path="last", trainer=Namespace(default_root_dir=str(tmp_path)))
    cli.reconcile_checkpoint("fit", config)
    assert config.ckpt_path is None  # nothing to resume yet: fit starts fresh
    with pytest.raises(ConfigError, match="no \\*.ckpt under"):
        cli.reconcile_checkpoint("validate", Namespace(ckpt_path="last", trainer=config.trainer))
    old, new = tmp_path / "a" / "version_0" / "step=1.ckpt", tmp_path / "b" / "last.ckpt"
    for i, path in enumerate((new, old)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + 10 * (1 - i), 1000 + 10 * (1 - i)))  # `new` is the most recent
    assert find_last_checkpoint(tmp_path) == new
