"""Helpers shared by the TensorFlow / Keras / demo tests."""

from __future__ import annotations

import os

import numpy as np
from support import set_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def configure(run: str, **changes) -> dict:
    """Write a full config.json for run: defaults, FPS 30 and 'current' mode, then these changes."""
    return set_config(run, **{"FPS": 30, "mode": "current", **changes})


def tiny_convnet(seed: int = 0, dropout: bool = False):
    """A small Keras 3 convnet on 12 x 12 x 1 inputs (built, not compiled), seeded."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flatten"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(0.3, name="dropout"))
    layers.append(keras.layers.Dense(3, name="out"))
    return keras.Sequential(layers, name="tiny")


def tiny_data(n: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and integer labels for tiny_convnet."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12, 12, 1)).astype("float32"), rng.integers(0, 3, size=n)
