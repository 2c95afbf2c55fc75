"""JAX adapter: arrays sliced with jnp.take per axis, then copied to the host."""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import SectionPlan
from beholder_plugin.trainer.sources import finish


def prepare(obj: Any, label: str) -> Any:
    """The array itself."""
    return obj


def compact(x: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section: the shown rows and columns taken on the device first."""
    import jax.numpy as jnp

    for axis, idx in enumerate(plan.axes):
        if idx is not None:
            x = jnp.take(x, jnp.asarray(idx), axis=axis)
    return finish(np.asarray(x), plan)


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole array on the host."""
    return np.asarray(obj)
