"""Whole-array statistics per section, the section filter and proportional section heights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import set_config

from beholder_plugin import Beholder, ConfigError
from beholder_plugin.protocol.layout import section_height
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.protocol.settings import validate_changes
from beholder_plugin.trainer.views.stats import (
    COLUMNS,
    RUNS,
    SAMPLE_CAP,
    hist_counts,
    sample_runs,
    section_stats,
)


def _expected(array: np.ndarray) -> dict:
    """The statistics of an array as documented, computed with NumPy on the same sample."""
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    runs, stride, length = sample_runs(flat.size)
    sample = np.concatenate([flat[i * stride : i * stride + length] for i in range(runs)]).astype(np.float64)
    n = sample.size
    finite = sample[np.isfinite(sample)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (None, None)
    hist = np.histogram(finite, bins=32, range=(lo, hi))[0] if finite.size else np.zeros(32, int)
    return {
        "count": flat.size, "sampled": n, "runs": runs,
        "mean": finite.mean() if finite.size else None,
        "std": finite.std() if finite.size else None,
        "norm": math.sqrt((finite**2).sum() * flat.size / finite.size) if finite.size else None,
        "nan": np.isnan(sample).sum() / n, "inf": np.isinf(sample).sum() / n, "zero": (sample == 0).sum() / n,
        "lo": lo, "hi": hi, "hist": hist.tolist(),
    }


@st.composite
def arrays(draw):
    rank = draw(st.integers(0, 4))
    big = draw(st.booleans())
    sides = [draw(st.integers(1, 60 if big else 9)) for _ in range(rank)]
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    a = np.array(rng.normal(size=sides) * draw(st.sampled_from([1e-3, 1.0, 1e4])), dtype=np.float32)
    kind = draw(st.sampled_from(["plain", "nan", "inf", "zeros", "constant", "ints"]))
    if kind == "nan" and a.size:
        a.reshape(-1)[rng.integers(0, a.size, size=max(1, a.size // 7))] = np.nan
    elif kind == "inf" and a.size:
        a.reshape(-1)[:: max(1, a.size // 3)] = np.inf
    elif kind == "zeros":
        a[a < 0] = 0
    elif kind == "constant":
        a[...] = 2.5
    elif kind == "ints":
        a = np.array(np.rint(a), dtype=np.int32)
    return a


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(array_list=st.lists(arrays(), min_size=1, max_size=4))
def test_each_section_describes_its_whole_array_or_its_documented_sample(tmp_path_factory, array_list):
    run = str(tmp_path_factory.mktemp("run"))
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(run, strict=True, background=False) as beholder:
        assert beholder.update(arrays=array_list)
    for rec, array in zip(read_frame_file(run).sections, array_list):
        got, want = rec["stats"], _expected(array)
        assert got["count"] == want["count"] and got["sampled"] == want["sampled"]
        assert ("whole array" in got["over"]) == (want["runs"] == 1)
        for key in ("nan", "inf", "zero"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), key
        for key in ("mean", "std", "norm"):
            if want[key] is None or not math.isfinite(want[key]):
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
        assert got["hist"]["lo"] == want["lo"] and got["hist"]["hi"] == want["hi"]
        assert hist_counts(got) == want["hist"]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), data=st.data())
def test_stats_columns_hold_the_records_figures(sizes, data):
    """The arrays section_stats hands the timeline are its records' figures (infinities kept as such)."""
    values = data.draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True),
                                min_size=sum(sizes), max_size=sum(sizes)))
    samples = np.asarray(values, np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    counts = [size * 7 for size in sizes]
    columns: dict = {}
    records = section_stats(samples, offsets, counts, columns=columns)
    assert sorted(columns) == sorted(COLUMNS)
    for i, record in enumerate(records):
        if record is None:  # an empty section: NaN throughout
            assert sizes[i] == 0 and all(math.isnan(columns[name][i]) for name in COLUMNS)
            continue
        pairs = {"norm": record["norm"], "mean": record["mean"], "std": record["std"],
                 "min": record["hist"]["lo"], "max": record["hist"]["hi"], "nan": record["nan"],
                 "inf": record["inf"], "zero": record["zero"], "count": record["count"]}
        for name, figure in pairs.items():
            column = columns[name][i]
            if figure is None:  # JSON null: the column holds what was not finite
                assert not math.isfinite(column), (name, column)
            else:
                assert column == figure, (name, column, figure)


def test_large_arrays_are_described_from_evenly_spaced_runs(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    big = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"big": big})
    stats = read_frame_file(run_dir).sections[0]["stats"]
    stride = 100_000 // RUNS
    assert stats["over"] == (f"{RUNS} evenly spaced runs of 64 consecutive values (one every {stride}): "
                             f"{SAMPLE_CAP} of 100000 values")
    assert stats["hist"]["lo"] == 0.0 and stats["hist"]["hi"] == (RUNS - 1) * stride + 63
    assert stats["mean"] == np.mean([i * stride + j for i in range(RUNS) for j in range(64)])


