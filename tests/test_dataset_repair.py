"""Leftovers of killed writers (reported by ``validate``, removed by ``validate --repair``) and the writer's
lock file (host + pid, staleness checks) that also holds on NFS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dreamer_dynamics.data import DatasetError, LatentDataset, LatentDatasetWriter
from dreamer_dynamics.data.cli import main as data_cli
from dreamer_dynamics.data.reading.lock import WriterLock, read_lock


def write(root, episodes=2):
    with LatentDatasetWriter(root, latent_shape=(2, 3)) as w:
        for i in range(episodes):
            w.add_episode(np.full((5, 2, 3), i, np.float32))


_KILLED = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from dreamer_dynamics.data import LatentDatasetWriter
    from dreamer_dynamics.data.building import writer as writer_module
    w = LatentDatasetWriter(sys.argv[1], latent_shape=(2, 3), commit_every=100)
    w.add_episode(np.zeros((5, 2, 3), np.float32))   # renamed into place, never committed (commit_every=100)
    def dying_save(f, array, allow_pickle=False):    # then half a temporary file, then SIGKILL
        f.write(b"partial"); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    writer_module.np.save = dying_save
    w.add_episode(np.ones((5, 2, 3), np.float32))
""")


def kill_a_writer(root, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    result = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_validate_reports_leftovers_and_repair_removes_them(tmp_path, capsys):
    root = tmp_path / "data"
    write(root)
    kill_a_writer(root, tmp_path)
    episodes = sorted(os.listdir(root / "episodes"))
    # the two leftovers: the in-flight temporary (atomic_write's ".tmp-<name>-<pid>") and an unlisted episode
    temporaries = [name for name in episodes if name.startswith(".tmp-000003.latents.npy")]
    assert len(temporaries) == 1 and "000002.latents.npy" in episodes
    assert read_lock(root / ".lock")["pid"] != os.getpid()  # the killed writer's lock is still there

    assert data_cli(["validate", str(root)]) == 1
    err = capsys.readouterr().err
    assert "000002.latents.npy: episode file not listed in metadata.json" in err
    assert f"{temporaries[0]}: temporary file of an interrupted writer" in err
    assert "--repair" in err and "2 leftover file(s)" in err

    with pytest.warns(UserWarning, match="stale writer lock.*no longer running"):  # the dead pid's lock
        assert data_cli(["validate", "--repair", str(root)]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and out.count("removed") == 2 and "ok: 2 episodes" in out
    assert sorted(os.listdir(root / "episodes")) == [f"00000{i}.latents.npy" for i in range(2)]
    assert not (root / ".lock").exists()  # repair released its lock
    assert len(LatentDataset(root)) == 2


def test_a_live_writer_blocks_repair(tmp_path, capsys):
    root = tmp_path / "data"
    write(root)
    with LatentDatasetWriter(root, latent_shape=(2, 3)):
        (root / "episodes" / ".tmp-000009.latents.npy").write_bytes(b"in flight")
        assert data_cli(["validate", "--repair", str(root)]) == 1
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert (root / "episodes" / ".tmp-000009.latents.npy").exists()  # not deleted under a live writer


def fake_lock(root, host, pid, age=0.0):
    root.mkdir(parents=True, exist_ok=True)
    (root / ".lock").write_text(json.dumps({"host": host, "pid": pid, "token": "x", "created": 0.0}))
    if age:
        os.utime(root / ".lock", (os.path.getmtime(root / ".lock") - age,) * 2)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has it (pids are not reused this fast)


def test_lock_file_records_host_and_pid_and_is_removed_on_close(tmp_path):
    writer = LatentDatasetWriter(tmp_path, latent_shape=(2, 3))
    holder = read_lock(tmp_path / ".lock")
    assert holder["pid"] == os.getpid() and holder["host"] == WriterLock(tmp_path).host
    writer.close()
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_pid_on_this_host_is_reclaimed(tmp_path):
    fake_lock(tmp_path, WriterLock(tmp_path).host, dead_pid())
    with pytest.warns(UserWarning, match="no longer running"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3)).close()


def test_live_pid_on_this_host_holds_the_lock(tmp_path):
    fake_lock(tmp_path, WriterLock(tmp_path).host, os.getppid())  # pytest's parent: alive
    message = f"another LatentDatasetWriter has this dataset open .pid {os.getppid()}"
    with pytest.raises(DatasetError, match=message):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3))


def test_lock_from_another_host_needs_force(tmp_path):
    fake_lock(tmp_path, "some-other-node", 12345)
    with pytest.raises(DatasetError, match="another host .pid 12345 on host some-other-node.*force=True"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3))
    with pytest.warns(UserWarning, match="forced"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3), force=True).close()


def test_empty_lock_file_is_stale_only_when_old(tmp_path):
    tmp_path.joinpath(".lock").write_text("")  # a writer between create and write, or an old empty .lock
    with pytest.raises(DatasetError, match="taking the lock right now"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3))
    os.utime(tmp_path / ".lock", (0, 0))
    with pytest.warns(UserWarning, match="empty or unreadable"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3)).close()


def test_a_failed_open_releases_the_lock(tmp_path):
    write(tmp_path)
    with pytest.raises(DatasetError, match="cannot append"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 4))
    assert not (tmp_path / ".lock").exists()
