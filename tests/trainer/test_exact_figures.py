"""The timeline's whole-array figures of JAX and TensorFlow arrays (and Keras variables), exact like NumPy's.

Until now only NumPy arrays and torch tensors had an exact pass: a NaN outside
the statistics' 512-value sample was shown in the frame but missed by the
timeline, and a float64 value past float32's range read as "an infinite
value", an anomaly (``on_anomaly="raise"`` raised it into training). CPU
arrays are now read on the host (a JAX array where it lies); on a device,
the traced gather takes each array's figures in its one call
(``traced_batch.FIGURES``), checked here on the CPU with the batch flags.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import run_script, set_config, update_compiled

from beholder_plugin import Beholder, read_anomalies, read_timeline
from beholder_plugin.protocol import timeline as tl

jnp = pytest.importorskip("jax.numpy")
tf = pytest.importorskip("tensorflow")

from beholder_plugin.trainer.sources import jax_batch, tf_batch  # noqa: E402


def _arrays(convert, dtype) -> tuple[dict, dict]:
    """(arrays as the framework's, the same as float64 NumPy): a NaN where the sample never looks, and
    normal values of known norm."""
    rng = np.random.default_rng(7)
    spiky = rng.normal(size=(100, 100)).astype(np.float32)
    spiky[1, 0] = np.nan  # flat position 100: outside the sample's runs (0-63, 1250-1313, ...)
    plain = (rng.normal(size=(300, 200)) * 1e-3).astype(dtype)
    truth = {"spiky": spiky.astype(np.float64), "plain": plain.astype(np.float64)}
    return {"spiky": convert(spiky), "plain": convert(plain)}, truth


FRAMEWORKS = {
    "jax": (lambda a: jnp.asarray(a), jax_batch, "BATCH_CPU_ARRAYS"),
    "tf": (lambda a: tf.constant(a), tf_batch, "BATCH_CPU_TENSORS"),
    "tf.Variable": (lambda a: tf.Variable(a), tf_batch, "BATCH_CPU_TENSORS"),
}


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_a_nan_outside_the_sample_is_an_anomaly_and_norms_are_exact(tmp_path, monkeypatch, framework,
                                                                    batched):
    convert, module, flag = FRAMEWORKS[framework]
    monkeypatch.setattr(module, flag, batched)
    run = str(tmp_path)
    set_config(run, values="arrays", FPS=30, mode="current")
    arrays, truth = _arrays(convert, np.float32)
    with Beholder(run, strict=True) as beholder:
        for _ in range(2):
            assert update_compiled(beholder, arrays=arrays)
            beholder.flush()
    found = [(a["kind"], a["section"], a["found"]["nonfinite"]) for a in read_anomalies(run)]
    assert found == [("nan", "spiky", 1.0)]
    columns = read_timeline(run)
    assert (columns["spiky"]["flags"] & tl.EXACT_NORM).all() and (columns["spiky"]["nonfinite"] == 1).all()
    assert np.isnan(columns["spiky"]["norm"]).all()
    plain = columns["plain"]
    assert (plain["flags"] & tl.EXACT_NORM).all() and (plain["nonfinite"] == 0).all()
    assert plain["norm"] == pytest.approx(np.linalg.norm(truth["plain"]), rel=1e-5)
    if batched:
        assert beholder.gatherer.device_gathers  # (the figures came from the traced gather)


@pytest.mark.parametrize("batched", [False, True])
def test_float64_values_past_float32s_range_are_no_infinite_value(tmp_path, monkeypatch, batched):
    """Shown as inf (frames are float32), but the array holds no infinity: no anomaly, and no
    AnomalyError into training with on_anomaly="raise"."""
    monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", batched)
    run = str(tmp_path)
    set_config(run, values="arrays", FPS=30, mode="current")
    wide = np.array([1.0, 1e39, 2.0, 0.5, 1e-320])
    with Beholder(run, strict=True, on_anomaly="raise") as beholder:
        for _ in range(2):
            arrays = {"wide": tf.constant(wide), "var": tf.Variable(wide * 1e260),
                      "scalar": tf.constant(np.float64(1e300))}  # (a 0-d tensor reads as a NumPy scalar)
            assert update_compiled(beholder, arrays=arrays)
            beholder.flush()
    assert read_anomalies(run) == []
    for name in ("wide", "var", "scalar"):
        columns = read_timeline(run)[name]
        assert (columns["flags"] & tl.EXACT_NORM).all() and (columns["nonfinite"] == 0).all()


JAX_X64 = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from support import set_config, update_compiled
from beholder_plugin import Beholder, read_anomalies, read_timeline
from beholder_plugin.trainer.sources import jax_batch

run, batched = sys.argv[1], sys.argv[2] == "1"
jax_batch.BATCH_CPU_ARRAYS = batched
set_config(run, values="arrays", FPS=30, mode="current")
wide = jnp.asarray(np.array([1.0, 1e39, 2.0, 0.5, -1e300]))
with Beholder(run, strict=True, on_anomaly="raise") as beholder:
    for _ in range(2):
        assert update_compiled(beholder, arrays={"wide": wide, "big": wide * 0 + 3.0})
        beholder.flush()
    print(len(beholder.gatherer.device_gathers) > 0)
columns = read_timeline(run)
print(read_anomalies(run), columns["wide"]["nonfinite"].tolist(), columns["big"]["norm"].tolist())
"""


@pytest.mark.parametrize("batched", ["0", "1"])
def test_jax_float64_values_past_float32s_range_are_no_infinite_value(tmp_path, batched):
    out = run_script(JAX_X64, str(tmp_path), batched)
    assert out.returncode == 0, out.stderr[-3000:]
    gathered, found = out.stdout.strip().splitlines()[-2:]
    assert gathered == str(batched == "1")
    assert found == f"[] [0.0, 0.0] {[float(np.float32(np.sqrt(5 * 9.0)))] * 2}"


SHARDED = """
import os
import sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from support import set_config, update_compiled
from beholder_plugin import Beholder, read_anomalies, read_timeline
from beholder_plugin.protocol import timeline as tl

jax.config.update("jax_enable_x64", True)
mesh = jax.make_mesh((4,), ("x",))
values = np.arange(64.0).reshape(16, 4)
values[3, 1] = 1e300
array = jax.device_put(values, NamedSharding(mesh, PartitionSpec("x")))
run = sys.argv[1]
set_config(run, values="arrays", FPS=30, mode="current")
with Beholder(run, strict=True, on_anomaly="raise") as beholder:
    assert update_compiled(beholder, arrays={"w": array})
columns = read_timeline(run)["w"]
print(len(array.sharding.device_set), bool(columns["flags"][-1] & tl.EXACT_NORM), read_anomalies(run))
"""


def test_a_jax_array_sharded_over_cpu_devices_gets_exact_figures(tmp_path):
    """Sharded arrays have no single host view: they got the sample's figures only, so 1e300 read as an
    infinite value. On CPU devices they are gathered to the host within the exact pass's budget."""
    out = run_script(SHARDED, str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "4 True []"
