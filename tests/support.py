"""Helpers for the trainer-side tests."""

from __future__ import annotations

import time

from beholder_plugin import DEFAULT_CONFIG, write_config


def set_config(run: str, **changes) -> dict:
    """Write a full config.json: the defaults with these changes; returns it."""
    config = {**DEFAULT_CONFIG, **changes}
    write_config(run, config)
    return config


def due(beholder) -> None:
    """Wait until a frame is due again at the beholder's FPS (no timing is asserted)."""
    time.sleep(1.0 / max(1, beholder.config["FPS"]) + 0.005)
