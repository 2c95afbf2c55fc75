"""What watch(model) shows of a Keras model or a Flax NNX module (watch.py does torch's hooks).

A Keras model's weights are its trainable variables with the layouts of
their layers; activations come from running the model on a fixed probe batch
when a frame is due (``watch(model, probe=x)``). Gradients are the ones
Keras's torch backend leaves in each variable's ``.grad`` after a step
(times the loss scale under a ``LossScaleOptimizer``, as ``mixed_float16``
compiles one: ``loss_scale`` finds the scale the step used); TensorFlow's
and JAX's ``fit()`` keep none, so their gradient sections say so. A Flax
NNX module keeps no gradients or activations: those sections say to pass
them as ``update(arrays=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beholder_plugin.trainer import sources
from beholder_plugin.trainer.sources import torch_modules
from beholder_plugin.trainer.sources.captured import Captured

NO_KERAS_GRADIENTS = (
    "Keras's fit() keeps gradients inside the step on TensorFlow and JAX; compute them with "
    "beholder_plugin.gradient_step() and pass them as arrays= (docs/integration.md)"
)
NO_PROBE = ("pass probe=<a batch of inputs> to BeholderCallback(...) or watch() to see a Keras model's "
            "activations")
NO_NNX_VALUES = (
    "a Flax NNX module keeps no {values}; pass them to update(arrays=...) (e.g. the State "
    "that nnx.grad returns, named by path) and pick \"arrays\" in the dashboard"
)


class KerasWatch:
    """A watched Keras model: its variables, its gradients (torch backend), and its probed activations."""

    def __init__(self, model: Any, probe: Any, layers: list[str] | None) -> None:
        self.model = model
        self.probe = probe
        self.layers = layers  # the layers whose activations are shown, by name (None: all)
        # what brings the trainer's state into the model before it is read (None: nothing does):
        # BeholderCallback's Callback.model, which on JAX writes fit()'s state back into the variables
        # (jax_state_sync); in between, the JAX trainer leaves them empty
        self.sync: Callable[[], Any] | None = None
        self._probe_built: Any = None

    def _synced(self) -> Any:
        """The model, its variables holding the trainer's present state."""
        if self.sync is not None:
            self.sync()
        return self.model

    def variables(self) -> list[sources.Named]:
        """The model's trainable variables, named by path, with their layouts."""
        return keras_variables(self._synced())

    def loss_scaled(self) -> bool:
        """Whether the model's optimizer is a built LossScaleOptimizer (it scales the gradients)."""
        return _loss_scale_variables(self._synced()) is not None

    def loss_scale(self, grads: list[Any]) -> Any:
        """The loss scale these gradients (the last step's, torch backend) were computed with, a 0-d
        float32 tensor on their device found without a host sync (torch_modules.loss_scale_used says
        how); None without a loss scaler."""
        found = _loss_scale_variables(self._synced())
        if found is None or not grads:
            return None
        return torch_modules.loss_scale_used(*found, grads)

    def sections(self, shown: str) -> list[sources.Named]:
        """A Keras model's gradient or activation sections, or sections saying why there are none."""
        if shown == "gradients":
            return keras_gradients(self.variables())
        if self.probe is None:
            return [("activations", Captured((), None, error=NO_PROBE), None)]
        self._synced()
        model, names = self._probe_model()
        outputs = model(self.probe, training=False)
        if isinstance(outputs, dict):
            outputs = [outputs[name] for name in names]
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        named = []
        for name, out in zip(names, outputs):
            rank = len(out.shape)
            named.append((name, out, "activation_nhwc" if rank in (3, 4, 5) else None))
        return named

    def _probe_model(self) -> tuple[Any, list[str]]:
        """A Keras model from the watched model's inputs to every layer's output (built once)."""
        if self._probe_built is None:
            import keras

            layers = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
            if self.layers is not None:  # the layers chosen by name, in the model's order
                layers = [layer for layer in layers if layer.name in self.layers]
            outputs = [layer.output for layer in layers]
            # The inputs in the structure the model was built with (a functional model's one tensor,
            # list or dict; a Sequential's one tensor), so that the probe, given as the model takes it,
            # is called without Keras's structure warning.
            inputs = getattr(self.model, "_inputs_struct", None)
            if inputs is None:
                inputs = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
            self._probe_built = (keras.Model(inputs, outputs), [lay.name for lay in layers])
        return self._probe_built


def keras_variables(model: Any) -> list[sources.Named]:
    """A Keras model's trainable variables named by path (``sequential/conv1/kernel``), in its order.

    Also on Keras's torch backend, where the model is a torch module whose
    parameters torch would name after Keras's internal tracker.
    """
    from beholder_plugin.trainer.sources import keras_variables

    layouts = keras_variables.layouts_by_variable(model)
    return [(sources.variable_name(v, i), v, layouts.get(id(v)))
            for i, v in enumerate(model.trainable_variables)]


def _loss_scale_variables(model: Any) -> tuple[Any, Any] | None:
    """A Keras model's LossScaleOptimizer's scale and step counter (torch tensors), when it has a built
    one on the torch backend; else None."""
    import keras

    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or not optimizer.built:
        return None
    scale = getattr(getattr(optimizer, "dynamic_scale", None), "value", None)
    counter = getattr(getattr(optimizer, "step_counter", None), "value", None)
    if not all(type(v).__module__.startswith("torch") for v in (scale, counter)):
        return None
    return scale, counter


def keras_gradients(variables: list[sources.Named]) -> list[sources.Named]:
    """The gradients of the last training step, where the backend keeps them (torch), by variable path.

    Keras's torch backend runs ``loss.backward()`` and leaves each gradient
    in ``variable.value.grad`` until the next step zeroes it, and the callback
    reads between steps. TensorFlow and JAX compute gradients inside the
    step and keep none: those sections say how to pass them.
    """
    named = []
    for name, variable, layout in variables:
        value = getattr(variable, "value", None)
        grad = getattr(value, "grad", None) if type(value).__module__.startswith("torch") else None
        if grad is not None:
            named.append((name, grad, layout))
        elif value is not None and type(value).__module__.startswith("torch"):
            why = "no gradient this step (the variable was not used in the loss)"
            named.append((name, Captured(tuple(variable.shape), None, error=why), None))
        else:
            named.append((name, Captured((), None, error=NO_KERAS_GRADIENTS), None))
    return named


def nnx_sections(shown: str, variables: list[sources.Named]) -> list[sources.Named]:
    """Gradient or activation sections of a Flax NNX module: empty, saying how to show them."""
    why = NO_NNX_VALUES.format(values=shown)
    if shown == "gradients":
        return [(name, Captured((), None, error=why), None) for name, _v, _l in variables]
    return [(shown, Captured((), None, error=why), None)]
