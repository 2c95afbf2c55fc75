"""The runnable examples of docs/*.md run as written and write frames.

A code block is runnable when the line before it is an HTML comment starting
with ``<!-- runnable``. Each runs in a fresh interpreter, in an empty
directory, with a config that shows a frame at once.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
BLOCK = re.compile(r"<!-- runnable[^\n]*-->\n```python\n(.*?)```", re.S)


def runnable_examples() -> list[tuple[str, str]]:
    """(doc name and block number, code) for every runnable block of the docs."""
    found = []
    for path in sorted(glob.glob(os.path.join(DOCS, "*.md"))):
        with open(path, encoding="utf-8") as f:
            for i, code in enumerate(BLOCK.findall(f.read())):
                found.append((f"{os.path.basename(path)}#{i}", code))
    return found


EXAMPLES = runnable_examples()


def test_the_docs_have_runnable_examples():
    assert any("integration.md" in name for name, _ in EXAMPLES)


@pytest.mark.parametrize("name,code", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_a_runnable_example_runs_and_writes_frames(tmp_path, name, code):
    needs = {"torch": "torch", "keras": "keras", "jax": "jax", "flax": "flax",
             "lightning": "lightning", "transformers": "transformers"}
    for module, package in needs.items():
        if re.search(rf"^\s*(import|from) {module}\b", code, re.M):
            pytest.importorskip(package)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    frames = glob.glob(str(tmp_path / "**" / "plugins" / "beholder" / "frame.bin"), recursive=True)
    assert frames, f"{name} wrote no frame under {tmp_path}"
