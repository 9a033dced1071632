"""``atomic_write``: the target holds the old or the new content, never a part, and no temporary is left."""

from __future__ import annotations

import pytest

from dreamer_dynamics.atomic import TEMP_PREFIX, atomic_write


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"old")
    assert target.read_bytes() == b"old"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            assert target.read_bytes() == b"old"  # nothing under the final name while writing
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
