"""Names both sides agree on: the plugin's name, its files inside a run, and their format versions.

Example::

    from beholder_plugin.protocol import names
    names.frame_path("logs/run1")   # 'logs/run1/plugins/beholder/frame.bin'
"""

from __future__ import annotations

import os

PLUGIN_NAME = "beholder"
CONFIG_FILE = "config.json"
FRAME_FILE = "frame.bin"
ENDED_FILE = "ended.json"  # left by a trainer's close(): its last frame, and when
HISTORY_DIR = "history"

FRAME_MAGIC = b"BHFRAME\x00"
FRAME_VERSION = 2
CONFIG_VERSION = 1


def plugin_dir(run_dir: str | os.PathLike) -> str:
    """The directory inside a run where Beholder keeps its files (a file:// URL means its local path)."""
    text = os.fspath(run_dir)
    if text.startswith("file://"):
        text = text[len("file://"):] or "/"
    return os.path.join(text, "plugins", PLUGIN_NAME)


def config_path(run_dir: str | os.PathLike) -> str:
    """Where the run's dashboard settings live."""
    return os.path.join(plugin_dir(run_dir), CONFIG_FILE)


def frame_path(run_dir: str | os.PathLike) -> str:
    """Where the run's latest frame lives."""
    return os.path.join(plugin_dir(run_dir), FRAME_FILE)


def ended_path(run_dir: str | os.PathLike) -> str:
    """Where a trainer that closed its Beholder says which frame was its last, and when."""
    return os.path.join(plugin_dir(run_dir), ENDED_FILE)


def history_dir(run_dir: str | os.PathLike) -> str:
    """The directory holding the run's recent frames (the history ring)."""
    return os.path.join(plugin_dir(run_dir), HISTORY_DIR)
