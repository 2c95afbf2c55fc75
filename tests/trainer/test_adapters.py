"""Framework adapters: torch tensors and modules, ml_dtypes bfloat16, complex values, naming."""

from __future__ import annotations

import numpy as np
import pytest
from support import set_config

from beholder_plugin import Beholder, read_section_info
from beholder_plugin.protocol.plans import make_plan
from beholder_plugin.trainer.sources import (
    fetch_compact,
    framework_of,
    named_arrays,
    named_variables,
    prepare,
)

pytestmark = pytest.mark.usefixtures("flushed_updates")

SHAPES = [(9,), (40, 30), (3, 3, 4, 5), (6, 8, 8, 3), (5, 7, 11), ()]


def numpy_compact(array: np.ndarray, shape) -> np.ndarray:
    """The compact section of a NumPy array, the reference for other frameworks."""
    return make_plan(shape, 768, False).take(array).astype(np.float64)


def test_named_arrays_and_variables():
    assert [n for n, _, _ in named_arrays([np.ones(2), np.ones(3)])] == ["0", "1"]
    assert [n for n, _, _ in named_arrays({"a": 1, 3: np.ones(2)})] == ["a", "3"]
    assert [n for n, _, _ in named_arrays([1.0, 2.0, 3.0])] == ["0"]  # one flat list is one array
    assert [n for n, _, _ in named_arrays(np.ones((2, 2)))] == ["0"]
    assert [lay for _, _, lay in named_arrays({"a": 1, "b": 2}, layout={"b": "oihw"})] == [None, "oihw"]
    assert [lay for _, _, lay in named_arrays([np.ones(2), np.ones(3)], layout="nchw")] == ["nchw", "nchw"]
    with pytest.raises(ValueError, match="not passed: c"):
        named_arrays({"a": 1}, layout={"c": "oihw"})
    with pytest.raises(TypeError, match="variables must be"):
        named_variables(42)


def test_complex_values_are_shown_as_magnitude():
    z = np.array([3 + 4j, 0 + 1j])
    plan = make_plan(z.shape, 768, False)
    np.testing.assert_array_equal(fetch_compact(z, plan, "z"), [[5.0, 1.0]])


def test_object_arrays_are_refused_with_the_section_name():
    from beholder_plugin.protocol.layout import RenderError

    with pytest.raises(RenderError, match="section words"):
        prepare(["a", "b"], "words")
    with pytest.raises(RenderError, match="section ragged"):
        prepare([[1, 2], [3]], "ragged")


def test_ml_dtypes_bfloat16_arrays():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.array([0.5, 1.0, -2.0], dtype=ml_dtypes.bfloat16)
    plan = make_plan(x.shape, 768, False)
    np.testing.assert_array_equal(fetch_compact(x, plan, "bf16"), [[0.5, 1.0, -2.0]])


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_tensors_match_numpy(shape):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tensor = torch.tensor(values, requires_grad=True)
    assert framework_of(tensor) == "torch"
    plan = make_plan(shape, 768, False)
    np.testing.assert_array_equal(
        fetch_compact(prepare(tensor, "t"), plan, "t"), numpy_compact(values, shape)
    )


def test_torch_half_precision_and_bool():
    torch = pytest.importorskip("torch")
    for dtype in (torch.bfloat16, torch.float16):
        t = torch.tensor([0.5, 1.0, -2.0], dtype=dtype)
        plan = make_plan((3,), 768, False)
        np.testing.assert_array_equal(fetch_compact(t, plan, "h"), [[0.5, 1.0, -2.0]])
    plan = make_plan((2,), 768, False)
    np.testing.assert_array_equal(fetch_compact(torch.tensor([True, False]), plan, "b"), [[1.0, 0.0]])


def test_a_torch_module_gives_trainable_variables_by_parameter_name(run_dir):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    model[2].bias.requires_grad_(False)  # frozen: not trainable
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    beholder = Beholder(run_dir, variables=model, strict=True)
    assert beholder.update()
    infos = read_section_info(run_dir)
    assert [s["name"] for s in infos] == ["0.weight", "0.bias", "2.weight"]
    assert infos[0]["shape"] == [3, 4]
    assert infos[0]["max"] == pytest.approx(float(model[0].weight.detach().max()), rel=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_large_torch_tensor_is_never_copied_whole(monkeypatch, dtype):
    """A CPU float32 tensor is read in place (a NumPy view, then the few shown elements); a tensor NumPy
    cannot view (bfloat16, or one on an accelerator) is sliced on its device, and only the slice copied."""
    torch = pytest.importorskip("torch")
    big = torch.arange(4096 * 4096, dtype=torch.float32).reshape(4096, 4096).to(getattr(torch, dtype))
    plan = make_plan(big.shape, 768, False)  # a dense kernel: only 128 rows x 768 columns are shown
    expected = big.float().clone().numpy()[np.ix_(*plan.axes)]  # (a copy: big keeps its storage as it is)
    copied = []  # the elements of every tensor copied to the host with Tensor.numpy()
    original = torch.Tensor.numpy

    def spy(self, *args, **kwargs):
        copied.append(self.numel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", spy)
    compact = fetch_compact(big, plan, "big")
    assert compact.shape == (128, 768)
    np.testing.assert_array_equal(compact, expected)
    assert copied == ([] if dtype == "float32" else [128 * 768])  # a view, or the shown slice only
    # Reading it left the storage as it was: FSDP frees a gathered parameter by resizing its storage
    # (Tensor.numpy() would have made it unresizable, and the next forward would fail).
    big.untyped_storage().resize_(0)


@pytest.mark.parametrize("values, what", [
    (np.array(["a", "bc"], dtype=object), "(strings)"),  # (what a tf.string tensor's numpy() gives)
    (np.array([b"a", b"bc"], dtype=object), "(strings)"),
    (np.array([{"a": 1}, None], dtype=object), "(Python objects)"),
    (np.zeros(2, dtype=[("x", "f4"), ("y", "i2")]), "(structured or raw bytes)"),
])
def test_values_with_no_conversion_to_numbers_are_named(values, what):
    """gather_into's refusal says what the values are: strings (TF's, as bytes objects), other Python
    objects, structured records."""
    from beholder_plugin.protocol.layout import RenderError
    from beholder_plugin.trainer import sources
    from beholder_plugin.trainer.sources import numpy_arrays

    plan = make_plan(values.shape, 64, False)
    out = np.empty(plan.compact_shape, np.float32)
    with pytest.raises(RenderError, match=rf"section s: values of dtype .* \{what[:-1]}\) cannot be shown"):
        sources.gather_into(numpy_arrays, values, plan, out, "s")
