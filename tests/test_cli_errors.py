"""Every error a user can make on the command line is one line on stderr naming what is wrong, with a non-zero
exit status and no usage dump or traceback (the full traceback with ``DREAMER_DYNAMICS_TRACEBACK=1``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamer_dynamics.cli import main
from dreamer_dynamics.configs import available_configs
from dreamer_dynamics.data.cli import main as data_main
from dreamer_dynamics.model import DynamicsConfig
from dreamer_dynamics.module import DynamicsModule
from tests.conftest import make_debug_model

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "lightning_configs" / "quickstart.yaml")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when sys.argv also holds arguments (pytest's own)."""
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    monkeypatch.delenv("DREAMER_DYNAMICS_TRACEBACK", raising=False)


def one_line_error(capsys, args: list[str]) -> str:
    """Run ``dreamer-dynamics ARGS`` in-process; it must exit non-zero with exactly one line on stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code not in (0, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_misspelled_key_names_the_key_and_the_closest_valid_ones(capsys):
    line = one_line_error(capsys, ["fit", "--config", QUICKSTART, "--model.model.dimm", "3"])
    assert "model.model.dimm" in line and "model.model.dim" in line.replace("model.model.dimm", "")
    line = one_line_error(capsys, ["fit", "--config", QUICKSTART, "--model.no_such_key", "3"])
    assert "model.no_such_key" in line


def test_a_misspelled_key_in_a_yaml_config(capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  model:\n    dimm: 3\n")
    line = one_line_error(capsys, ["fit", "--config", QUICKSTART, "--config", str(config)])
    assert "model.model.dimm" in line and "model.model.dim" in line.replace("model.model.dimm", "")


def test_an_unknown_config_name_lists_the_packaged_ones(capsys):
    line = one_line_error(capsys, ["fit", "--config", "quikstart"])
    assert "quikstart" in line and "did you mean quickstart" in line
    assert all(name in line for name in available_configs())


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_max_steps_below_one_is_refused(capsys, steps):
    line = one_line_error(capsys, ["fit", "--config", QUICKSTART, "--trainer.max_steps", steps])
    assert "trainer.max_steps" in line and steps in line


def test_a_missing_extra_names_the_pip_install_command(capsys, tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read: the extra is checked first")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError, as without the extra
    assert data_main(["from-video", str(tmp_path / "out"), str(video)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dreamer_dynamics[video]'" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_rollout_with_the_wrong_latent_width_names_both_shapes():
    """In data units (the context is standardised first) and in model units, the module's and the exported
    model's entry points alike."""
    config = DynamicsConfig.debug(num_discrete_actions=(), num_continuous_actions=0)
    n, d = config.latent_tokens, config.latent_dim
    stats = {"mean": [0.5] * d, "std": [2.0] * d, "count": 10}
    module = DynamicsModule(config, latent_stats=stats)
    wrong = torch.zeros(1, 2, n, d + 1)
    expected = rf"\(B, T_ctx, {n}, {d}\).*\(1, 2, {n}, {d + 1}\)"
    with pytest.raises(ValueError, match=expected):
        module.rollout(wrong, 2)
    with pytest.raises(ValueError, match=expected):
        module.rollout(wrong.numpy(), 2)
    exported = make_debug_model(num_discrete_actions=(), num_continuous_actions=0)
    exported.latent_stats = {"mean": torch.zeros(d), "std": torch.ones(d)}
    with pytest.raises(ValueError, match=expected):
        exported.rollout(wrong, 2)


def run_console_script(*args: str, env: dict) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "dreamer-dynamics"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_console_script_prints_one_line_and_the_traceback_only_when_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DREAMER_DYNAMICS_TRACEBACK"}
    args = ("fit", "--config", "quickstart", "--model.no_such_key", "3")
    result = run_console_script(*args, env=env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "model.no_such_key" in result.stderr and "Traceback" not in result.stderr
    traced = run_console_script(*args, env={**env, "DREAMER_DYNAMICS_TRACEBACK": "1"})
    assert traced.returncode != 0 and "Traceback" in traced.stderr


def test_data_script_honours_the_traceback_switch(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "none")
    assert data_main(["info", missing]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    monkeypatch.setenv("DREAMER_DYNAMICS_TRACEBACK", "1")
    with pytest.raises(ValueError):
        data_main(["info", missing])
