"""JAX and Flax: pytrees named by key path, Flax NNX modules in watch(), sharded arrays."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file

jax = pytest.importorskip("jax", reason="needs jax (the test extra)")
jnp = jax.numpy



def _show(run: str, values: str = "arrays", strict: bool = True, **update) -> object:
    """Write one frame of these update() arguments and read it back."""
    set_config(run, values=values, mode="current", FPS=30)
    with Beholder(run, strict=strict, background=False) as beholder:
        assert beholder.update(**update)
    return read_frame_file(run)


def test_a_nested_dict_of_jax_arrays_is_named_by_key_path(run_dir):
    rng = np.random.default_rng(0)
    leaves = {
        "params/Conv_0/kernel": rng.normal(size=(3, 3, 1, 8)).astype(np.float32),
        "params/Conv_0/bias": rng.normal(size=8).astype(np.float32),
        "params/Dense_0/kernel": rng.normal(size=(200, 10)).astype(np.float32),
        "params/layers/0": rng.normal(size=5).astype(np.float32),
    }
    tree = {"params": {
        "Conv_0": {"kernel": jnp.asarray(leaves["params/Conv_0/kernel"]),
                   "bias": jnp.asarray(leaves["params/Conv_0/bias"])},
        "Dense_0": {"kernel": jnp.asarray(leaves["params/Dense_0/kernel"])},
        "layers": [jnp.asarray(leaves["params/layers/0"])],
    }}
    frame = _show(run_dir, arrays=tree)
    by_name = {s["name"]: s for s in frame.sections}
    assert sorted(by_name) == sorted(leaves)  # in jax.tree_util's order (dict keys sorted)
    assert by_name["params/Conv_0/kernel"]["layout"] == "kernel_hwio"  # Flax's HWIO: the default rule
    assert by_name["params/Dense_0/kernel"]["layout"] == "matrix"  # (in, out), as Keras's Dense
    assert check_sampled_pixels(frame, leaves) > 50


def test_flat_dicts_lists_and_numeric_nested_lists_keep_their_names(run_dir):
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones(4)
    assert [s["name"] for s in _show(run_dir, arrays={"a": a, "b": b}).sections] == ["a", "b"]
    assert [s["name"] for s in _show(run_dir, arrays=[a, b]).sections] == ["0", "1"]
    # a nested list of numbers is one array, whether or not JAX is loaded
    frame = _show(run_dir, arrays={"m": [[1.0, 2.0], [3.0, 4.0]], "b": b})
    assert [(s["name"], s["shape"]) for s in frame.sections] == [("m", [2, 2]), ("b", [4])]
    # and a tree of NumPy arrays only is left to the usual rules (the nested dict is no array)
    frame = _show(run_dir, strict=False, arrays={"p": {"w": np.ones(3)}, "b": np.ones(2)})
    assert [s["name"] for s in frame.sections] == ["p", "b"] and "missing" in frame.sections[0]


def test_a_none_leaf_is_an_empty_section_and_layouts_use_the_path_names(run_dir):
    tree = {"grads": {"used": jnp.ones((4, 4)), "frozen": None}}
    frame = _show(run_dir, arrays=tree, layout={"grads/used": "grid"})
    by_name = {s["name"]: s for s in frame.sections}
    assert set(by_name) == {"grads/used", "grads/frozen"}
    assert "no array" in by_name["grads/frozen"]["missing"]
    assert by_name["grads/used"]["layout"] == "grid"


def test_the_float0_gradient_of_an_integer_leaf_says_what_it_is(run_dir):
    """jax.grad(..., allow_int=True) gives an integer leaf (a step counter) a float0 gradient, which
    holds no numbers: its section says so, and the float gradient beside it is shown."""
    params = {"w": jnp.ones((4, 5)), "count": jnp.asarray(3)}
    grads = jax.grad(lambda p: (p["w"] ** 2).sum(), allow_int=True)(params)
    frame = _show(run_dir, strict=False, arrays=grads)
    by_name = {s["name"]: s for s in frame.sections}
    assert "a float0 array (JAX's gradient of an integer value" in by_name["count"]["missing"]
    assert not by_name["w"].get("missing")


def test_a_shape_dtype_struct_says_it_holds_no_values(run_dir):
    """jax.eval_shape's output (a ShapeDtypeStruct) passed for an array: its section says what it is and
    what to pass; before, it said "IndexError: too many indices for array"."""
    shapes = jax.eval_shape(lambda x: {"y": x * 2}, jnp.ones((3, 4)))
    frame = _show(run_dir, strict=False, arrays={"y": shapes["y"], "w": jnp.full(3, 2.0)})
    by_name = {s["name"]: s for s in frame.sections}
    said = "a jax.ShapeDtypeStruct (float32[3, 4]) holds a shape and a dtype, no values"
    assert said in by_name["y"]["missing"]
    assert "missing" not in by_name["w"] and frame.section_values(1).max() == 2.0


def test_update_inside_jit_shows_why_the_tracers_have_no_values(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, background=False)
    handed = []

    @jax.jit
    def step(x):
        handed.append(beholder.update(arrays={"p": {"x": x}}))
        return x * 2

    np.testing.assert_array_equal(step(jnp.ones(3)), 2 * np.ones(3))  # training goes on
    beholder.close()
    assert handed == [True]  # once, while tracing
    (section,) = read_frame_file(run_dir).sections
    assert section["name"] == "p/x" and "call update() outside" in section["missing"]


def test_flax_linen_gradients_from_jax_grad(run_dir):
    nn = pytest.importorskip("flax.linen", reason="needs flax (the test extra)")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 1))
    params = Net().init(jax.random.PRNGKey(0), x)
    grads = jax.grad(lambda p: jnp.sum(Net().apply(p, x) ** 2))(params)
    frame = _show(run_dir, arrays=grads)
    names = [s["name"] for s in frame.sections]
    assert names == ["params/Conv_0/bias", "params/Conv_0/kernel",
                     "params/Dense_0/bias", "params/Dense_0/kernel"]
    flat = {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert check_sampled_pixels(frame, flat) > 50
    assert frame.sections[1]["layout"] == "kernel_hwio"


def test_flax_nnx_module_in_watch_and_as_variables(run_dir):
    nnx = pytest.importorskip("flax.nnx", reason="needs flax (the test extra)")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.layers = nnx.List([nnx.Linear(4 * 36, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
            self.norm = nnx.BatchNorm(8, rngs=rngs)  # its running statistics are no nnx.Param

    model = Net(nnx.Rngs(0))
    expected = {"/".join(map(str, path)): np.asarray(v.get_value())
                for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        assert beholder.update()
    frame = read_frame_file(run_dir)
    names = [s["name"] for s in frame.sections]
    assert sorted(names) == sorted(expected) and "layers/0/kernel" in names and "conv/kernel" in names
    assert not any("mean" in n or "var" in n for n in names)
    assert check_sampled_pixels(frame, expected) > 50
    assert {s["name"]: s["layout"] for s in frame.sections}["conv/kernel"] == "kernel_hwio"
    # the same through variables=, and gradients say where to pass them
    assert [s["name"] for s in _show(run_dir, "trainable_variables", variables=model).sections] == names
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        assert beholder.update()
    frame = read_frame_file(run_dir)
    assert [s["name"] for s in frame.sections] == names
    assert all("update(arrays=...)" in s["missing"] for s in frame.sections)


def test_an_nnx_state_passed_as_arrays_is_named_without_the_variable_wrapper(run_dir):
    nnx = pytest.importorskip("flax.nnx", reason="needs flax (the test extra)")
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    frame = _show(run_dir, arrays={"model": nnx.state(model)})
    assert sorted(s["name"] for s in frame.sections) == ["model/bias", "model/kernel"]
    frame = _show(run_dir, arrays={"kernel": model.kernel})  # a bare nnx.Param
    assert [s["name"] for s in frame.sections] == ["kernel"] and "missing" not in frame.sections[0]


def test_an_array_on_the_cpu_is_read_where_it_lies_not_sliced_on_the_device(run_dir, monkeypatch):
    """A single-device CPU array is viewed as NumPy (no copy, no jnp.take dispatch); the values are exact."""
    from beholder_plugin.trainer.sources import jax_arrays

    host = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype(np.float32)
    array = jnp.asarray(host)
    view = jax_arrays.host_view(array)
    assert view is not None and np.shares_memory(view, jax_arrays.host_view(array))
    np.testing.assert_array_equal(view, host)

    def no_device_slicing(*args, **kwargs):
        raise AssertionError("jnp.take was called for a CPU array")

    monkeypatch.setattr(jnp, "take", no_device_slicing)
    frame = _show(run_dir, arrays={"kernel": array})
    assert check_sampled_pixels(frame, {"kernel": host}) > 50


SHARDED = """
import sys
import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from beholder_plugin import Beholder, DEFAULT_CONFIG, write_config
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import read_frame_file

