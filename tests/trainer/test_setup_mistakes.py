"""Setup mistakes are said once, at construction (issue 21, item 7), like a missing remote backend."""

from __future__ import annotations

import os

import pytest

from beholder_plugin import Beholder


@pytest.mark.parametrize("where", ["logdir", "parent", "plugins"])
def test_a_logdir_that_cannot_be_a_directory_raises_at_construction(tmp_path, where):
    """It used to log "[Errno 20] Not a directory" at every write, and update() went on failing quietly."""
    if where == "logdir":
        logdir = tmp_path / "events.out"
        logdir.write_text("not a directory")
        blocker = logdir
    elif where == "parent":
        (tmp_path / "notes.txt").write_text("x")
        logdir, blocker = tmp_path / "notes.txt" / "run", tmp_path / "notes.txt"
    else:
        logdir = tmp_path / "run"
        logdir.mkdir()
        blocker = logdir / "plugins"
        blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="Pass a directory") as caught:
        Beholder(logdir)
    assert repr(str(blocker)) in str(caught.value) and "logdir" in str(caught.value)
    assert blocker.read_text() in ("not a directory", "x")  # nothing was touched
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_a_missing_logdir_is_still_created(tmp_path):
    with Beholder(tmp_path / "a" / "b", strict=True, background=False) as beholder:
        assert beholder.update(arrays={"w": [1.0, 2.0]})
    assert (tmp_path / "a" / "b" / "plugins" / "beholder" / "frame.bin").is_file()
