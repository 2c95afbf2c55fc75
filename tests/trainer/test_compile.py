"""watch() on compiled torch models: dynamo's eager and aot_eager backends, a convnet and a small transformer.

Each test trains a compiled model and an uncompiled copy (same weights, same
batches) side by side, each watched by its own Beholder, and checks that the
frames agree: the layers' names, and the values.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file

torch = pytest.importorskip("torch")
nn = torch.nn
dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402  (after the skips)

BACKENDS = ["eager", "aot_eager"]
VALUES = ["trainable_variables", "gradients", "activations"]


class Block(nn.Module):
    """A residual block as ResNet has them: its BatchNorm's output is changed in place afterwards."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        """conv -> bn, += x (in place), relu (in place)."""
        out = self.bn(self.conv(x))
        out += x
        return self.relu(out)


def convnet() -> nn.Module:
    """A small ResNet-like convnet: stem, one residual block, pooling, a linear head (10 classes)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), Block(8),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )


class Attention(nn.Module):
    """Causal self-attention with one qkv projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        """softmax(q k^T) v over earlier tokens."""
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Transformer(nn.Module):
    """Two pre-norm transformer layers over token embeddings, a linear head (vocabulary 50)."""

    def __init__(self, width: int = 16, heads: int = 2, vocab: int = 50) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                "norm1": nn.LayerNorm(width), "attn": Attention(width, heads), "norm2": nn.LayerNorm(width),
                "mlp": nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)),
            })
            for _ in range(2)
        )
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        """Logits for each token."""
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer["attn"](layer["norm1"](x))
            x = x + layer["mlp"](layer["norm2"](x))
        return self.head(x)


