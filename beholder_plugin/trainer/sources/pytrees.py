"""JAX pytrees (Flax parameter dicts, Flax NNX states): sections named by their key paths.

Imported only when JAX is already loaded, so importing JAX here costs nothing.
``update(arrays={"params": {"Dense_0": {"kernel": k, "bias": b}}})`` gives
the sections ``params/Dense_0/kernel`` and ``params/Dense_0/bias``; Flax NNX
variables (``nnx.Param``) are unwrapped to their arrays.
"""

from __future__ import annotations

import sys
from typing import Any


def _variable_type() -> type | None:
    """Flax NNX's Variable class when Flax NNX is loaded, else None."""
    nnx = sys.modules.get("flax.nnx")
    return getattr(nnx, "Variable", None)


def _unwrap(leaf: Any) -> Any:
    """The array inside a Flax NNX variable; anything else as it is."""
    variable = _variable_type()
    if variable is not None and isinstance(leaf, variable):
        getter = getattr(leaf, "get_value", None)
        return getter() if getter is not None else leaf.value
    return leaf


def _key_name(key: Any) -> str:
    """One step of a key path as text: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_jax_array(obj: Any) -> bool:
    """True for a jax.Array (never imports JAX: it is loaded when this module is used)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(obj, jax.Array)


def flatten(tree: Any) -> list[tuple[str, Any]] | None:
    """(key path, array) pairs of a nested pytree, or None when it is not a tree of JAX arrays.

    None (so that the caller keeps its usual rules) when a leaf is neither an
    array with a shape nor None, or when no leaf is a JAX array: nested lists
    of numbers and trees of NumPy arrays are left alone. A None leaf (a
    missing gradient) is kept as a section of its own.
    """
    import jax

    variable = _variable_type()

    def is_leaf(node: Any) -> bool:
        """None and NNX variables are leaves (jax would drop the one and open the other)."""
        return node is None or (variable is not None and isinstance(node, variable))

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    pairs = []
    any_jax = False
    for path, leaf in leaves:
        leaf = _unwrap(leaf)
        if leaf is not None and not hasattr(leaf, "shape"):
            return None
        any_jax = any_jax or _is_jax_array(leaf)
        pairs.append(("/".join(_key_name(k) for k in path), leaf))
    return pairs if any_jax else None


def nnx_parameters(module: Any) -> list[tuple[str, Any, str | None]]:
    """(path, array, None) for a Flax NNX module's ``nnx.Param`` variables, in the state's order."""
    from flax import nnx

    state = nnx.state(module, nnx.Param)
    return [(name, array, None) for name, array in flatten(state) or []]
