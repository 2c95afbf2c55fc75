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