def batch(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels for one step of this kind of model."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "convnet":
        return torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    ids = torch.randint(0, 50, (2, 8), generator=gen)
    return ids, ids


def step(model, opt, kind: str, seed: int, device: str = "cpu") -> None:
    """One SGD step on the seeded batch."""
    x, y = (t.to(device) for t in batch(kind, seed))
    opt.zero_grad()
    logits = model(x)
    nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    opt.step()


def make(kind: str) -> nn.Module:
    """A fresh model of this kind (the same weights each time)."""
    return convnet() if kind == "convnet" else Transformer()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts as a fresh process would: no compiled code, zeroed counters, dynamo's defaults."""
    dynamo.reset()
    counters.clear()
    with dynamo.config.patch(skip_nnmodule_hook_guards=True):  # watch() turns it off; restored after
        yield
    dynamo.reset()


def train_watched(
    run: str, model: nn.Module, trained: nn.Module, kind: str, values: str, frames: int = 3,
    device: str = "cpu",
):
    """Train `trained` (the model itself or its compiled wrapper) with `model` watched; the Beholder's counts.

    Every update() finds a frame due. Weights, and gradients (the step leaves
    them in ``.grad``), are read at each; for activations the updates
    alternate: one arms the hooks, the next takes the frame of the step in
    between.
    """
    set_config(run, values=values, mode="current", FPS=30)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    beholder = Beholder(run, strict=True, background=False)
    beholder.watch(trained)
    for seed in range(2 * frames):
        step(trained, opt, kind, seed, device)
        beholder.frame_due_now()  # a frame is due at every update
        beholder.update()
    written, failures = beholder.frames_written, beholder.failures
    beholder.close()
    return written, failures


def assert_same_frames(first, second, tolerance: float = 1e-5) -> None:
    """Two frame files show the same sections, named alike, with the same values (float rounding aside)."""
    assert [s["name"] for s in first.sections] == [s["name"] for s in second.sections]
    assert [s["shape"] for s in first.sections] == [s["shape"] for s in second.sections]
    assert not any("missing" in s for s in first.sections)
    np.testing.assert_allclose(first.values, second.values, rtol=10 * tolerance, atol=tolerance,
                               equal_nan=True)


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("kind", ["convnet", "transformer"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_models_frame_equals_the_uncompiled_models(tmp_path, backend, kind, values):
    plain = make(kind)
    model = copy.deepcopy(plain)
    plain_run, compiled_run = str(tmp_path / "plain"), str(tmp_path / "compiled")
    frames = 3 if values == "activations" else 6  # weights and gradients are read at each update()
    assert train_watched(plain_run, plain, plain, kind, values) == (frames, 0)
    compiled_model = torch.compile(model, backend=backend)
    assert train_watched(compiled_run, model, compiled_model, kind, values) == (frames, 0)
    compiled_frame, plain_frame = read_frame_file(compiled_run), read_frame_file(plain_run)
    assert_same_frames(compiled_frame, plain_frame)
    names = [s["name"] for s in compiled_frame.sections]
    assert not any("_orig_mod" in name for name in names)
    if kind == "convnet" and values == "activations":
        # the layers' own names; "3.bn" is shown as it left the BatchNorm, before "+= x" and the ReLU
        assert names == ["0", "1", "2", "3.conv", "3.bn", "3.relu", "4", "5", "6"]
    if kind == "transformer" and values == "activations":
        assert names[:4] == ["embed", "layers.0.norm1", "layers.0.attn.qkv", "layers.0.attn.proj"]


@pytest.mark.parametrize("backend, how", [("eager", "torch.compile"), ("aot_eager", "torch.compile"),
                                          ("aot_eager", "module.compile")])
def test_a_hundred_frames_compile_the_model_a_fixed_number_of_times(run_dir, backend, how):
    model = convnet()
    if how == "module.compile":
        model.compile(backend=backend)  # dynamo then compiles the modules' forwards one by one
        compiled_model = model
    else:
        compiled_model = torch.compile(model, backend=backend)
    set_config(run_dir, values="activations", mode="current", FPS=30)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    compiles = []
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(compiled_model)
        for seed in range(200):  # 100 frames: one update arms, the next takes
            step(compiled_model, opt, "convnet", seed)
            beholder.frame_due_now()
            beholder.update()
            compiles.append(counters["frames"]["total"])
        assert beholder.frames_written == 100 and beholder.failures == 0
    # torch.compile: one graph for "armed", one for "not armed", and no more; module.compile(): the
    # same for each module whose forward dynamo compiles on its own (9 leaves and the block here)
    assert compiles[-1] == compiles[20] <= (3 if how == "torch.compile" else 15)  # (11 in torch 2.13)


def test_watch_before_compiling_and_module_compile(tmp_path):
    """watch(model) and then torch.compile(model), or model.compile(): dynamo traces the hooks in."""
    plain = convnet()
    assert train_watched(str(tmp_path / "plain"), plain, plain, "convnet", "activations") == (3, 0)
    expected = read_frame_file(str(tmp_path / "plain"))
    for how in ("torch.compile", "module.compile"):
        dynamo.reset()
        run = str(tmp_path / how)
        model = convnet()
        set_config(run, values="activations", mode="current", FPS=30)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with Beholder(run, strict=True, background=False) as beholder:
            beholder.watch(model)
            if how == "module.compile":
                model.compile(backend="aot_eager")
                trained = model
            else:
                trained = torch.compile(model, backend="aot_eager")
            assert not beholder.watched.compiled  # nothing compiled yet: hooks only on armed steps
            for seed in range(6):
                step(trained, opt, "convnet", seed)
                beholder.frame_due_now()
                beholder.update()
            assert beholder.watched.compiled and (beholder.frames_written, beholder.failures) == (3, 0)
        assert_same_frames(read_frame_file(run), expected)


def test_a_model_compiled_and_run_before_watch_is_recompiled_once(run_dir):
    model = convnet()
    compiled_model = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step(compiled_model, opt, "convnet", 0)  # traced with no hook
    set_config(run_dir, values="activations", mode="current", FPS=30)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)  # the module inside, not the wrapper: nothing says it is compiled
        sections = []
        for seed in range(1, 7):
            step(compiled_model, opt, "convnet", seed)
            beholder.frame_due_now()
            if beholder.update():
                sections.append(read_frame_file(run_dir).sections)
    assert len(sections) == 3
    assert "recompile" in sections[0][0]["missing"]  # the graph predated the hooks: traced again...
    assert [s["name"] for s in sections[1]] == ["0", "1", "2", "3.conv", "3.bn", "3.relu", "4", "5", "6"]
    assert not any("missing" in s for s in sections[2])  # ...and from then on every frame has them


class _Broken(nn.Module):
    """A model whose forward has a graph break (.item() in a branch): dynamo compiles it in two parts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.flat = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()
        self.fc1, self.act2, self.fc2 = nn.Linear(4 * 6 * 6, 16), nn.Tanh(), nn.Linear(16, 3)

    def forward(self, x):
        h = self.flat(self.act(self.conv(x)))
        if h.sum().item() > -1e9:  # (a graph break)
            h = self.act2(self.fc1(h))
        return self.fc2(h)


def test_a_graph_break_that_left_some_layers_in_an_old_graph_is_recompiled_once(run_dir, caplog):
    """Compiled and run before watch(), a model with a graph break ran its first part in a graph traced
    without hooks while the part after the break ran them: conv, act and flat were missing from every
    frame with no word, as the 'no hook ran at all' check never fired."""
    import logging

    torch.manual_seed(0)
    model = _Broken()
    compiled_model = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def train() -> None:
        opt.zero_grad()
        compiled_model(torch.randn(2, 1, 8, 8)).pow(2).mean().backward()
        opt.step()

    train()  # traced with no hook
    set_config(run_dir, values="activations", mode="current", FPS=30)
    names = []
    with caplog.at_level(logging.INFO, logger="beholder"), Beholder(run_dir, strict=True) as beholder:
        beholder.watch(compiled_model)
        for _ in range(4):
            beholder.frame_due_now()
            train()
            if beholder.update():
                beholder.flush()
                names.append([rec["name"] for rec in read_frame_file(run_dir).sections])
            train()
    assert names[0] == ["fc1", "act2", "fc2"]  # (the part past the break; the rest was traced again:)
    assert names[-1] == ["conv", "act", "flat", "fc1", "act2", "fc2"]
    assert caplog.text.count("ran some layers without their activation hooks") == 1


def test_unwatch_removes_a_compiled_models_hooks_and_keeps_nothing(run_dir):
    model = convnet()
    compiled_model = torch.compile(model, backend="eager")
    set_config(run_dir, values="activations", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True, background=False)
    handle = beholder.watch(compiled_model)
    hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    assert hooks() == 9  # installed at watch(): the model is compiled already
    watch = beholder.watched
    compiled_model(batch("convnet", 0)[0])
    assert watch.kept == {} and watch.captured == {}  # not armed: the graph keeps nothing
    beholder.update()  # armed
    compiled_model(batch("convnet", 1)[0])
    assert len(watch.kept) == 9 and all(isinstance(t, torch.Tensor) for t in watch.kept.values())  # graph's
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    beholder.frame_due_now()
    beholder.update()  # weights need no hook: disarmed, and the copies dropped
    assert watch.armed is None and watch.kept == {} and hooks() == 9
    handle.remove()
    assert hooks() == 0 and beholder.watched is None
    compiled_model(batch("convnet", 2)[0])  # the graph traced with the hooks is not used again
    assert watch.kept == {}
    beholder.close()


def test_a_compiled_submodule_is_named_without_the_wrapper(tmp_path):
    plain = Transformer()
    model = copy.deepcopy(plain)
    model.layers[0]["mlp"] = torch.compile(model.layers[0]["mlp"], backend="aot_eager")
    for values in ("activations", "gradients", "trainable_variables"):
        frames = 3 if values == "activations" else 6
        plain_run, run = str(tmp_path / f"plain-{values}"), str(tmp_path / values)
        assert train_watched(plain_run, plain, plain, "transformer", values) == (frames, 0)
        assert train_watched(run, model, model, "transformer", values) == (frames, 0)
        assert_same_frames(read_frame_file(run), read_frame_file(plain_run))


def test_a_graph_traced_for_an_unwatched_copy_is_not_used_for_the_watched_one(run_dir):
    """Two copies of a model share its code: once watch() ran, dynamo guards on hooks: each gets its graph."""
    other, model = convnet(), convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    compiled_other = torch.compile(other, backend="eager")
    compiled_model = torch.compile(model, backend="eager")
    set_config(run_dir, values="activations", mode="current", FPS=30)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(compiled_model)
        compiled_other(batch("convnet", 0)[0])  # traced first, with no hook
        for seed in range(4):
            step(compiled_model, opt, "convnet", seed)
            beholder.frame_due_now()
            if beholder.update():  # every frame has the activations: no recompile was needed
                assert len(read_frame_file(run_dir).sections) == 9
        assert (beholder.frames_written, beholder.failures) == (2, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
@pytest.mark.parametrize("kind", ["convnet", "transformer"])
def test_inductor_on_a_gpu_default_mode_and_cuda_graphs(tmp_path, kind, mode):
    """Inductor, default mode and reduce-overhead (CUDA graphs): each kind of values, as uncompiled."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for values in VALUES:
        dynamo.reset()
        counters.clear()
        plain = make(kind).cuda()
        model = copy.deepcopy(plain)
        frames = 100 if values == "trainable_variables" else 50  # 100 steps
        plain_run, run = str(tmp_path / f"plain-{values}"), str(tmp_path / f"compiled-{values}")
        assert train_watched(plain_run, plain, plain, kind, values, 50, "cuda") == (frames, 0)
        compiled_model = torch.compile(model, mode=mode)
        assert train_watched(run, model, compiled_model, kind, values, 50, "cuda") == (frames, 0)
        assert_same_frames(read_frame_file(run), read_frame_file(plain_run), tolerance=1e-3)
        assert counters["frames"]["total"] <= 4  # 50 frames: a fixed number of graphs, not one per frame


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler")
@pytest.mark.parametrize("kind", ["convnet", "transformer"])
def test_inductor_on_the_cpu(tmp_path, kind):
    """torch.compile's default backend, which compiles C++ for the CPU (tens of seconds)."""
    plain = make(kind)
    model = copy.deepcopy(plain)
    plain_run, run = str(tmp_path / "plain"), str(tmp_path / "compiled")
    assert train_watched(plain_run, plain, plain, kind, "activations") == (3, 0)
    assert train_watched(run, model, torch.compile(model), kind, "activations") == (3, 0)
    assert_same_frames(read_frame_file(run), read_frame_file(plain_run), tolerance=1e-4)
    assert counters["frames"]["total"] == 2


def test_variables_of_a_compiled_wrapper_are_named_as_the_models_own(run_dir):
    model = convnet()
    compiled_model = torch.compile(model, backend="eager")
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    with Beholder(run_dir, variables=compiled_model, strict=True, background=False) as beholder:
        assert beholder.update()
    names = [s["name"] for s in read_frame_file(run_dir).sections]
    assert names == [name for name, p in model.named_parameters()]
    assert names[0] == "0.weight"


def test_layers_the_filter_hides_or_that_are_frozen_are_no_sign_of_a_stale_graph(run_dir, caplog):
    """An eager model once dynamo compiled anything in the process: layers the Sections filter hides are
    never captured but are trained, and a frozen backbone built under inference_mode keeps no version
    counter. The graph-break check took the first for a stale graph (resetting every compiled function
    in the process) and failed every frame on the second."""
    import logging

    torch.compile(nn.Linear(2, 2), backend="eager")(torch.randn(1, 2))  # (dynamo has compiled a graph)
    with torch.inference_mode():
        backbone = nn.Linear(4, 4)
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_config(run_dir, values="activations", mode="current", FPS=30, filter="/^(0|1)$/")
    with caplog.at_level(logging.INFO, logger="beholder"), Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        for _ in range(4):
            beholder.frame_due_now()
            opt.zero_grad()
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
            beholder.update()
            beholder.flush()
        assert not beholder.watched.compiled and beholder.failures == 0
    assert "recompile" not in caplog.text
    assert [rec["name"] for rec in read_frame_file(run_dir).sections] == ["0", "1"]


def test_a_compiled_submodules_layers_are_chosen_by_the_names_the_frame_shows(tmp_path):
    """watch(activations=["encoder.0"]) of a model whose encoder is compiled: the path is
    encoder._orig_mod.0, the section's name encoder.0; both are accepted."""
    model = nn.Sequential()
    model.add_module("encoder", torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), backend="eager"))
    model.add_module("head", nn.Linear(4, 2))
    with Beholder(str(tmp_path)) as beholder:
        beholder.watch(model, activations=["encoder.0", "head"])
        beholder.watch(model, activations=["encoder._orig_mod.0"])
        with pytest.raises(ValueError, match="no module named 'encoder.1.0'"):
            beholder.watch(model, activations=["encoder.1.0"])
