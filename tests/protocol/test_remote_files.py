"""RemoteFiles (any fsspec URL) on fsspec's in-process memory:// store, and how files_for picks it."""

from __future__ import annotations

import sys
import uuid

import pytest

from beholder_plugin.protocol import remote_files
from beholder_plugin.protocol.files import LOCAL, FileRefused, files_for
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.names import config_path, plugin_dir
from beholder_plugin.protocol.remote_files import (
    BackendMissing,
    RemoteError,
    RemoteFiles,
    normalize_location,
)
from beholder_plugin.protocol.runfiles import read_config, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG


@pytest.fixture
def url():
    """A fresh memory:// run URL (the memory store is shared by the whole process)."""
    return f"memory://test-{uuid.uuid4().hex[:12]}/run"


def test_files_for_keeps_local_paths_local_and_sends_urls_to_fsspec(url, tmp_path):
    assert files_for(str(tmp_path)) is LOCAL and files_for("logs/run1") is LOCAL
    assert files_for("file:///tmp/x") is LOCAL
    remote = files_for(url)
    assert isinstance(remote, RemoteFiles) and remote.remote and not LOCAL.remote
    assert files_for(url + "/other") is remote  # one instance per scheme


def test_file_urls_mean_their_local_path():
    assert normalize_location("file:///tmp/logs/run1") == "/tmp/logs/run1"
    assert plugin_dir("file:///tmp/logs/run1") == "/tmp/logs/run1/plugins/beholder"
    assert normalize_location("s3://bucket/logs/") == "s3://bucket/logs"
    assert normalize_location("logs/run1") == "logs/run1"


def test_a_missing_backend_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    monkeypatch.setattr(remote_files, "_CACHE", {})
    with pytest.raises(BackendMissing, match="pip install gcsfs") as caught:
        files_for("gs://bucket/run1")
    assert isinstance(caught.value, ImportError)
    assert "tensorboard-plugin-beholder[gcs]" in str(caught.value)


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="nosuchscheme"):
        files_for("nosuchscheme://bucket/run1")


def test_whole_object_writes_reads_and_identity(url):
    files = files_for(url)
    path = url + "/plugins/beholder/x.bin"
    assert files.read(path, 100) is None and files.identity(path) is None
    assert files.write_atomic(path, [b"abc", memoryview(b"def")]) == 6
    data, identity = files.read_with_identity(path, 100)
    assert data == b"abcdef" and identity == files.identity(path)
    files.write_atomic(path, [b"abcdeg"])  # same size, new object
    assert files.identity(path) != identity
    assert files.read_range(path, 4, 10, 100) == b"eg"  # cut at the end of the object
    assert files.read_range(path, 10, 2, 100) == b""
    with pytest.raises(FileRefused, match="replaced"):
        files.read_range(path, 0, 2, 100, identity=identity)


def test_oversized_objects_and_folders_are_refused_by_name(url):
    files = files_for(url)
    files.write_atomic(url + "/big.bin", [b"x" * 100])
    files.write_atomic(url + "/folder/inside.bin", [b"x"])
    with pytest.raises(FileRefused, match="big.bin is 100 bytes, more than the 99"):
        files.read(url + "/big.bin", 99)
    with pytest.raises(FileRefused, match="folder is not a regular file"):
        files.read(url + "/folder", 99)


def test_listing_removal_and_sizes(url):
    files = files_for(url)
    for name, size in (("a.bin", 3), ("b.bin", 5)):
        files.write_atomic(f"{url}/d/{name}", [b"x" * size])
    files.write_atomic(f"{url}/d/sub/c.bin", [b"x"])
    assert sorted(files.listdir(url + "/d")) == ["a.bin", "b.bin"]
    assert files.list_sizes(url + "/d") == {"a.bin": 3, "b.bin": 5}
    assert files.subdirs(url + "/d") == ["sub"]
    files.remove(url + "/d/a.bin")
    files.remove(url + "/d/a.bin")  # already gone: fine
    assert files.listdir(url + "/d") == ["b.bin"]
    assert files.listdir(url + "/nothing") == []
    assert files.remove_stale_temp_files(url + "/d") == 0


def test_settings_and_history_go_through_the_same_functions_as_locally(url):
    write_config(url, {**DEFAULT_CONFIG, "colormap": "viridis"})
    assert read_config(url)["colormap"] == "viridis"
    assert config_path(url) == url + "/plugins/beholder/config.json"
    assert list_history(url) == []


def test_backend_failures_are_oserrors_naming_the_object(url, monkeypatch):
    files = files_for(url)

    def unreachable(*args, **kwargs):
        raise ConnectionError("endpoint unreachable")

    monkeypatch.setattr(files.fs, "pipe_file", unreachable)
    with pytest.raises(RemoteError, match="x.bin: ConnectionError: endpoint unreachable") as caught:
        files.write_atomic(url + "/x.bin", [b"x"])
    assert isinstance(caught.value, OSError)
    assert files.writable(url) is False
