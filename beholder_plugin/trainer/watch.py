"""Beholder.watch(model): a model's weights, gradients and activations, without passing them each step.

For a torch module, gradients that the last backward pass left in ``.grad``
are read when a frame falls due, like the weights, with no hook at all.
Otherwise hooks capture what the dashboard's Values setting asks for, and
only on the step after a frame became due ("armed"): arm() installs
forward hooks on leaf modules, which copy the shown slice of each output,
or (gradients cleared before update(), or sharded) post-accumulate-grad
hooks, which note which gradients arrived so that they are copied when
the backward pass ends (DDP's averaged gradients, not local ones): whole,
into one buffer with one launch, up to GRADIENT_BUFFER_BYTES, else the shown
slice of each; or, for a model sharded with FSDP2, forward
pre-hooks that copy the shown slice of each module's weights while FSDP2 has
gathered them whole for that forward (no collective of Beholder's own; only
the rank that writes arms them). Taking the frame removes them: every other step
runs with no hook at all (a hooked module call takes PyTorch's slower path,
several percent of a small model's step). Hooks never keep a tensor alive:
they copy the compact section (or, with show_all, the whole tensor; or the
gradients into their one buffer) and drop the reference. A hook that runs
while a CUDA graph is captured (the user's ``torch.cuda.graph`` around the
training step) issues nothing at all: the step's values are not shown, the
frame says why, and the hooks catch them again at the next step that runs
eagerly (a graph's replays run no hook).

A Keras model or a Flax NNX module needs no hooks: watch_keras.py says what
is shown of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from beholder_plugin.protocol.filters import SectionFilter
from beholder_plugin.protocol.layout import FRAME_WIDTH, MAX_PROPORTIONAL_HEIGHT, SECTION_HEIGHT, RenderError
from beholder_plugin.protocol.plans import KeptPlans, fit_heights
from beholder_plugin.trainer import compiled, exact_pass, sources
from beholder_plugin.trainer.exact_pass import HOST_EXACT_VALUES
from beholder_plugin.trainer.sources import torch_batch, torch_capture, torch_modules
from beholder_plugin.trainer.sources.captured import Captured, scale_values
from beholder_plugin.trainer.watch_keras import KerasWatch, nnx_sections

logger = logging.getLogger("beholder")

# A watched torch module's parameter list is walked again at most this often (seconds).
VARIABLES_REFRESH_SECONDS = 2.0

CAPTURED_VALUES = ("gradients", "activations")

# Gradients caught by hooks (the step's .grad gone by update(), as Hugging Face's Trainer clears them) are
# copied whole into one buffer at the end of the backward pass (one launch) and gathered from it by the
# frame as one batch (a CUDA graph: the buffer stays where it is), when together they take at most this
# many bytes on one device; larger ones are each sliced as before, so that no setting keeps gigabytes.
GRADIENT_BUFFER_BYTES = 256 * 2**20
NO_LAYER_RAN = ("no layer ran with its hook in the step after the frame fell due: was the model called? "
                "(A torch.compile'd model traced before the hooks were armed runs without them until a "
                "training step changes its parameters; it is then compiled again, once.)")


# the hooks ran only inside a CUDA graph's capture, or not at all (the graph replayed)
IN_CUDA_GRAPH = ("the step after the frame fell due ran in a CUDA graph (the training step captured with "
                 "torch.cuda.graph or make_graphed_callables): its capture and its replays run no Python "
                 "hook, so {values} are shown only from steps that run eagerly{more}")
IN_CUDA_GRAPH_GRADIENTS = " (or from .grad, when update() comes before the gradients are cleared)"

# a gradient that arrived in the backward pass and was freed before it ended
FREED_IN_BACKWARD = ("the gradient was freed during the backward pass (an optimizer stepped in a "
                     "post-accumulate-grad hook?): none to show")


class OnDevices:
    """A scalar tensor (a loss scaler's inverse scale) and its copies on other devices, each made once,
    device to device without a host sync: a model split over GPUs has gradients on each, and a kernel
    takes a 0-d tensor of another GPU for no operand."""

    def __init__(self, value: Any) -> None:
        self._copies = {value.device: value}
        self._value = value

    @classmethod
    def inverse_of(cls, scale: Any) -> OnDevices:
        """A loss scale's inverse as torch's GradScaler.unscale_() computes it (in float64, then float32)."""
        return cls(scale.double().reciprocal().float())

    def on(self, device: Any) -> Any:
        """The value on this device."""
        found = self._copies.get(device)
        if found is None:
            found = self._copies[device] = self._value.to(device, non_blocking=True)
        return found


class BufferedGradient(NamedTuple):
    """A gradient's copy in the hooked gradients' one buffer (GRADIENT_BUFFER_BYTES), and its layout."""

    tensor: Any
    layout: str | None


def _check_chosen(chosen: list[Any], names: list[str], kind: str) -> None:
    """Refuse layer names in watch(activations=[...]) that the model does not have, saying which it has."""
    known = set(names)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        names = list(dict.fromkeys(names))
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise ValueError(f"watch(activations=...): the model has no {kind} named "
                         f"{', '.join(map(repr, unknown))}; its {kind}s are: {shown or 'none'}")


class WatchHandle:
    """Removes a watch's hooks: ``handle.remove()``, or use it as a context manager."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove = remove

    def remove(self) -> None:
        """Remove the hooks (again: nothing happens)."""
        self._remove()

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class Watch:
    """What watch(model) installed: the model, its hooks, and what they captured on an armed step."""

    def __init__(
        self,
        model: Any,
        activations: bool | list[str] = True,
        gradients: bool = True,
        probe: Any = None,
        strict: bool = False,
    ) -> None:
        if not isinstance(activations, (bool, list, tuple, set)):
            one = f" (one name: [{activations!r}])" if isinstance(activations, str) else ""
            raise TypeError(f"watch(activations=...) takes True, False or a list of layer names; got "
                            f"{activations!r}{one}")
        self.model = compiled.unwrap(model) if sources.is_torch_module(model) else model
        self.strict = strict
        self.probe = probe
        self.closed = False  # close() removed its hooks
        self.armed: str | None = None  # the Values choice the hooks capture now ("gradients", ...)
        # torch gradients at hand in .grad are read at once (False: always caught by the hooks, as the
        # backward pass leaves them; the Hugging Face callback, whose update() comes after clipping)
        self.read_gradients = True
        # update() comes before the optimizer step (the Hugging Face callback): a frame of the weights read
        # then shows those of the step before the update's, and is stamped so
        self.update_before_step = False
        # the loop's torch GradScaler (fp16 AMP; watch(grad_scaler=...), the callbacks pass theirs): the
        # gradients the hooks catch are unscaled as its unscale_() does, its overflows are no anomalies
        self.grad_scaler: Any = None
        self.show_all = False
        self.sizing = "fixed"
        self.pattern: SectionFilter | None = None
        self.height_cap: int | None = None  # the sections' height cap the hooks cut for (_height_cap)
        self.captured: dict[str, Captured] = {}
        # a hook ran inside a CUDA graph's capture (and did nothing): from then on, a step whose hooks
        # caught nothing is taken for the graph's replay; said once (in the log, and in each such frame)
        self.graph_seen = False
        self._graph_noted = False
        self._handles: list[Any] = []
        self._arrived: dict[str, tuple[Any, str | None]] = {}  # this backward pass's, not final yet
        self._queued: int | None = None  # the backward pass (its id) whose end copies what arrived
        self._hooked_grads: dict[str, tuple[Any, str | None]] = {}  # the parameters the hooks watch
        # the whole norms of the gradients the hooks caught, taken when the last backward pass ended
        # (before the loop could clip them; accumulating, its gradients are the step's): (names, float32
        # vector) per device; gradient_norms: those of the gradients the last take() handed out, for the
        # timeline's exact pass (None: read from .grad)
        self._arrived_norms: list[tuple[list[str], Any]] = []
        self.gradient_norms: list[tuple[list[str], Any]] | None = None
        self._gradient_credit = 0  # values of CPU gradients whose whole norms may be taken
        # (shape, layout, sizing) -> the checked layout, the plan, the statistics' runs and sample size
        self._plans = KeptPlans(torch_capture.MAX_PLANS)
        self._variables: list[sources.Named] | None = None  # a torch module's, walked at self._variables_at
        self._variables_at = float("-inf")
        self._structure = -1  # torch_modules.structure_version() when they were walked
        self._layers: tuple[int, list[tuple[str, Any]]] | None = None  # (structure, the hooked layers)
        if sources.is_keras_layer(model):  # first: on Keras's torch backend a model is a torch module too
            self.framework = "keras"
            layers = list(activations) if isinstance(activations, (list, tuple, set)) else None
            if layers is not None:
                _check_chosen(layers, [layer.name for layer in getattr(model, "layers", [])], "layer")
            self._keras = KerasWatch(model, probe, layers)
        elif sources.is_torch_module(model):
            self.framework = "torch"
            # Hooks are installed by arm() for the step after a frame fell due and removed when the
            # frame takes what they captured: every other step runs with no hook at all.
            self._hook_choice = (activations, gradients)
            if isinstance(activations, (list, tuple, set)):  # (a compiled submodule's: either name)
                paths = [path for path, _ in self.model.named_modules() if path]
                names = paths + [compiled.layer_name(path) for path in paths]
                _check_chosen(list(activations), names, "module")
            self.sharded = any(torch_modules.sharded(param) for param in model.parameters())
            # A compiled model's activation hooks stay installed (compiled.py says why), from watch()
            # on when it is compiled already, or from the moment dynamo starts compiling anything.
            self.compiled = compiled.is_compiled(model)
            self._kept: dict[str, Any] = {}  # a compiled graph's layer outputs on the armed step
            self._gradient_buffer = torch_batch.FlatCopies()  # hooked gradients' copies (_copy_to_buffer)
            self._kept_handles: list[Any] = []
            self._versions = 0  # the parameters' version counters when armed: did a step run since?
            self._version_params: list[Any] = []  # the parameters they were read from
            self._norm_credit = 0  # values of CPU activations whose whole norm may still be taken
            self._ran = False  # whether a hook ran since armed (the uncompiled model's hooks)
            # the hooked layers that have parameters: their version counters' sums when armed
            self._layer_versions: dict[str, tuple[Any, int]] = {}
            self._recompiled = False
            self._stop_listening: Callable[[], None] | None = None
            self._listen()
            if self.compiled and activations:
                self._keep_hooks()
        elif sources.is_nnx_module(model):
            self.framework = "nnx"  # weights only: nnx.state(model, nnx.Param), named by path
        else:
            raise TypeError(
                "watch() takes a torch.nn.Module, a Keras model or a Flax NNX module, not "
                f"{type(model).__name__}; for other arrays pass update(arrays=...)"
            )

    def read_through(self, get_model: Callable[[], Any]) -> None:
        """For a Keras model: call get_model() before each read of it (BeholderCallback passes its
        Callback.model, which on JAX writes fit()'s state back into the model's variables)."""
        if self.framework == "keras":
            self._keras.sync = get_model

    # ------------------------------------------------------------ the training thread

    def variables(self) -> list[sources.Named]:
        """The model's trainable variables, named by path, with their layouts.

        A torch module's list is walked again when a module anywhere got a
        layer or parameter (added or replaced), else at most every
        VARIABLES_REFRESH_SECONDS (ResNet-50's 161 parameters take 1-3 ms to
        walk): layers frozen or unfrozen show within that time. A walk that
        finds what the last one found hands back the same list (the frame's
        memos know it by identity).
        """
        if self.framework == "keras":
            return self._keras.variables()
        now = time.monotonic()
        structure = torch_modules.structure_version() if self.framework == "torch" else 0
        if (self._variables is not None and now - self._variables_at < VARIABLES_REFRESH_SECONDS
                and structure == self._structure):
            return self._variables
        named = sources.named_variables(self.model)
        if self.framework == "torch":
            if self.compiled:  # a compiled submodule's parameters: no "_orig_mod."
                named = [(compiled.layer_name(name), var, layout) for name, var, layout in named]
            if any(torch_modules.sharded(param) for _, param, _ in named):
                self.sharded = True  # sharded after watch(): from the next frame on, weights come from hooks
            old = self._variables
            if old is not None and len(old) == len(named) and all(
                    a[1] is b[1] and a[0] == b[0] and a[2] == b[2] for a, b in zip(old, named)):
                named = old  # the same list when nothing changed: a frame knows it at once by identity
            # (none yet, a model of Lazy layers before its first forward: walked again at the next frame)
            self._variables, self._structure = named, structure
            self._variables_at = now if named else -math.inf
        return named

    def loss_scaled(self) -> bool:
        """Whether a loss scaler at work scales the gradients (their non-finite values are its overflows)."""
        if self.framework == "keras":
            return self._keras.loss_scaled()
        return self.grad_scaler is not None and bool(self.grad_scaler.is_enabled())

    def needs_capture(self, shown: str) -> bool:
        """Whether the shown values (a Values choice) come from hooks during the next step.

        Torch gradients and activations; and the weights of a model whose
        parameters are sharded (FSDP2), which are whole only inside forward.
        """
        if self.framework != "torch":
            return False
        return shown in CAPTURED_VALUES or (shown == "trainable_variables" and self.sharded)

    def reads_now(self, shown: str) -> bool:
        """Whether the shown values can be read as they are now, so that no hook runs on the coming step.

        A torch model's gradients, when the last backward pass left them in
        ``.grad`` (update() called before ``zero_grad``): the frame reads them
        at once, like the weights. Otherwise (gradients set to None before
        update(), as Hugging Face's Trainer does; sharded FSDP2 gradients) the
        hooks catch them during the next backward pass.
        """
        if self.framework != "torch" or shown != "gradients" or self.sharded or not self.read_gradients:
            return False
        return any(param.grad is not None for _, param, _ in self.variables())

    def arm(
        self, shown: str, show_all: bool, sizing: str = "fixed", pattern: SectionFilter | None = None
    ) -> None:
        """Have the hooks capture the shown values during the coming step (only sections the filter keeps)."""
        self.captured = {}
        self.show_all = show_all
        self.sizing = sizing
        self.pattern = pattern
        if self.framework == "torch":
            self._rehook(shown)
            self.height_cap = self._height_cap(shown)
            self._kept.clear()
            if shown != "gradients":
                self._gradient_buffer.clear()  # (up to GRADIENT_BUFFER_BYTES, let go)
            if shown == "activations":
                self._norm_credit = min(self._norm_credit + HOST_EXACT_VALUES, 64 * HOST_EXACT_VALUES)
                self._version_params = [param for _, param, _ in self.variables()]
                self._versions, self._ran = torch_modules.version_sum(self._version_params), False
                self._layer_versions = self._hooked_layer_versions()
                self._listen()  # (torch.compile may have been called since watch())
        self.armed = shown

    @property
    def kept(self) -> dict[str, Any]:
        """A compiled torch model's layer outputs kept by its graph on the armed step ({} when none)."""
        return self._kept if self.framework == "torch" else {}

    @property
    def hooked(self) -> bool:
        """Whether hooks are installed now (or, for a compiled model, whether its hooks are armed)."""
        return bool(self._handles) or (self.framework == "torch" and self.compiled and self.armed is not None)

    def ready(self, shown: str) -> bool:
        """Whether the hooks captured the shown values since they were armed."""
        return self.armed == shown and bool(self.captured)

    def take(self, shown: str, pattern: SectionFilter | None = None, show_all: bool = False,
             sizing: str = "fixed") -> list[sources.Named]:
        """The sections of a frame whose values the hooks captured (then they rest until armed again);
        a Keras model's (``show_all`` and ``sizing``: the frame's, for gradients a loss scaler scaled)."""
        if self.framework == "keras":
            named = self._keras.sections(shown)
            self.gradient_norms = None
            if shown == "gradients":
                self.show_all, self.sizing, self.pattern = show_all, sizing, pattern
                named = self._unscaled_keras_gradients(named)
            return named
        if self.framework == "nnx":
            return nnx_sections(shown, self.variables())
        if shown == "activations":
            return self._take_activations()
        captured, at_hand = self.captured, self.armed != shown and not self.sharded and self.read_gradients
        norms = self._arrived_norms
        self.remove()  # the hooks did their step's work: training runs without them until the next frame
        self.gradient_norms = norms if shown == "gradients" and not at_hand else None
        if shown == "trainable_variables":  # sharded weights, copied whole inside forward
            return [(name, captured[name], None) if name in captured else (name, param, layout)
                    for name, param, layout in self.variables()
                    if pattern is None or pattern.search(name)]
        if shown == "gradients":
            named = []
            for name, param, layout in self.variables():
                if pattern is not None and not pattern.search(name):
                    continue
                got = param.grad if at_hand else captured.get(name)  # not armed: .grad as it is now
                if at_hand and got is not None:
                    named.append((name, got, layout))
                    continue
                if type(got) is BufferedGradient:  # copied whole when the backward pass ended: one batch
                    named.append((name, got.tensor, got.layout))
                    continue
                if got is None:
                    if not param.requires_grad:
                        why = "no gradient this step (the parameter is frozen: requires_grad=False)"
                    elif self.graph_seen and not captured and not at_hand:  # (in a CUDA graph: no hook ran)
                        why = self._graph_notice("gradients")
                    else:
                        why = "no gradient this step (the parameter was not used in the loss)"
                    got = Captured(tuple(param.shape), None, error=why)
                named.append((name, got, None))
            return named
        return [(name, got, None) for name, got in captured.items()]

    def _graph_notice(self, values: str) -> str:
        """Why a frame shows none of these values: the step ran in a CUDA graph (logged once)."""
        more = IN_CUDA_GRAPH_GRADIENTS if values == "gradients" else ""
        why = IN_CUDA_GRAPH.format(values=values, more=more)
        if not self._graph_noted:
            self._graph_noted = True
            logger.warning("Beholder: %s", why)
        return why

    def _unscaled_keras_gradients(self, named: list[sources.Named]) -> list[sources.Named]:
        """A Keras model's gradients as its LossScaleOptimizer unscales them, when it has one (torch
        backend): the shown slices copied and divided by the step's loss scale, their whole norms taken
        for the timeline likewise; the sections themselves without one. No host sync."""
        tensors = [t for _, t, _ in named if type(t) is not Captured]
        try:
            scale = self._keras.loss_scale(tensors)
            if scale is None:
                return named
            inverse = OnDevices.inverse_of(scale)
        except Exception:
            if self.strict:
                raise
            return named
        out: list[sources.Named] = []
        kept: list[tuple[str, Any]] = []  # the gradients copied (the filter's), for their norms
        for name, t, layout in named:
            if type(t) is not Captured:
                self._capture_gradient(name, t, layout, inverse)
                got = self.captured.pop(name, None)  # (None: filtered out, left as it is)
                if got is not None:
                    kept.append((name, t))
                    out.append((name, got, None))
                    continue
            out.append((name, t, layout))
        try:
            if kept:
                norms = exact_pass.whole_norms([t for _, t in kept])
                norms = norms * inverse.on(norms.device)
                self.gradient_norms = [([name for name, _ in kept], norms)]
        except Exception:
            if self.strict:
                raise
        return out

    def remove(self) -> None:
        """Remove the step's hooks and drop what was captured (arm() installs what the next frame needs).

        A compiled model's activation hooks stay, disarmed: close() removes them.
        """
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.captured = {}
        self._arrived = {}
        self._queued = None  # (a pass that raised never reached its end)
        self._arrived_norms = []
        self.armed = None
        if self.framework == "torch":
            self._kept.clear()

    def close(self) -> None:
        """Remove every hook, a compiled model's too, and stop listening for compilations."""
        self.closed = True
        self.remove()
        if self.framework != "torch":
            return
        for handle in self._kept_handles:
            handle.remove()
        self._kept_handles = []
        self._gradient_buffer.clear()
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None

    # ------------------------------------------------------------ torch hooks

    def _rehook(self, shown: str) -> None:
        """Install the hooks the shown values need, for the model as it is now (removing older ones)."""

        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._hooked_grads = {}
        activations, gradients = self._hook_choice
        if shown == "gradients" and gradients:
            # the list take() reads too; walked again when a module got a layer or parameter (a frozen or
            # unfrozen one within VARIABLES_REFRESH_SECONDS: a walk of ResNet-50 costs 1-2 ms a frame)
            for name, param, layout in self.variables():
                if param.requires_grad and hasattr(param, "register_post_accumulate_grad_hook"):
                    hook = self._grad_hook(name, layout)
                    self._handles.append(param.register_post_accumulate_grad_hook(hook))
                    self._hooked_grads[name] = (param, layout)
        if shown == "trainable_variables":
            for path, module in self.model.named_modules():
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    self._handles.append(module.register_forward_pre_hook(self._weights_hook(path)))
        if shown == "activations" and activations and self.compiled:
            self._keep_hooks()  # installed for good (once): a compiled graph calls those it was traced with
        elif shown == "activations" and activations:
            for path, module in self._layers_hooked(activations):
                self._handles.append(module.register_forward_hook(self._activation_hook(path, module)))

    def _layers_hooked(self, activations: bool | list[str]) -> list[tuple[str, Any]]:
        """(path, module) of the layers whose outputs are shown: the leaves, or the paths asked for;
        walked again only when a module got a layer or parameter since."""
        structure = torch_modules.structure_version()
        if self._layers is None or self._layers[0] != structure:
            chosen = set(activations) if isinstance(activations, (list, tuple, set)) else None
            self._layers = (structure, [
                (path, module) for path, module in self.model.named_modules()
                if (chosen is None and path and not any(True for _ in module.children()))
                or (chosen is not None and path in chosen)])
        return self._layers[1]

    def _weights_hook(self, path: str) -> Callable:
        """A forward pre-hook copying the shown slice of a module's own parameters.

        FSDP2 gathers a sharded module's parameters whole just before its
        forward (on every rank, for training's own sake) and shards them
        again after it: a hook that runs then reads the whole parameter with
        no collective of its own, on the one rank that writes.
        """
        def hook(module: Any, args: Any) -> None:
            if self.armed != "trainable_variables":
                return
            for name, param in module.named_parameters(recurse=False):
                full = f"{path}.{name}" if path else name
                if not param.requires_grad or full in self.captured:
                    continue
                layout = torch_modules.parameter_layout(module, name, param)
                # Still sharded here (not an FSDP2 module): this rank's part, never a collective.
                self._capture(full, param.to_local() if torch_modules.sharded(param) else param, layout)

        return hook

    def _grad_hook(self, name: str, layout: str | None) -> Callable:
        def hook(param: Any) -> None:
            if self.armed != "gradients":
                return
            if torch_batch.capturing(param):  # a CUDA graph's capture: nothing noted, nothing queued
                self.graph_seen = True
                return
            queue = torch_modules.end_of_backward_queue()
            if queue is None:  # no autograd callbacks: take the gradient as it is now
                self._capture_gradient(name, param.grad, layout, self._inverse_scale())
                return
            task = torch_modules.backward_pass_id()
            if self._queued is None or self._queued != task:  # (the first hook of this backward pass)
                if self._queued is not None:  # a pass that failed before its end: what arrived is stale
                    self._arrived = {}
                self._queued = task
                queue(lambda: queue(self._after_backward))  # twice: after DDP's own end-of-backward work
            self._arrived[name] = (param, layout)

        return hook

    def _after_backward(self) -> None:
        """Copy the gradients that arrived in this backward pass, now that they are final.

        Data-parallel wrappers (DDP) average the gradients in callbacks at the
        end of the backward pass, after the per-parameter hooks ran; reading
        them here shows what the optimizer will use.
        """
        arrived, self._arrived, self._queued = self._arrived, {}, None
        if not arrived:  # (queued twice: hooks on two GPUs' autograd threads both saw none queued)
            return
        for name, (param, layout) in self._hooked_grads.items():
            # DDP (find_unused_parameters) writes the averaged gradient of a parameter this rank did not
            # use, and no hook runs for it: it was cleared before this step, so a gradient is this step's
            if name not in arrived and param.grad is not None:
                arrived[name] = (param, layout)
        # an earlier pass's norms of these gradients are partial sums (accumulating): dropped; those of
        # other gradients (an ensemble's other members) stay
        self._arrived_norms = [(names, norms) for names, norms in self._arrived_norms
                               if arrived.keys().isdisjoint(names)]
        inverse = self._inverse_scale()
        if self._copy_to_buffer(arrived, inverse):
            return
        for name, (param, layout) in arrived.items():
            if param.grad is None:  # it arrived, and is gone already
                if self.pattern is None or self.pattern.search(name):
                    self.captured[name] = Captured(tuple(param.shape), None, error=FREED_IN_BACKWARD)
                continue
            self._capture_gradient(name, param.grad, layout, inverse)
        self._take_gradient_norms(arrived, inverse)

    def _inverse_scale(self) -> OnDevices | None:
        """The loss scaler's inverse scale as its unscale_() computes it (a float32 tensor on its device,
        and copies on the gradients' other devices; no host sync), or None with no scaler at work."""
        scaler = self.grad_scaler
        scale = getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None
        if scale is None:
            return None
        try:
            return OnDevices.inverse_of(scale)
        except Exception:
            if self.strict:
                raise
            return None

    def _capture_gradient(self, name: str, grad: Any, layout: str | None, inverse: OnDevices | None) -> None:
        """Copy a gradient's shown slice, unscaled by ``inverse`` when a loss scaler scaled it."""
        got = self._capture(name, grad, layout)
        if got is not None and got.error is None and inverse is not None:
            try:
                scale_values(got, inverse.on(grad.device))
            except Exception as exc:
                if self.strict:
                    raise
                self.captured[name] = Captured((), None, error=f"{type(exc).__name__}: {exc}")

    def _take_gradient_norms(self, arrived: dict[str, tuple[Any, str | None]],
                             inverse: OnDevices | None = None) -> None:
        """Take the arrived gradients' whole L2 norms for the timeline now, before the loop can clip them
        in place: one fused pass per device, left there; on the host within a credit of HOST_EXACT_VALUES
        a frame (the exact pass's budget: a big model's every few frames). Times ``inverse``, the loss
        scaler's inverse scale, when there is one."""
        try:
            by_device: dict[Any, tuple[list[str], list[Any]]] = {}
            for name, (param, _) in arrived.items():
                grad = param.grad
                if (self.pattern is None or self.pattern.search(name)) and exact_pass.readable(grad):
                    names, grads = by_device.setdefault(grad.device, ([], []))
                    names.append(name)
                    grads.append(grad)
            for names, grads in by_device.values():
                if torch_batch.batch_device(grads[0]) is None:  # read on the host
                    count = sum(grad.numel() for grad in grads)
                    covered, credit = exact_pass.spend_host_budget(self._gradient_credit, count)
                    self._gradient_credit = credit
                    if not covered:
                        continue  # the records keep the sample's norms
                norms = exact_pass.whole_norms(grads)
                if inverse is not None:
                    norms = norms * inverse.on(norms.device)
                self._arrived_norms.append((names, norms))
        except Exception:
            if self.strict:
                raise
            self._arrived_norms = []  # (the frame's records keep the sample's or .grad's norms)

    def _copy_to_buffer(self, arrived: dict[str, tuple[Any, str | None]],
                        inverse: OnDevices | None = None) -> bool:
        """Copy the arrived gradients whole into one buffer for take() with one launch (not a slice
        launched per gradient), and take their norms, when they are plain dense tensors of one dtype on
        one batch device within GRADIENT_BUFFER_BYTES; False: slice each now. Copied now, as slices
        are: what the frame shows is the gradient as the backward pass left it (before clipping in
        place), unscaled by ``inverse`` (the loss scaler's inverse scale) when given."""
        grads = [(name, param.grad, layout) for name, (param, layout) in arrived.items()
                 if self.pattern is None or self.pattern.search(name)]
        if not grads or self.show_all:
            return False
        buffer = self._gradient_buffer
        names = {name for name, _, _ in grads}
        if any(type(got) is BufferedGradient and name not in names and buffer.holds(got.tensor)
               for name, got in self.captured.items()):
            # an earlier backward pass of this step copied other gradients there (an ensemble's members,
            # a GAN's two halves: alike shapes): this pass gets a buffer of its own, theirs stays theirs
            buffer.clear()
        try:  # (at the end of the user's backward(): nothing may escape into it)
            copies = buffer.copy([grad for _, grad, _ in grads], GRADIENT_BUFFER_BYTES,
                                                inverse and inverse.on(grads[0][1].device))
        except Exception:  # (out of memory for the buffer, say): each is sliced on its own instead
            if self.strict:
                raise
            buffer.clear()
            return False
        if copies is None:
            return False
        for (name, _, layout), copy in zip(grads, copies):
            self.captured[name] = BufferedGradient(copy, layout)
        try:  # their norms for the timeline, from the copies (dense, one dtype: one fused pass)
            self._arrived_norms.append(([name for name, _, _ in grads], exact_pass.whole_norms(copies, True)))
        except Exception:
            if self.strict:
                raise
        return True

    def _activation_hook(self, name: str, module: Any) -> Callable:
        def hook(mod: Any, inputs: Any, output: Any) -> None:
            if self.armed != "activations":
                return
            self._ran = True
            tensor = torch_modules.first_tensor(output)
            if tensor is None:
                return
            self._capture_activation(name, tensor, module)

        return hook

    def _keep_hooks(self) -> None:
        """Install a compiled model's activation hooks, once: they stay until close()."""
        if self._kept_handles:
            return
        compiled.prepare_keep()  # registered now, not while dynamo traces a hook
        activations = self._hook_choice[0]
        chosen = set(activations) if isinstance(activations, (list, tuple, set)) else None
        for path, module in self.model.named_modules():
            name = compiled.layer_name(path)
            if type(module).__name__ == "OptimizedModule":
                continue  # a compiled submodule's wrapper: its _orig_mod is hooked, under the same name
            leaf = not any(True for _ in module.children())
            if (chosen is None and leaf and name) or (chosen is not None and {name, path} & chosen):
                self._kept_handles.append(module.register_forward_hook(self._keeping_hook(name, module)))

    def _keeping_hook(self, name: str, module: Any) -> Callable:
        """A compiled model's forward hook: on the armed step, keep a copy of the layer's output.

        Inside a compiled graph the copy is one more output of the graph
        (the graph for the armed state; the other state's graph has none; see
        compiled.keep for why the copy is not a clone()),
        taken when the layer ran, before any in-place operation after it
        (an in-place ReLU, a residual ``+=``) changes it. The shown slice is
        cut from it outside the graph, when the frame is taken. Run
        eagerly (a module that dynamo left out of the graph), the hook cuts
        it at once, as an uncompiled model's does, in code dynamo is told
        not to trace.
        """
        @compiled.untraced
        def capture(tensor: Any) -> None:
            self._capture_activation(name, tensor, module)

        def hook(mod: Any, inputs: Any, output: Any) -> None:
            if self.armed != "activations":
                return
            tensor = torch_modules.first_tensor(output)
            if tensor is None:
                return
            if compiled.compiling():
                self._kept[name] = compiled.keep(tensor)
            else:
                self._kept[name] = None  # cut already; noted here to keep the layers in the order they ran
                capture(tensor)

        return hook

    def _take_activations(self) -> list[sources.Named]:
        """A torch model's activation sections, in the order its layers ran.

        A compiled model's are cut now from the outputs its graph kept. When
        a training step ran (the parameters changed) but no hook did, the
        model runs a compiled graph traced before the hooks were installed:
        from then on they stay installed, and dynamo recompiles it once.
        """
        kept = dict(self._kept)
        if kept:
            modules = {compiled.layer_name(path): module for path, module in self.model.named_modules()}
            for name, tensor in kept.items():
                if tensor is not None:  # (None: cut already, by a hook that ran eagerly)
                    self._capture_activation(name, tensor, modules[name])
            captured = {name: self.captured[name] for name in kept if name in self.captured}
        else:
            captured = self.captured
        # (a step in a CUDA graph runs no hook either, and no compiled graph is to blame)
        bypassed = not (kept or self._ran or self.graph_seen) and (
            torch_modules.version_sum(self._version_params) != self._versions)
        # some layers' hooks ran and others' not, though their parameters were stepped: a graph break
        # left part of the model in a graph compiled before the hooks
        partial = (bool(captured) and not bypassed and compiled.graphs_compiled()
                   and bool(self._stale_layers(captured)))
        self.remove()
        if (bypassed or partial) and self._hook_choice[0] and not self._recompiled:
            self._recompiled = self.compiled = True
            self._keep_hooks()
            compiled.recompile(partial)
            if not captured:
                return [("activations", Captured((), None, error=compiled.RECOMPILED), None)]
        if captured:
            return [(name, got, None) for name, got in captured.items()]
        if self.graph_seen:  # the hooks ran in a CUDA graph's capture, or the graph replayed
            return [("activations", Captured((), None, error=self._graph_notice("activations")), None)]
        return [("activations", Captured((), None, error=NO_LAYER_RAN), None)]  # a section that says why

    def _height_cap(self, shown: str) -> int | None:
        """The height the hooks cut their sections to when so many could not all be 128 px tall in one
        frame (gather.fit_heights, from the most there can be: hooked layers, or trainable parameters;
        none with show_all, whose sections are cut later); the frame keeps the same cap."""
        if self.show_all:
            return None
        count = len(self._layers_hooked(self._hook_choice[0])) if shown == "activations" \
            else len(self.variables())
        tallest = MAX_PROPORTIONAL_HEIGHT if self.sizing == "proportional" else SECTION_HEIGHT
        try:
            return fit_heights([tallest] * count, FRAME_WIDTH)
        except RenderError:  # (too many for one frame at all: the frame says so)
            return None

    def _hooked_layer_versions(self) -> dict[str, tuple[Any, int]]:
        """Each hooked layer that has parameters of its own: (them, their version counters' sum)."""
        found = {}
        for path, module in self._layers_hooked(self._hook_choice[0]):
            if self.pattern is not None and not self.pattern.search(path):
                continue  # (hidden by the dashboard's filter: never captured)
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]  # (frozen ones
            if params:  # may be inference tensors, which keep no version counter)
                found[path] = (params, torch_modules.version_sum(params))
        return found

    def _stale_layers(self, captured: dict[str, Any]) -> list[str]:
        """The hooked layers whose parameters a step changed since the hooks were armed but whose hook
        did not run: the layer ran in a compiled graph traced without it."""
        return [path for path, (params, versions) in self._layer_versions.items()
                if path not in captured and compiled.layer_name(path) not in captured
                and torch_modules.version_sum(params) != versions]

    def _listen(self) -> None:
        """Once dynamo is loaded, have it say when it compiles, and guard on hooks (see compiled.listen)."""
        if self._stop_listening is None and self._hook_choice[0] and compiled.dynamo_loaded():
            self._stop_listening = compiled.listen(self._compile_started)

    def _compile_started(self) -> None:
        """Dynamo is about to compile: from now on the activation hooks stay installed, so it sees them."""
        if not self.compiled:
            self.compiled = True
            logger.debug("Beholder: torch.compile in use, the activation hooks stay installed")
        if self.armed == "activations":  # this step's own hooks give way to the ones that stay
            for handle in self._handles:
                handle.remove()
            self._handles = []
        self._keep_hooks()

    def _capture_activation(self, name: str, tensor: Any, module: Any) -> None:
        """Capture a layer's output, and its whole L2 norm for the timeline (exact_pass.py reads it)."""
        got = self._capture(name, tensor, torch_modules.activation_layout(module, tensor.dim()))
        if got is not None and got.error is None:
            # (a whole copy, show_all, may be on a device too: whole_norm then asks where it lies)
            got.norm, self._norm_credit = torch_modules.whole_norm(tensor, self._norm_credit,
                                                                   on_device=got.part is not None or None)

    def _capture(self, name: str, tensor: Any, layout: str | None) -> Captured | None:
        """Copy the shown slice of a tensor (never raises into forward or backward unless strict); what
        was captured (None: filtered out, or handed over inside a CUDA graph's capture)."""
        if self.pattern is not None and not self.pattern.search(name):
            return None  # filtered out in the dashboard: nothing is copied
        if torch_batch.capturing(tensor):  # a CUDA graph's capture: nothing issued (no upload, no copy)
            self.graph_seen = True
            return None
        try:
            got = torch_capture.copy_shown(name, tensor, layout, self.show_all, self.sizing, self._plans,
                                           self.height_cap)
        except Exception as exc:
            if self.strict:
                raise
            got = Captured((), None, error=f"{type(exc).__name__}: {exc}")
        self.captured[name] = got
        return got
