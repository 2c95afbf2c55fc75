"""The renderer against hand-worked pixels from the spec, and against a literal reference renderer."""

from __future__ import annotations

import numpy as np
import pytest
from reference_render import reference_frame

from beholder_plugin.protocol.colormaps import PALETTES
from beholder_plugin.protocol.layout import RenderError, frame_width, resize_indices, section_height
from beholder_plugin.protocol.plans import PlanCache, make_plan
from beholder_plugin.protocol.settings import DEFAULT_CONFIG
from beholder_plugin.trainer.views.render import FramePlan, Renderer, scale_frame


def render(arrays, **config):
    """Render a list of NumPy arrays once with a fresh renderer; returns (pixels, sections)."""
    renderer = Renderer()
    cfg = {**DEFAULT_CONFIG, "mode": "current", "colormap": "grayscale", **config}
    return render_with(renderer, arrays, cfg)


def frame_plan(arrays, show_all, names=None):
    """The FramePlan for these arrays."""
    names = names or [str(i) for i in range(len(arrays))]
    return FramePlan(names, PlanCache().plans([np.shape(a) for a in arrays], show_all, names))


def flat_values(plan, arrays):
    """The flat float32 buffer of the arrays' compact sections, as the trainer gathers it."""
    buffer = np.empty(plan.value_count, np.float32)
    for i, (p, a) in enumerate(zip(plan.plans, arrays)):
        plan.section_view(buffer, i)[...] = p.take(np.asarray(a))
    return buffer


def render_with(renderer, arrays, cfg):
    """Render with a given renderer (keeps variance history); returns (pixels, sections)."""
    plan = frame_plan(arrays, cfg["show_all"])
    out = renderer.render(plan, flat_values(plan, arrays), cfg)
    return out.pixels, out.sections


def test_rank1_each_value_is_a_block_across_the_width():
    pixels, sections = render([np.array([0.0, 1.0, 2.0, 3.0])])
    assert pixels.shape == (128, 768)
    expected_row = np.repeat(np.array([0, 85, 170, 255], np.uint8), 192)
    assert (pixels == expected_row).all()
    assert sections[0]["height"] == 128 and sections[0]["shape"] == [4]


def test_rank2_rows_are_inputs_columns_are_outputs():
    pixels, _ = render([np.array([[0.0, 1.0], [2.0, 3.0]])])
    assert pixels[:64, :384].max() == 0 and pixels[:64, :384].min() == 0
    assert (pixels[:64, 384:] == 85).all()
    assert (pixels[64:, :384] == 170).all()
    assert (pixels[64:, 384:] == 255).all()


def test_rank4_conv_blocks_are_kernels_row_per_input_column_per_output():
    w = np.zeros((2, 2, 1, 2))
    w[:, :, 0, 0] = [[0, 1], [2, 3]]
    w[:, :, 0, 1] = [[4, 5], [6, 7]]
    plan = make_plan(w.shape, 768, False)
    assert plan.source_shape == (2, 4)
    pixels, _ = render([w])
    section = np.array([[0, 1, 4, 5], [2, 3, 6, 7]], dtype=np.float32)
    expected = (section * np.float32(255 / 7)).astype(np.uint8)  # scaling is float32 arithmetic
    # 128 rows from 2 source rows, 768 columns from 4 source columns
    assert (pixels[:64] == np.repeat(expected[0], 192)).all()
    assert (pixels[64:] == np.repeat(expected[1], 192)).all()