run = sys.argv[1]
mesh = Mesh(np.array(jax.devices()), ("d",))
host = np.random.default_rng(0).normal(size=(512, 300)).astype(np.float32)
array = jax.device_put(host, NamedSharding(mesh, PartitionSpec("d", None)))
write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, "mode": "current"})
with Beholder(run, strict=True, background=False) as beholder:
    handed = beholder.update(arrays={"params": {"w": array}})
frame = read_frame_file(run)
rng = np.random.default_rng(1)
hits = wrong = 0
for _ in range(300):
    x, y = int(rng.integers(frame.width)), int(rng.integers(frame.height))
    where = locate(frame.sections, frame.width, x, y)
    if where is not None:
        hits += 1
        wrong += frame.values[where["offset"]] != host[tuple(where["index"])]
from beholder_plugin.trainer.sources import jax_arrays
print(len(jax.devices()), len(array.addressable_shards), handed, frame.sections[0]["name"], hits, wrong,
      jax_arrays.host_view(array) is None)
"""


def test_an_array_sharded_over_two_cpu_devices_is_shown_from_its_slices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    devices, shards, handed, name, hits, wrong, not_viewed = out.stdout.split()
    assert devices == "2" and shards == "2" and handed == "True" and name == "params/w"
    assert not_viewed == "True"  # sharded: gathered slice by slice, never viewed whole
    assert int(hits) > 50 and wrong == "0"
