"""`import beholder_plugin` loads no framework; each integration loads only its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "jax", "flax", "torch", "tensorflow", "keras")

NOTHING_LOADED = f"""
import sys, tempfile
import numpy as np
import beholder_plugin
from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
with tempfile.TemporaryDirectory() as run:
    write_config(run, {{**DEFAULT_CONFIG, "values": "arrays", "FPS": 30}})
    arrays = {{"a": np.ones((3, 3)), "b": [[1.0, 2.0]], "c": {{"d": np.ones(2)}}}}  # "c" is shown empty
    with Beholder(run, background=False) as beholder:
        assert beholder.update(arrays=arrays) is True
print(sorted(name for name in {FRAMEWORKS!r} if name in sys.modules))
"""


def _run(code: str) -> str:
    """Run code in a fresh interpreter; its last line of output."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_importing_and_updating_with_numpy_loads_no_framework():
    assert _run(NOTHING_LOADED) == "[]"


@pytest.mark.parametrize(("name", "package", "absent"), [
    # (Lightning itself imports transformers when it is installed)
    ("BeholderLightningCallback", "lightning", ("jax", "flax", "tensorflow")),
    ("BeholderHFCallback", "transformers", ("lightning", "jax", "flax")),
])
def test_each_callback_loads_only_its_framework(name, package, absent):
    pytest.importorskip(package, reason=f"needs {package} (the test or torch-test extra)")
    code = (
        "import sys, beholder_plugin\n"
        f"callback = beholder_plugin.{name}\n"
        f"print({package!r} in sys.modules, sorted(n for n in {absent!r} if n in sys.modules))\n"
    )
    assert _run(code) == "True []"