def test_rank4_activation_rows_are_batch_items_blocks_are_feature_maps():
    x = np.arange(2 * 3 * 3 * 1, dtype=np.float64).reshape(2, 3, 3, 1)  # n=2 != h=3 == w=3
    plan = make_plan(x.shape, 768, False)
    assert plan.source_shape == (6, 3)  # n*h rows, c*w columns
    section = x[:, :, :, 0].reshape(6, 3)
    np.testing.assert_array_equal(plan.take(x), section[np.unique((np.arange(128) * 6) // 128)][:, [0, 1, 2]])


def test_conv_truncation_keeps_the_originals_row_count():
    # (3, 3, 256, 512): K = 3*3*256 = 2304, rows kept = min(256, 32767 // 2304 + 2) = 16
    plan = make_plan((3, 3, 256, 512), 768, False)
    assert plan.source_shape == (48, 1536)
    assert (plan.height, plan.width) == (128, 768)
    # (1, 1, 300, 64): K = 300, 32767 // 300 + 2 = 111 rows
    assert make_plan((1, 1, 300, 64), 768, False).source_shape == (111, 64)
    # show all keeps every input channel
    assert make_plan((3, 3, 256, 512), 1536, True).source_shape == (768, 1536)


def test_other_ranks_become_a_near_square_grid_truncated_not_padded():
    # 385 values: side floor(sqrt(98304/385)) = 15, rows 128 // 15 = 8, cols 385 // 8 = 48 -> 384 kept
    x = np.arange(5 * 7 * 11, dtype=np.float64).reshape(5, 7, 11)
    plan = make_plan(x.shape, 768, False)
    assert plan.source_shape == (8, 48)
    pixels, sections = render([x])
    assert sections[0]["max"] == 383.0  # the last value, 384, is cut
    expected_top_left = 0
    expected_bottom_right = int(383 * 255 / 383)
    assert pixels[0, 0] == expected_top_left and pixels[-1, -1] == expected_bottom_right
    # rank 3 with more than the budget: first 32768 values, 1-pixel cells, 128 x 256
    assert make_plan((40000, 1, 1), 768, False).source_shape == (128, 256)
    # rank 0 is one value
    assert make_plan((), 768, False).source_shape == (1, 1)


def test_show_all_widens_the_frame_and_grows_sections():
    shapes = [(1000,), (300, 900), (3, 3, 64, 400), (10, 10, 10, 10, 10)]
    assert frame_width(shapes, False) == 768
    assert frame_width(shapes, True) == 1200  # 3 * 400
    assert [section_height(s, True) for s in shapes] == [128, 300, 192, 130]
    assert [section_height(s, False) for s in shapes] == [128] * 4


def test_sections_are_separated_by_five_black_rows():
    pixels, sections = render([np.array([1.0, 2.0]), np.array([3.0, 4.0])], colormap="magma")
    assert pixels.shape == (128 + 5 + 128, 768)
    assert (pixels[128:133] == 0).all()
    assert [s["height"] for s in sections] == [128, 128]


def test_per_section_scaling_maps_each_section_to_the_full_range():
    pixels, _ = render([np.array([0.0, 1.0]), np.array([2.0, 4.0])], scaling="layer")
    assert (pixels[0, :384] == 0).all() and (pixels[0, 384:] == 255).all()
    assert (pixels[133, :384] == 0).all() and (pixels[133, 384:] == 255).all()


def test_all_sections_scaling_uses_the_global_range_without_the_originals_overflow():
    pixels, _ = render([np.array([-4.0, 0.0]), np.array([2.0, 4.0])], scaling="network")
    # global range -4..4: -4 -> 0, 0 -> 127, 2 -> 191, 4 -> 255 (the original wrapped 4 around to 254)
    assert pixels[0, 0] == 0 and pixels[0, -1] == 127
    assert pixels[133, 0] == 191 and pixels[133, -1] == 255


def test_a_constant_section_is_black():
    pixels, sections = render([np.full(10, 3.5)])
    assert (pixels == 0).all()
    assert sections[0]["range"] == 0.0 and sections[0]["mean"] == 3.5


@pytest.mark.parametrize(
    "name, first, last",
    [
        ("magma", (0, 0, 3), (251, 252, 191)),
        ("inferno", (0, 0, 3), (252, 254, 164)),
        ("plasma", (12, 7, 134), (239, 248, 33)),
        ("viridis", (68, 1, 84), (253, 231, 36)),
        ("grayscale", (0, 0, 0), (255, 255, 255)),
    ],
)
def test_colormap_endpoints(name, first, last):
    renderer = Renderer()
    cfg = {**DEFAULT_CONFIG, "mode": "current", "colormap": name}
    plan = frame_plan([np.zeros(2)], False)
    out = renderer.render(plan, np.array([0.0, 1.0], np.float32), cfg)
    rgb = out.palette[out.pixels]
    assert tuple(rgb[0, 0]) == first and tuple(rgb[0, -1]) == last
    assert PALETTES[name].shape == (256, 3) and PALETTES[name].dtype == np.uint8


def test_variance_over_the_window_matches_np_var():
    rng = np.random.default_rng(7)
    renderer = Renderer()
    cfg = {**DEFAULT_CONFIG, "mode": "variance", "window_size": 4, "colormap": "grayscale"}
    history = []
    for step in range(11):  # more than two windows, so samples drop out and sums are rebuilt
        arrays = [rng.normal(size=(6,)) * (step + 1), rng.normal(size=(3, 5)) + 100.0]
        history.append(arrays)
        _, sections = render_with(renderer, arrays, cfg)
    window = np.stack([h[1] for h in history[-4:]])
    # (3, 5) upsampled to 128 x 768: every value shown; float32 sums, so float32 precision
    expected = np.var(window.astype(np.float32).astype(np.float64), axis=0)
    assert sections[1]["max"] == pytest.approx(expected.max(), rel=1e-4)
    assert sections[1]["min"] == pytest.approx(expected.min(), rel=1e-4)
    weights_rows = np.bincount(resize_indices(3, 128))
    weights_cols = np.bincount(resize_indices(5, 768))
    mean = weights_rows @ expected @ weights_cols / (128 * 768)
    assert sections[1]["mean"] == pytest.approx(mean, rel=1e-4)


@pytest.mark.parametrize("phase", range(5))
def test_a_nan_sample_leaves_the_variance_when_it_leaves_the_window(phase):
    """A sample marked unclean (it held a NaN) makes the variance NaN exactly while it is in the window,
    as the original's variance over the stored frames did, whatever the phase of the sums' rebuilds."""
    from beholder_plugin.trainer.views.render import FlatWindow

    rng = np.random.default_rng(phase)
    window, history = FlatWindow(4, 3), []
    for step in range(phase + 12):
        x = rng.normal(size=3).astype(np.float32)
        if step == phase:
            x[1] = np.nan
        history.append(x)
        got = window.push(x)
        if step == phase:
            window.mark_newest_unclean()
        expected = np.var(np.stack(history[-4:]).astype(np.float64), axis=0)
        assert np.array_equal(np.isnan(got), np.isnan(expected)), step
        np.testing.assert_allclose(got[[0, 2]], expected[[0, 2]], rtol=1e-4, atol=1e-6)


def test_variance_with_one_sample_is_black():
    pixels, sections = render([np.array([1.0, 5.0, 9.0])], mode="variance")
    assert (pixels == 0).all() and sections[0]["max"] == 0.0


def test_window_shrink_keeps_the_newest_samples():
    renderer = Renderer()
    cfg = {**DEFAULT_CONFIG, "mode": "variance", "window_size": 5, "colormap": "grayscale"}
    for value in (0.0, 100.0, 1.0, 2.0, 3.0):
        render_with(renderer, [np.array([value, 0.0])], cfg)
    cfg["window_size"] = 3
    _, sections = render_with(renderer, [np.array([4.0, 0.0])], cfg)
    assert sections[0]["max"] == pytest.approx(np.var([2.0, 3.0, 4.0]), rel=1e-6)


SHAPES = [
    (7,),
    (1000,),
    (40, 30),
    (900, 20),
    (3, 3, 4, 5),
    (3, 3, 256, 40),
    (6, 8, 8, 3),
    (5, 7, 11),
    (3, 4, 5, 6, 2),
]


@pytest.mark.parametrize("show_all", [False, True])
@pytest.mark.parametrize("scaling", ["layer", "network"])
def test_current_mode_matches_the_reference_pixel_for_pixel(show_all, scaling):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    pixels, sections = render(arrays, show_all=show_all, scaling=scaling)
    expected, stats = reference_frame([arrays], "current", scaling, show_all)
    assert pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)
    for info, (lo, mean, hi) in zip(sections, stats):
        assert info["min"] == lo and info["max"] == hi
        assert info["mean"] == pytest.approx(mean, rel=1e-6, abs=1e-6)  # float32 products


def test_variance_mode_matches_the_reference():
    rng = np.random.default_rng(2)
    renderer = Renderer()
    cfg = {**DEFAULT_CONFIG, "mode": "variance", "window_size": 5, "colormap": "grayscale"}
    history = []
    for _ in range(8):
        arrays = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
        history.append(arrays)
        pixels, sections = render_with(renderer, arrays, cfg)
    expected, stats = reference_frame(history[-5:], "variance", "layer")
    # variance is summed differently from np.var, so a value that lands exactly on a
    # quantisation boundary may differ by one level; nothing may differ by more
    diff = np.abs(pixels.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    for info, (lo, mean, hi) in zip(sections, stats):
        assert info["min"] == pytest.approx(lo, rel=1e-5, abs=1e-9)  # float32 running sums
        assert info["max"] == pytest.approx(hi, rel=1e-5)
        assert info["mean"] == pytest.approx(mean, rel=1e-5)


def test_empty_array_is_refused_with_its_name():
    with pytest.raises(RenderError, match="section grad"):
        PlanCache().plans([(0, 3)], False, ["grad"])


def test_non_finite_values_do_not_break_the_frame():
    pixels, sections = render([np.array([np.nan, 0.0, np.inf, 2.0, -np.inf])])
    assert sections[0]["min"] == 0.0 and sections[0]["max"] == 2.0
    assert sections[0]["mean"] is None  # the mean of a section holding inf is not finite
    assert pixels[0, 0] == 0 and pixels[0, -1] == 0  # NaN and -inf show as the low end
    assert pixels[0, 2 * 768 // 5 + 1] == 255  # +inf shows as the high end


@pytest.mark.parametrize("value", [4e35, 5e35, 1e37, 3.4e38])
def test_the_mean_of_huge_finite_values_is_finite_and_between_min_and_max(value):
    """The means' row sums are float32: past about 4e35 they overflowed (mean null, read as "not finite"),
    and a constant section's mean came out below its min."""
    constant = np.full(20, value, np.float32)
    mixed = np.array([value, -value, value, value / 2] * 40, np.float32).reshape(8, 20)
    _, sections = render([constant, mixed, np.arange(4.0)])
    assert sections[0]["mean"] == sections[0]["min"] == sections[0]["max"] == float(np.float32(value))
    truth = float(mixed.astype(np.float64).mean())  # (the mean is over pixels: columns 38 or 39 wide)
    assert sections[1]["finite"] and sections[1]["mean"] == pytest.approx(truth, rel=1e-6)
    assert sections[2]["mean"] == 1.5


def test_user_frame_scaling():
    frame = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_array_equal(scale_frame(frame), [[0, 63], [127, 255]])
    assert (scale_frame(np.full((3, 3), 7.0)) == 0).all()


@pytest.mark.parametrize("show_all", [False, True])
def test_fast_take_paths_agree_with_plain_indexing_for_any_memory_layout(show_all):
    rng = np.random.default_rng(3)
    for shape in SHAPES + [(), (40000, 1, 1)]:
        x = rng.normal(size=shape)
        plan = make_plan(shape, frame_width([shape], show_all), show_all)
        expected = x[plan.index] if shape else np.full((1, 1), x[()])
        expected = np.broadcast_to(expected, plan.compact_shape)
        for variant in (x, np.asfortranarray(x), np.flip(x)[(slice(None, None, -1),) * x.ndim]):
            np.testing.assert_array_equal(plan.take(variant), expected)
