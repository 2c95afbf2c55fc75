"""Which process of a data-parallel job this is, from the frameworks already loaded and the environment.

Nothing here imports a framework: torch.distributed, JAX and TensorFlow are
asked only when the program has loaded them.
"""

from __future__ import annotations

import json
import os
import sys

RANK_CHOICES = ("zero", "all")


def process_rank() -> int | None:
    """This process's rank in a data-parallel job, or None when it is not part of one.

    Asked in order: torch.distributed (when initialised), JAX (with more
    than one process), TensorFlow's ``TF_CONFIG`` (the chief is rank 0, and
    worker i is i + 1 when there is a chief), then the ``RANK`` and
    ``LOCAL_RANK`` variables that torchrun, Lightning and Accelerate set.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            if jax.process_count() > 1:
                return int(jax.process_index())
        except Exception:  # a JAX without a backend yet: fall through to the environment
            pass
    rank = _tf_config_rank(os.environ.get("TF_CONFIG"))
    if rank is not None:
        return rank
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _tf_config_rank(raw: str | None) -> int | None:
    """The rank TF_CONFIG gives this task (chief 0, workers after it), or None."""
    if not raw:
        return None
    try:
        config = json.loads(raw)
        task = config.get("task", {})
        kind, index = task.get("type"), int(task.get("index", 0))
        has_chief = bool(config.get("cluster", {}).get("chief"))
    except (ValueError, TypeError, AttributeError):
        return None
    if kind == "chief":
        return 0
    if kind == "worker":
        return index + 1 if has_chief else index
    return None


def run_for_rank(logdir: str, ranks: str, rank: int | None) -> str | None:
    """The run this process writes to: the logdir, ``<logdir>/rank-N`` for ranks="all", or None (no writing).

    With ``ranks="zero"`` (the default) only rank 0, or a process that is not
    part of a data-parallel job, writes.
    """
    if ranks not in RANK_CHOICES:
        raise ValueError(f"ranks must be one of {', '.join(map(repr, RANK_CHOICES))}, not {ranks!r}")
    if ranks == "all":
        return logdir if rank is None else os.path.join(logdir, f"rank-{rank}")
    return logdir if not rank else None
