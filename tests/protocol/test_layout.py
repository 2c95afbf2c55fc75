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
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from server_support import BASE, plugin_client
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.layout import (
    LAYOUTS,
    MISSING,
    RenderError,
    axis_names,
    frame_width,
    locate,
    resolve_layout,
)
from beholder_plugin.protocol.plans import KeptPlans, arrays_bytes, make_plan
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


@st.composite
def layouts_and_shapes(draw):
    """A layout and a shape of a rank it accepts (sizes kept small enough for a quick test)."""
    layout = draw(st.sampled_from([name for name in LAYOUTS if name != MISSING]))
    ranks = {"scalar": [0], "vector": [1], "matrix": [2], "matrix_out_in": [2], "grid": [1, 2, 3, 4, 5]}
    rank = draw(st.sampled_from(ranks.get(layout, [3, 4, 5])))
    big = {0: 1, 1: 3000, 2: 300, 3: 40, 4: 12, 5: 6}[rank]
    return layout, tuple(draw(st.integers(1, big)) for _ in range(rank))


@settings(max_examples=150, deadline=None)
@given(
    case=layouts_and_shapes(),
    show_all=st.booleans(),
    sizing=st.sampled_from(["fixed", "values"]),
    memory=st.sampled_from(["c", "fortran", "reversed"]),
)
# Sections wider than the frame: some columns of the kept blocks are skipped (and, one column per
# block, whole blocks at uneven steps), which small random shapes rarely reach.
@example(case=("kernel_hwio", (3, 3, 4, 300)), show_all=False, sizing="fixed", memory="c")
@example(case=("activation_nchw", (2, 64, 28, 28)), show_all=False, sizing="values", memory="fortran")
@example(case=("kernel_oihw", (300, 4, 3, 3)), show_all=False, sizing="fixed", memory="reversed")
@example(case=("kernel_hwio", (1, 1, 3, 2000)), show_all=False, sizing="fixed", memory="c")
def test_every_fast_take_path_reads_what_the_plain_index_names(case, show_all, sizing, memory):
    """SectionPlan.take's per-layout shortcuts (slices, skipped takes, one copy into out) read exactly
    ``array[plan.index]``, for any shape a layout accepts and any memory order, with and without out."""
    layout, shape = case
    try:
        plan = make_plan(shape, frame_width([shape], show_all, [layout]), show_all, "a", layout, sizing)
    except RenderError:  # too few values for the layout: update() shows such a section empty
        assume(False)
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    if memory == "fortran":
        x = np.asfortranarray(x)
    elif memory == "reversed":
        x = np.flip(np.flip(x).copy())
    expected = np.broadcast_to(x[plan.index] if shape else np.full((1, 1), x[()]), plan.compact_shape)
    np.testing.assert_array_equal(plan.take(x), expected)
    out = np.full(plan.compact_shape, np.nan, np.float32)
    np.testing.assert_array_equal(np.broadcast_to(plan.take(x, out=out), plan.compact_shape), expected)


def test_kept_plans_stay_within_their_count_and_bytes_the_oldest_dropped_first():
    """KeptPlans drops its oldest entries to keep at most ``limit`` of them and ``max_bytes`` of their
    arrays; it says which it dropped. A plan's bytes count each of its arrays once."""
    plan = make_plan((8, 40, 64), 768, False, layout="grid")  # (index arrays of the compact shape)
    assert plan.nbytes == arrays_bytes([plan.index, plan.axes, plan.local, plan.parts, plan.row_map,
                                        plan.col_map, plan.row_weight, plan.col_weight])
    assert plan.nbytes > sum(a.nbytes for a in plan.index) > 100_000
    kept = KeptPlans(limit=3, max_bytes=250)
    assert kept.put("a", "A", 100) == [] and kept.put("b", "B", 100) == []
    assert kept.put("c", "C", 100) == ["A"]  # (bytes: 300 > 250)
    assert kept.put("d", "D", 10) == [] and len(kept) == 3 and kept.bytes == 210
    assert kept.put("e", "E", 10) == ["B"]  # (count: 3)
    assert kept.values() == ["C", "D", "E"] and kept.get("b") is None and kept.get("d") == "D"
    assert kept.put("f", "F", 1000) == ["C", "D", "E"] and kept.values() == ["F"]  # (alone, even over)
    view = np.arange(10, dtype=np.int64)
    assert arrays_bytes([view, view[2:], (view[::2], [view.reshape(2, 5)])]) == 80


def test_fit_heights_cuts_every_section_to_the_one_height_that_fits_a_frame():
    from beholder_plugin.protocol.frame_checks import MAX_FRAME_PIXELS
    from beholder_plugin.protocol.plans import MIN_FITTED_HEIGHT, fit_heights

    rows = MAX_FRAME_PIXELS // 768  # 349,525 rows at the usual width
    assert fit_heights([128] * 2600, 768) is None  # (2600 x 133 - 5 rows fit as they are)
    heights = [128] * 3000 + [32] * 136  # a mixture of experts' weights, and some biases
    cap = fit_heights(heights, 768)
    used = sum(min(h, cap) for h in heights) + 5 * (len(heights) - 1)
    assert used <= rows < sum(min(h, cap + 1) for h in heights) + 5 * (len(heights) - 1)  # the largest
    assert cap == 109  # 3000 x 109 + 136 x 32 + 3135 x 5 = 347,027 rows; at 110, 350,027
    most = rows // (MIN_FITTED_HEIGHT + 5)
    assert fit_heights([128] * most, 768) == MIN_FITTED_HEIGHT
    with pytest.raises(RenderError, match=rf"{most + 1} sections do not fit in one frame \({most} at most"):
        fit_heights([128] * (most + 1), 768)
