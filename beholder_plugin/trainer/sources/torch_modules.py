"""PyTorch modules: each parameter's layout from the module that owns it, activation layouts, and what
watch()'s hooks need to know of parameters, outputs and autograd.

Nothing here imports torch at module level; the functions that need it run
only once a torch module reached Beholder, so torch is loaded by then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from beholder_plugin.trainer import compiled

# Module class names (anywhere in the type's MRO) -> the layout of their `weight`.
# Checked in this order: transposed convolutions are _ConvNd subclasses too.
_WEIGHT_LAYOUTS = {
    "_ConvTransposeNd": "kernel_iohw",  # ConvTranspose1d/2d/3d: (in, out, *k)
    "_ConvNd": "kernel_oihw",  # Conv1d/2d/3d (and lazy ones): (out, in, *k)
    "Linear": "matrix_out_in",  # (out, in): drawn with inputs down, outputs across, as Keras's Dense
    "Bilinear": "grid",
    "Embedding": "matrix",  # (tokens, dim): one row per token
    "EmbeddingBag": "matrix",
}
# Parameters named like these, in recurrent and attention modules, are (out, in) matrices too.
_OUT_IN_PREFIXES = ("weight_ih", "weight_hh", "in_proj_weight", "q_proj_weight", "k_proj_weight",
                    "v_proj_weight")


def _class_names(module: Any) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def parameter_layout(module: Any, name: str, param: Any) -> str | None:
    """The layout of one of a module's own parameters (None: the torch default for its shape)."""
    classes = _class_names(module)
    if name == "weight":
        for cls, layout in _WEIGHT_LAYOUTS.items():
            if cls in classes:
                fits = param.dim() in (3, 4, 5) if layout.startswith("kernel") else param.dim() == 2
                return layout if fits or layout == "grid" else None
    if param.dim() == 2 and name.startswith(_OUT_IN_PREFIXES):
        return "matrix_out_in"
    return None


_STRUCTURE = [0]  # bumped whenever any torch module registers a submodule or a parameter
_LISTENING: list[bool] = []


def structure_version() -> int:
    """A counter that moves whenever any torch module gets a submodule or parameter (added or replaced).

    torch's global registration hooks bump it, so a walked parameter list is
    known to be stale without walking the model again.
    """
    if not _LISTENING:
        from torch.nn.modules import module

        module.register_module_module_registration_hook(_restructured)
        module.register_module_parameter_registration_hook(_restructured)
        _LISTENING.append(True)
    return _STRUCTURE[0]


def _restructured(*args: Any) -> None:
    """torch's registration hook: some module's structure changed (nothing is replaced)."""
    _STRUCTURE[0] += 1


def named_parameters(model: Any, trainable_only: bool = True) -> list[tuple[str, Any, str | None]]:
    """(path, parameter, layout) for a module's parameters, in named_parameters() order, shared ones once;
    a lazy module's parameters only once its first forward has made them."""
    import torch

    lazy = torch.nn.parameter.UninitializedParameter
    seen: set[int] = set()
    out = []
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or (trainable_only and not param.requires_grad) or isinstance(param, lazy):
                continue
            seen.add(id(param))
            path = compiled.layer_name(f"{prefix}.{name}" if prefix else name)  # no "_orig_mod."
            out.append((path, param, parameter_layout(module, name, param)))
    return out


def trainable_parameters(model: Any) -> list[tuple[str, Any, str | None]]:
    """(path, parameter, layout) of the parameters that require gradients."""
    return named_parameters(model, trainable_only=True)


def activation_layout(module: Any, rank: int) -> str | None:
    """The layout of a module's output: channels first for images and 1-D/3-D signals, else the default."""
    if rank in (4, 5):
        return "activation_nchw"
    if rank == 3 and any(n.endswith("1d") for n in _class_names(module)):
        return "activation_nchw"  # (n, c, length) from Conv1d, BatchNorm1d, MaxPool1d...
    return None


def sharded(param: Any) -> bool:
    """Whether a torch parameter is a DTensor (sharded, as FSDP2 keeps it between forwards)."""
    return type(param).__name__ == "DTensor"


def version_sum(params: list[Any]) -> int:
    """The sum of torch parameters' version counters (an optimizer step changes it)."""
    return sum(param._version for param in params)


def end_of_backward_queue() -> Callable | None:
    """Autograd's queue of callbacks run when the current backward pass ends (None if unavailable)."""
    import torch

    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    return getattr(engine, "queue_callback", None)


def backward_pass_id() -> int:
    """Which backward pass autograd is running (a hook calls this): its graph task's id, or 0 where torch
    does not say (then a pass that raised before its end is not told from the next)."""
    import torch

    current = getattr(torch._C, "_current_graph_task_id", None)
    return 0 if current is None else current()


def first_tensor(output: Any) -> Any:
    """The tensor a module returned, or the first tensor of a tuple or list it returned (else None)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def whole_norm(tensor: Any, credit: int, on_device: bool | None = None) -> tuple[Any, int]:
    """A layer output's L2 norm over every value, as a 0-d tensor left on its device (no host sync;
    float64 on a device, exact_pass.device_norm), and the credit left; on the host only within
    ``credit`` values (else None: the sample's).

    ``on_device``: whether the tensor is gathered in a device batch, when the caller knows already.
    """
    import torch

    try:
        if on_device is None:  # (imported only then: a hook calls this for every layer)
            from beholder_plugin.trainer.sources import torch_batch

            on_device = torch_batch.batch_device(tensor) is not None
        if not on_device:  # read on the host (the CPU path)
            count = tensor.numel()
            if count > credit:
                return None, credit
            credit -= count
        from beholder_plugin.trainer import exact_pass

        if on_device:  # one fused pass, squares summed in float64: values past 1e19 keep a finite norm
            return exact_pass.device_norm(tensor.detach()), credit  # (detached: autograd records nothing)
        norm = torch.linalg.vector_norm(tensor.detach(), dtype=torch.float32)
        # (on the host: an infinite one taken again in float64, as the exact pass does)
        norm = exact_pass.host_norms_again(torch, [tensor.detach()], norm.reshape(1))[0]
        return norm, credit
    except Exception:  # (an integer or complex output, say): the record keeps the sample's norm
        return None, credit


def loss_scale_used(scale: Any, counter: Any, grads: list[Any]) -> Any:
    """The loss scale a dynamic loss scaler's last step computed these gradients with, from its scale and
    step counter as that step left them (Keras's LossScaleOptimizer): a 0-d float32 tensor on the
    gradients' device, found there (no host sync).

    The step doubles the scale after its run of finite steps and halves it
    after an overflow (a non-finite gradient: the step is skipped), and
    resets the counter to 0 either way; else the counter counts one more
    step. So the step's scale is the scale now when the counter is not 0,
    half of it when the gradients are all finite, twice it when they are not.
    """
    import torch

    peaks = torch._foreach_norm(grads, math.inf)  # (NaN where a gradient holds one)
    finite = torch.isfinite(torch.stack([peak.float() for peak in peaks])).all()
    scale = scale.to(grads[0].device, torch.float32)
    return torch.where(counter.to(scale.device) != 0, scale, torch.where(finite, scale * 0.5, scale * 2.0))
