"""Layouts: the same values in any framework's axis order give the same frame; each pixel names its index.

Each layout has a TensorFlow-order twin (PyTorch kernels OIHW <-> Keras HWIO,
activations NCHW <-> NHWC, Linear (out, in) <-> Dense (in, out), transposed
convolutions, 1-D and 3-D ones). Writing an array in one order and its
transpose in the other must give identical pixels and values, and each pixel
must look up the value at the index it names in the array's own axes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import BASE, plugin_client
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.layout import RenderError, axis_names, locate, resolve_layout
from beholder_plugin.protocol.runfiles import read_frame_file


def _to_other(layout: str, rank: int) -> tuple[int, ...]:
    """The transpose that takes the TensorFlow-order twin's array to this layout's axis order."""
    spatial = tuple(range(rank - 2))
    return {
        "kernel_oihw": (rank - 1, rank - 2, *spatial),
        "kernel_iohw": (rank - 2, rank - 1, *spatial),
        "kernel_hwoi": (*spatial, rank - 1, rank - 2),
        "activation_nchw": (0, rank - 1, *range(1, rank - 1)),
        "matrix_out_in": (1, 0),
    }[layout]


TWINS = {  # layout -> its TensorFlow-order twin
    "kernel_oihw": "kernel_hwio",
    "kernel_iohw": "kernel_hwio",
    "kernel_hwoi": "kernel_hwio",
    "activation_nchw": "activation_nhwc",
    "matrix_out_in": "matrix",
}


@st.composite
def cases(draw):
    layout = draw(st.sampled_from(sorted(TWINS)))
    rank = 2 if layout == "matrix_out_in" else draw(st.sampled_from([3, 4, 4, 5]))
    big = {2: 300, 3: 40, 4: 12, 5: 6}[rank]
    shape = tuple(draw(st.integers(1, big)) for _ in range(rank))
    return layout, shape


def _write(run: str, array, layout: str) -> None:
    beholder = Beholder(run, strict=True, background=False)
    assert beholder.update(arrays={"w": array}, layout=layout)
    beholder.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases(), show_all=st.booleans(), seed=st.integers(0, 2**31), as_torch=st.booleans())
def test_the_same_values_in_any_axis_order_give_the_same_frame(
    tmp_path_factory, case, show_all, seed, as_torch
):
    layout, shape = case
    rng = np.random.default_rng(seed)
    twin_array = rng.normal(size=shape).astype(np.float32)
    array = np.ascontiguousarray(twin_array.transpose(_to_other(layout, len(shape))))
    logdir = tmp_path_factory.mktemp("logs")
    runs = {}
    for name, values, chosen in (("twin", twin_array, TWINS[layout]), ("it", array, layout)):
        run = str(logdir / name)
        set_config(run, values="arrays", mode="current", show_all=show_all, FPS=30)
        if as_torch and name == "it":
            torch = pytest.importorskip("torch")
            values = torch.from_numpy(values)
        _write(run, values, chosen)
        runs[name] = read_frame_file(run)
    twin, it = runs["twin"], runs["it"]
    np.testing.assert_array_equal(it.pixels, twin.pixels)
    np.testing.assert_array_equal(it.values, twin.values)
    (rec,) = it.sections
    assert rec["layout"] == layout and rec["shape"] == list(array.shape)
    assert rec["axes"] == axis_names(layout, len(shape)) and len(rec["axes"]) == len(shape)
    for _ in range(25):  # every pixel names an index in the array's own axes, holding the value shown
        x, y = int(rng.integers(it.width)), int(rng.integers(rec["height"]))
        where = locate(it.sections, it.width, x, y)
        assert it.values[where["offset"]] == array[tuple(where["index"])]
    _, client = plugin_client(str(logdir))
    got = json.loads(client.get(f"{BASE}/value", query_string={"run": "it", "x": x, "y": y}).get_data())
    assert got["index"] == where["index"] and got["value"] == float(array[tuple(where["index"])])


def test_layout_names_aliases_and_rank_checks():
    assert resolve_layout("oihw", (8, 1, 3, 3)) == "kernel_oihw"
    assert resolve_layout("out_in", (10, 784)) == "matrix_out_in"
    assert resolve_layout(None, (3, 3, 1, 8)) == "kernel_hwio"  # the original's rule
    assert resolve_layout("auto", (32, 28, 28, 8)) == "activation_nhwc"
    with pytest.raises(RenderError, match="section w: layout kernel_oihw does not fit .* \\(10, 784\\)"):
        resolve_layout("oihw", (10, 784), "w")
    with pytest.raises(RenderError, match="unknown layout 'nhcw'"):
        resolve_layout("nhcw", (1, 2, 3, 4), "w")
    assert axis_names("kernel_oihw", 4) == ["out", "in", "kh", "kw"]
    assert axis_names("kernel_hwio", 4) == ["kh", "kw", "in", "out"]
    assert axis_names("kernel_oihw", 3) == ["out", "in", "k"]
    assert axis_names("activation_nchw", 5) == ["n", "c", "d", "h", "w"]
    assert axis_names("matrix", 2) == ["i", "j"] and axis_names("grid", 3) == ["d0", "d1", "d2"]


def test_a_layout_per_section_by_name(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(
            arrays={"k": np.ones((8, 1, 3, 3)), "a": np.ones((2, 4, 6, 6)), "m": np.ones((3, 5))},
            layout={"k": "oihw", "a": "nchw"},
        )
    layouts = [rec["layout"] for rec in read_frame_file(run_dir).sections]
    assert layouts == ["kernel_oihw", "activation_nchw", "matrix"]
