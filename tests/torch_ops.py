"""What torch ops a piece of code dispatches (tests that count launches on CPU tensors); needs torch."""

from __future__ import annotations

import torch


class OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op dispatched while it is active, with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket.__name__), args))
        return func(*args, **(kwargs or {}))


def storages_held_by(obj, skip: str) -> set[int]:
    """The addresses of the storages an object's attributes hold (tensors, directly or in lists and
    tuples), but for attribute ``skip``: what a captured graph may read while its owner lives."""
    found, todo = set(), [v for k, v in vars(obj).items() if k != skip]
    while todo:
        value = todo.pop()
        if isinstance(value, torch.Tensor):
            found.add(value.untyped_storage().data_ptr())
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
    return found
