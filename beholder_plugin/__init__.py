"""Beholder for TensorBoard: a network's tensors as a live video while it trains.

The public API lives here and nowhere else. TensorFlow and Keras are imported
only when ``BeholderCallback`` (or a TF helper) is first used, Lightning only
for ``BeholderLightningCallback``, transformers only for ``BeholderHFCallback``;
JAX and Flax never (their arrays are read with the JAX the program loaded).
"""

from __future__ import annotations

from typing import Any

from beholder_plugin.protocol.runfiles import read_config, read_frame, read_section_info, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, ConfigError
from beholder_plugin.protocol.timeline import read_anomalies, read_timeline
from beholder_plugin.trainer.beholder import Beholder
from beholder_plugin.trainer.timeline import AnomalyError

__version__ = "0.1.0"

_LAZY = {
    "BeholderCallback": "beholder_plugin.trainer.integrations.keras",
    "BeholderHFCallback": "beholder_plugin.trainer.integrations.transformers",
    "BeholderLightningCallback": "beholder_plugin.trainer.integrations.lightning",
    "gradient_helper": "beholder_plugin.trainer.integrations.gradients",
    "gradient_step": "beholder_plugin.trainer.integrations.gradients",
    "named_gradients": "beholder_plugin.trainer.integrations.gradients",
}


def __getattr__(name: str) -> Any:
    """Load the framework-dependent names only when they are asked for."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'beholder_plugin' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "DEFAULT_CONFIG",
    "AnomalyError",
    "Beholder",
    "BeholderCallback",
    "BeholderHFCallback",
    "BeholderLightningCallback",
    "ConfigError",
    "gradient_helper",
    "gradient_step",
    "named_gradients",
    "read_anomalies",
    "read_config",
    "read_frame",
    "read_section_info",
    "read_timeline",
    "write_config",
]
