"""What watch() needs to know about torch.compile: compiled models, their layers' names, compile events.

A compiled module runs the graph dynamo traced, with the forward hooks the
module had when it was traced: hooks added later never run, and by default
dynamo does not notice hooks coming or going. So for a compiled model
watch() keeps its activation hooks installed for good, and they check the
watch's ``armed`` flag, which dynamo guards on: one graph for "not armed"
(the hooks do nothing, the graph is the model's own) and one for "armed"
(each hooked layer's output is also an output of the graph), compiled once
each, never once per frame. Nothing here imports torch until it is called.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("beholder")

WRAPPED = "_orig_mod"  # the attribute (and the path part) under which torch.compile keeps the module
RECOMPILED = (
    "a training step ran but no activation hook did: the model most likely runs a graph compiled "
    "before the hooks were installed. They stay installed from now on and Beholder had dynamo "
    "recompile once (torch.compiler.reset()); the next frame shows the activations"
)


def is_compiled(model: Any) -> bool:
    """Whether this torch module or one in it is compiled (torch.compile, module.compile(), Lightning's)."""
    for module in model.modules():
        if (
            type(module).__name__ == "OptimizedModule"
            or getattr(module, "_compiled_call_impl", None) is not None  # module.compile()
            or getattr(module, "_compiler_ctx", None) is not None  # Lightning's from_compiled()
        ):
            return True
    return False


def unwrap(model: Any) -> Any:
    """The module a ``torch.compile(module)`` wrapper holds (the module itself when it is not one)."""
    while type(model).__name__ == "OptimizedModule" and hasattr(model, WRAPPED):
        model = getattr(model, WRAPPED)
    return model


def layer_name(path: str) -> str:
    """A module or parameter path without the parts torch.compile's wrappers add (``_orig_mod.``)."""
    if WRAPPED not in path:
        return path
    return ".".join(part for part in path.split(".") if part != WRAPPED)


def compiling() -> bool:
    """Whether dynamo is tracing the code that calls this (a constant True inside the graph)."""
    import torch

    return bool(torch.compiler.is_compiling())


def untraced(function: Callable) -> Callable:
    """The function, which dynamo neither traces nor compiles (it runs eagerly even inside compiled code)."""
    if not dynamo_loaded():  # nothing compiles without dynamo (and importing it would cost seconds)
        return function
    import torch

    return torch.compiler.disable(function, recursive=True)


def dynamo_loaded() -> bool:
    """Whether dynamo is imported (torch.compile imports it; importing it here would cost seconds)."""
    return "torch._dynamo" in sys.modules


def graphs_compiled() -> bool:
    """Whether dynamo has compiled a graph in this process (it is imported by other code too: an AdamW
    step imports it with nothing compiled)."""
    if not dynamo_loaded():
        return False
    counters = getattr(sys.modules.get("torch._dynamo.utils"), "counters", None)
    try:
        return bool(counters is not None and counters["stats"]["unique_graphs"])
    except (KeyError, TypeError):
        return False


def listen(callback: Callable[[], None]) -> Callable[[], None]:
    """Have dynamo call ``callback`` before it compiles anything, and guard on hooks; returns a stop.

    The callback runs before dynamo traces the frame, so hooks it installs
    are part of that graph. It is held by a weak reference to its owner's
    bound method when it is one, so a forgotten watch is not kept alive.
    Dynamo is also told to guard on modules' hooks (its
    ``skip_nnmodule_hook_guards``, on by default, off from here on, for the
    whole process): a graph traced without hooks is then not reused by a
    module that has them (another copy of the model, or the model after
    watch() hooked it), it is traced again.
    """
    try:
        import torch._dynamo.config
        from torch._dynamo.callback import callback_handler
    except ImportError:  # a torch without dynamo's callbacks: compiled models are found by is_compiled()
        return lambda: None
    if getattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False):
        torch._dynamo.config.skip_nnmodule_hook_guards = False
    owner = getattr(callback, "__self__", None)
    ref = weakref.WeakMethod(callback) if owner is not None else (lambda: callback)

    def started(*_args: Any) -> None:
        target = ref()
        if target is not None:
            target()

    callback_handler.register_start_callback(started)

    def stop() -> None:
        try:
            callback_handler.remove_start_callback(started)
        except (AttributeError, ValueError):
            pass

    return stop


_KEEP: list[Callable] = []  # the registered copy operator, once per process


def prepare_keep() -> None:
    """Register the operator that keep() calls (outside any graph: before the hooks can be traced)."""
    if _KEEP:
        return
    import torch

    try:
        @torch.library.custom_op("beholder::keep", mutates_args=(), schema="(Tensor tensor) -> Tensor")
        def keep_op(tensor: torch.Tensor) -> torch.Tensor:
            """A copy of the tensor in memory of its own."""
            return tensor.clone()

        @keep_op.register_fake
        def _keep_shape(tensor: torch.Tensor) -> torch.Tensor:
            """The copy's shape, dtype and strides, for tracing."""
            return torch.empty_like(tensor)
    except (AttributeError, RuntimeError, ValueError):  # no custom_op in this torch, or registered twice
        existing = getattr(getattr(torch.ops, "beholder", None), "keep", None)
        _KEEP.append(existing if existing is not None else torch.clone)
        return
    _KEEP.append(keep_op)


def keep(tensor: Any) -> Any:
    """A copy of a layer's output that a compiled graph returns as one more output, in memory of its own.

    Not ``tensor.clone()``: with a clone, inductor on a GPU showed
    gradient-sized values for layers after an in-place ReLU (most likely
    its no-op pass drops the clone, and the output then shares memory the
    backward pass writes over). An operator of our own is opaque to
    inductor: it always copies, and its result aliases nothing.
    """
    prepare_keep()
    return _KEEP[0](tensor.detach())


# What the log says when some layers' hooks ran and others' did not (a graph break).
RECOMPILED_PART = (
    "a training step ran some layers without their activation hooks: part of the model most likely "
    "runs a graph compiled before the hooks were installed (a graph break splits it). They stay "
    "installed from now on and Beholder had dynamo recompile once (torch.compiler.reset()); the next "
    "frame shows every layer's activations"
)


def recompile(partial: bool = False) -> None:
    """Drop dynamo's compiled code, so that the next call traces the model again, with its hooks."""
    logger.info("Beholder: %s", RECOMPILED_PART if partial else RECOMPILED)
    if dynamo_loaded():  # else nothing was compiled: the hooks that stay installed are enough
        import torch

        torch.compiler.reset()
