"""The framework examples of docs/integration.md: the doc shows docs/examples/*.py verbatim, and each runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from beholder_plugin import read_section_info
from beholder_plugin.protocol.runfiles import read_frame_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "docs", "examples")
DOC = os.path.join(REPO, "docs", "integration.md")

# example file -> (packages it needs, the first sections its last frame shows)
CASES = {
    "torch_example.py": (("torch",), ["0.weight", "0.bias"]),
    "lightning_example.py": (("torch", "lightning"), ["net.0.weight", "net.0.bias"]),
    "transformers_example.py": (("torch", "transformers", "accelerate"),
                                ["transformer.wte.weight", "transformer.wpe.weight"]),
    "flax_linen_example.py": (("jax", "flax", "optax"), ["params/Conv_0/bias", "params/Conv_0/kernel"]),
    "flax_nnx_example.py": (("jax", "flax", "optax"), ["hidden/bias", "hidden/kernel"]),
}


def _python_blocks(markdown: str) -> list[str]:
    """The ```python code blocks of a Markdown text."""
    return [block.rstrip("\n") for block in re.findall(r"```python\n(.*?)```", markdown, flags=re.S)]


def test_every_example_file_is_shown_in_the_doc_as_it_is():
    blocks = _python_blocks(open(DOC, encoding="utf-8").read())
    files = sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".py"))
    assert files == sorted(CASES)
    for name in files:
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
            assert f.read().rstrip("\n") in blocks, f"docs/integration.md does not show {name} as it is"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_example_runs_and_writes_frames(name, tmp_path):
    packages, first_sections = CASES[name]
    for package in packages:
        pytest.importorskip(package, reason=f"{name} needs {package}")
    run = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), run], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frame = read_frame_file(run)
    assert frame is not None and frame.header["values"] == "trainable_variables"  # the default setting
    assert frame.header["failures"] == 0
    names = [s["name"] for s in read_section_info(run)]
    assert names[:2] == first_sections
    assert not any("missing" in s for s in frame.sections)
