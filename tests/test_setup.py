"""``scripts/setup.sh`` always sets up ``.venv`` (what CI and the README call), with or without an active
virtual or conda environment, and never installs into the active one.

The script runs for real (bash, in a scratch copy of the repository) with stand-in interpreters that log how
they were called: creating a real environment would install torch (minutes), and ``.ci/run`` does that for
real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# Stand-in python: logs its call; `-m venv [...] DIR` creates DIR/bin/python (another stand-in).
echo "$0 $*" >> "{log}"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    dir="${{@: -1}}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"
fi
{extra}
exit 0
"""


def stub(path: Path, log: Path, extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB.format(log=log, extra=extra))
    path.chmod(0o755)


def run_setup(tmp_path: Path, active: str) -> list[str]:
    """Runs a copy of setup.sh with `active` in {"none", "venv", "conda"}; returns the logged interpreter
    calls."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    log = tmp_path / "calls.log"
    env_bin = tmp_path / "active_env" / "bin"  # the active environment's interpreter, first on PATH
    for name in ("python", "python3"):
        stub(env_bin / name, log)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    env["PATH"] = f"{env_bin}{os.pathsep}{env['PATH']}"
    if active == "venv":
        env["VIRTUAL_ENV"] = str(env_bin.parent)
    elif active == "conda":
        env["CONDA_PREFIX"] = str(env_bin.parent)
    result = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"set up in {repo / '.venv'}" in result.stdout
    return log.read_text().splitlines()


@pytest.mark.parametrize("active", ["none", "venv", "conda"])
def test_setup_builds_and_uses_dot_venv_whatever_is_active(tmp_path, active):
    calls = run_setup(tmp_path, active)
    active_python = str(tmp_path / "active_env" / "bin" / "python3")
    flags = "--system-site-packages " if active == "conda" else ""  # reuse a conda env's (CUDA) torch
    assert calls[0] == f"{active_python} -m venv {flags}.venv"  # the active env's python builds .venv ...
    rest = calls[1:]
    assert rest and all(call.startswith(".venv/bin/python ") for call in rest)  # ... and only .venv is used
    assert ".venv/bin/python -m pip install --quiet -e .[test,crafter]" in rest


def test_setup_reuses_a_working_venv_and_rebuilds_a_broken_one(tmp_path):
    log = tmp_path / "calls.log"
    run_setup(tmp_path, "none")
    log.unlink()
    calls = run_setup(tmp_path, "venv")  # second run: .venv exists and runs
    assert calls and not any("-m venv" in c for c in calls)
    log.unlink()
    broken = tmp_path / "repo" / ".venv" / "bin" / "python"
    stub(broken, log, extra='[ "$1" = "-c" ] && [ "$2" = "import sys" ] && exit 1')  # its interpreter is gone
    calls = run_setup(tmp_path, "none")
    assert calls[1] == f"{tmp_path / 'active_env' / 'bin' / 'python3'} -m venv .venv"  # rebuilt