def test_torch_tensors_are_sampled_on_the_device_alike(run_dir):
    torch = pytest.importorskip("torch")
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    t = torch.randn(64, 3, 30, 30).permute(0, 2, 3, 1)  # not contiguous: sampled by index
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"t": t}, layout="nhwc")
    stats = read_frame_file(run_dir).sections[0]["stats"]
    want = _expected(t.numpy())
    assert hist_counts(stats) == want["hist"] and stats["mean"] == pytest.approx(want["mean"])


def test_the_filter_gathers_only_matching_sections(run_dir):
    arrays = {"conv1/kernel": np.ones((3, 3, 1, 4)), "conv1/bias": np.ones(4),
              "dense/kernel": np.ones((5, 2))}
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter="/kernel$/")
    beholder = Beholder(run_dir, strict=True, background=False)
    assert beholder.update(arrays=arrays)
    assert [rec["name"] for rec in read_frame_file(run_dir).sections] == ["conv1/kernel", "dense/kernel"]
    set_config(run_dir, values="arrays", mode="current", FPS=30, filter="/^nothing/")
    beholder.frame_due_now()
    assert beholder.update(arrays=arrays)
    (rec,) = read_frame_file(run_dir).sections
    assert rec["name"] == "(filter)" and "matches none of the 3 sections" in rec["missing"]
    assert beholder.failures == 0
    beholder.close()
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        validate_changes({"filter": "/conv(/"})  # what the plugin checks a settings change with


def test_a_filtered_watch_copies_only_the_matching_gradients(run_dir):
    torch = pytest.importorskip("torch")
    set_config(run_dir, values="gradients", mode="current", FPS=30, filter=r"/^0\./")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        model(torch.ones(1, 4)).sum().backward()
        assert beholder.update()  # read from .grad: only the matching ones
        assert [rec["name"] for rec in read_frame_file(run_dir).sections] == ["0.weight", "0.bias"]
        model.zero_grad()  # gone before update(): the hooks catch the next backward pass
        beholder.frame_due_now()
        assert not beholder.update()  # armed
        model(torch.ones(1, 4)).sum().backward()
        assert set(beholder.watched.captured) == {"0.weight", "0.bias"}  # the others were not copied
        assert beholder.update()
    assert [rec["name"] for rec in read_frame_file(run_dir).sections] == ["0.weight", "0.bias"]


def test_proportional_sections_grow_with_the_array(run_dir):
    arrays = {"one": np.ones(1), "ten": np.ones(10), "k": np.ones((3, 3, 64, 64)),
              "huge": np.ones((3000, 1000))}
    set_config(run_dir, values="arrays", mode="current", FPS=30, section_size="proportional")
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays=arrays)
    heights = [rec["height"] for rec in read_frame_file(run_dir).sections]
    assert heights == [32, 64, 256, 352]  # 16 px per doubling of the size, from 32 to 512
    assert section_height((10,), False) == 128 and section_height((5, 5), True, sizing="proportional") == 128


@pytest.mark.parametrize("value", [2.5, -7.0, 1e19, -3e38, float(np.finfo(np.float32).max)])
def test_a_constant_section_counts_its_values_in_the_middle_bin(value):
    """A section of one value: np.histogram's widened range [x - 0.5, x + 0.5] puts it in bin 16; past
    2**53 (a uint64 tensor, say) that range is empty, yet the count lands in the same bin, with no
    division by zero."""
    import warnings

    samples = np.full(12, value, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record, = section_stats(samples, np.array([0, 12]), [12])
    assert record["hist"]["lo"] == record["hist"]["hi"] == float(np.float32(value))
    assert hist_counts(record) == [12 if b == 16 else 0 for b in range(32)]


def test_a_section_of_denormal_values_gets_numpys_histogram():
    """Values spread over denormals (a layer decayed to nothing): 32 / (hi - lo) is past float32's
    range, yet the counts are np.histogram's, with no overflow warning; before, they all fell in the
    first two bins."""
    import warnings

    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    samples = (np.arange(64, dtype=np.float32) % 40) * tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record, = section_stats(samples, np.array([0, 64]), [64])
    want = np.histogram(samples.astype(np.float64), 32, (float(samples.min()), float(samples.max())))[0]
    assert hist_counts(record) == want.tolist()
    assert len([c for c in want if c]) > 20


def test_a_section_spanning_more_than_float32s_range_gets_numpys_histogram():
    """-3e38 to 3e38: v - lo overflowed float32, and every value past the first fell in bin 1."""
    import warnings

    samples = np.array([-3e38, 1e38, 2e38, 3e38, -1e38, 0.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record, = section_stats(samples, np.array([0, 6]), [6])
    want = np.histogram(samples.astype(np.float64), 32, (float(samples.min()), float(samples.max())))[0]
    assert hist_counts(record) == want.tolist() and want[0] == 1 and want[-1] == 1
