"""benchmarks/gpu_bench.py still runs against the code as it is: every part, on the CPU (--smoke).

CI has no GPU, and a GPU is lent only now and then for a few minutes; a part
broken by a change made since the last GPU run would spend that time on a
traceback. The smoke run takes each part through the same calls on CPU
tensors (the device path, gathers captured and replayed) and writes its
figures as JSON; this checks that every part ran and measured something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_tmpdir(tmp_path_factory):
    """The smoke run's TMPDIR: empty before it (what it leaves there, it left behind)."""
    return tmp_path_factory.mktemp("gpu-bench-tmpdir")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_tmpdir) -> tuple[dict, str]:
    """(figures, output) of one `gpu_bench.py --smoke` run."""
    out = tmp_path_factory.mktemp("gpu-bench") / "figures.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TMPDIR": str(smoke_tmpdir)}
    env.pop("BEHOLDER_BATCH_CPU_TENSORS", None)  # the script sets what it needs
    script = os.path.join(ROOT, "benchmarks", "gpu_bench.py")
    done = subprocess.run([sys.executable, script, "--smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_every_part_runs(smoke):
    """No part failed: each printed its table and wrote its figures."""
    figures, output = smoke
    assert set(figures) == {"resnet", "syncs", "floor", "check", "transformer", "jax", "compiled"}
    failed = {part: got["error"] for part, got in figures.items() if isinstance(got, dict) and "error" in got}
    assert not failed, failed
    assert "figures mean nothing" in output


def test_the_smoke_run_removes_its_run_directories(smoke, smoke_tmpdir):
    """Every part's run directories are gone afterwards: repeated test runs do not fill the disk.

    (torchinductor_<user> is torch's own compile cache, kept and reused from run to run.)
    """
    left = sorted(p.name for p in smoke_tmpdir.iterdir() if not p.name.startswith("torchinductor_"))
    assert not left, left


def test_the_resnet_rows_took_frames_and_timed_the_worker(smoke):
    """Every watched condition wrote frames without failures, timed update() and the worker's frames."""
    table = smoke[0]["resnet"]
    assert list(table) == ["none", "weights", "gradients", "gradients (hooked)", "activations",
                           "weights, not rendered"]
    for label in ("weights", "gradients", "gradients (hooked)", "activations", "weights, not rendered"):
        row = table[label]
        assert row["blocking_median_ms"] > 0 and row["failures"] == 0, (label, row)
        assert row["worker_ms"] and min(row["worker_ms"]) > 0, label  # the worker's own clock ran
        assert row["no_frame_median_ms"] > 0, label
        assert row["mean_step_ms"] > 0 and len(row["per_round_mean_ratio"]) == len(row["per_round_ratio"])
        # frames are written, except where the worker only waits for the copies
        assert (row["fps"] > 0) is (label != "weights, not rendered"), (label, row["fps"])
    assert table["none"]["ratio"] == 1.0 and table["none"]["mean_ratio"] == 1.0


def test_the_other_parts_measured(smoke):
    """The profile counted, the floor gathered, transformer and JAX wrote frames, the compiled loop ran."""
    figures = smoke[0]
    assert set(figures["syncs"]) == {"weights", "gradients", "activations"}
    for row in figures["syncs"].values():
        assert set(row["with_frame"]) == {"synchronize", "memcpy_calls", "dtoh", "htod", "graph_launch"}
        # what the frame-due update() called (the smoke run's CPU tensors: torch ops, no kernel launches)
        assert row["update"]["ms"] > 0 and row["update"]["ops"] > 0 and row["update"]["top_ops"]
    assert figures["floor"]["values"] > 0 and figures["floor"]["sections"] == 214
    assert figures["floor"]["eager"]["blocking_ms"] > 0
    hooks = figures["floor"]["activation_hooks"]
    assert hooks["layers"] == 162 and hooks["none"]["extra_ms"] == 0
    assert all(hooks[label]["step_ms"] > 0 for label in ("no-op hooks", "two launches per hook"))
    assert set(figures["check"]) == {"float32", "mixed, grouped", "mixed, one list"}
    assert all(row["median_ms"] > 0 for row in figures["check"].values())
    transformer = figures["transformer"]
    assert transformer["frames"] > 0 and transformer["failures"] == 0 and transformer["worker_ms"]
    jax = figures["jax"]
    assert jax["failures"] == 0 and jax["blocking_median_ms"] > 0 and jax["fps"] > 0
    rows = {row["condition"]: row for row in figures["compiled"]["rows"]}
    assert set(rows) == {"none", "weights", "gradients", "activations"}
    # (its steps per condition may fall inside one frame interval on a fast host: frames are not counted on)
    assert all(row["failures"] == 0 and row["median_step_ms"] > 0 for row in rows.values())
    assert rows["none"]["compiled_frames"] > 0
