"""BeholderCallback on Keras's JAX and torch backends, in a subprocess (the backend is chosen at import).

With ``BEHOLDER_BATCH_CPU_TENSORS=1`` the variables' values go through the
device batch of their framework (sources.jax_batch, sources.torch_batch), as
they do on a GPU: the accelerator issue's "Keras on the torch and JAX
backends go through the batched paths", checked on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import run_script
from tf_support_helpers import PYTHON_ENV

pytest.importorskip("keras")

FIT = """
import sys, threading
import numpy as np
import keras
from beholder_plugin import BeholderCallback, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import read_frame_file

run, one_step_run = sys.argv[1], sys.argv[2]
for r in (run, one_step_run):
    write_config(r, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current"})
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                          keras.layers.Flatten(), keras.layers.Dense(3, name="dense")])
model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
threads = set()

class Spy(BeholderCallback):
    def on_train_batch_end(self, batch, logs=None):
        threads.add(threading.current_thread() is threading.main_thread())
        if batch % 16 == 0:  # a frame falls due here, whatever the machine's speed (a fast one fits
            self.beholder.flush()  # all 128 steps in 30 ms, within one frame interval at FPS 30)
            self.beholder.frame_due_now()
        super().on_train_batch_end(batch, logs)

x = np.random.default_rng(0).normal(size=(512, 8, 8, 1)).astype("float32")
y = np.arange(512) % 3
if len(sys.argv) > 3:  # batched: compile the jitted gather first (in the background, waited for), so
    # that the runs below find it compiled and take frames from their first step, however slow the machine
    write_config(sys.argv[3], {**DEFAULT_CONFIG, "FPS": 30, "mode": "current"})
    warm = BeholderCallback(sys.argv[3], strict=True)
    model.fit(x[:64], y[:64], batch_size=8, epochs=1, verbose=0, callbacks=[warm])
    assert warm.beholder.gatherer.wait_compiled(120), "the device gather did not compile in 2 minutes"
callback = Spy(run, strict=True)
model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
names = [s["name"] for s in read_frame_file(run).sections]
# which device batches gathered the frames (none: the host path)
batches = sorted({type(g).__module__.rsplit(".", 1)[-1] for g in callback.beholder.gatherer.device_gathers})
print(keras.backend.backend(), sorted(threads), callback.beholder.frames_written, callback.beholder.failures,
      names == [v.path for v in model.trainable_variables], ",".join(batches) or "-")

# one more step, alone: its frame (the first update() is always due; batched, its gather is the one
# compiled before the fit above) shows the weights after it
one = BeholderCallback(one_step_run, strict=True)
model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, callbacks=[one])
frame = read_frame_file(one_step_run)
weights = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables}
rng = np.random.default_rng(0)
hits = wrong = 0
for _ in range(300):
    px, py = int(rng.integers(frame.width)), int(rng.integers(frame.height))
    where = locate(frame.sections, frame.width, px, py)
    if where is not None:
        hits += 1
        wrong += frame.values[where["offset"]] != weights[where["name"]][tuple(where["index"])]
print(one.beholder.frames_written, one.beholder.failures, hits, wrong)
"""


@pytest.mark.parametrize("batched", ["0", "1"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_callback_works_on_the_jax_and_torch_backends(tmp_path, backend, batched):
    """Keras dispatches the async_safe hook to a pool on both; frames arrive, whole and correct. With
    ``batched`` the variables go through their framework's device batch, as on a GPU."""
    pytest.importorskip(backend)
    env = dict(os.environ, **PYTHON_ENV, KERAS_BACKEND=backend, BEHOLDER_BATCH_CPU_TENSORS=batched)
    runs = [str(tmp_path / name) for name in ("run", "one-step", "warm")[: 3 if batched == "1" else 2]]
    out = subprocess.run([sys.executable, "-c", FIT, *runs], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = out.stdout.strip().splitlines()[-2:]
    shown_backend, on_main, frames, failures, named, batches = first.split(" ", 5)
    assert shown_backend == backend and on_main == "[False]"  # the hooks ran on a Keras worker thread
    assert int(frames) >= 2 and failures == "0" and named == "True"
    assert batches == ({"jax": "jax_batch", "torch": "torch_batch"}[backend] if batched == "1" else "-")
    frames, failures, hits, wrong = second.split()
    assert frames == "1" and failures == "0"
    assert int(hits) > 50 and wrong == "0"  # every sampled pixel shows the trained weight it names


VARIABLES = """
import sys
import numpy as np
import keras
from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file

model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(5, (3, 2), name="conv"),
                          keras.layers.Flatten(), keras.layers.Dense(4, name="dense")])
for how, run in zip(("variables", "watch"), sys.argv[1:]):
    write_config(run, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current", "values": "trainable_variables"})
    beholder = Beholder(run, strict=True, variables=model if how == "variables" else None)
    if how == "watch":
        beholder.watch(model)
    assert beholder.update()
    beholder.close()
    frame = read_frame_file(run)
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel.value)
    print(how, [(s["name"], s["layout"]) for s in frame.sections],
          np.array_equal(np.sort(frame.section_values(0).ravel()), np.sort(kernel.ravel())))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_keras_model_as_variables_is_named_and_laid_out_as_keras_on_any_backend(tmp_path, backend):
    """On Keras's torch backend a model is a torch module too: ``Beholder(variables=model)`` must still
    name its variables by their Keras paths and lay the conv kernel out as HWIO, as watch() does."""
    pytest.importorskip(backend)
    env = dict(os.environ, **PYTHON_ENV, KERAS_BACKEND=backend)
    runs = [str(tmp_path / name) for name in ("variables", "watch")]
    out = subprocess.run([sys.executable, "-c", VARIABLES, *runs], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines()[-2:])
    expected = ("[('sequential/conv/kernel', 'kernel_hwio'), ('sequential/conv/bias', 'vector'), "
                "('sequential/dense/kernel', 'matrix'), ('sequential/dense/bias', 'vector')] True")
    assert lines == {"variables": expected, "watch": expected}


VIEWS = """
import sys
import numpy as np
import keras
from beholder_plugin import BeholderCallback, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d1"),
                          keras.layers.Dense(3, name="d2")])
model.compile(optimizer="sgd", loss="mse")
x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
y = x[:, :3]
for values, run in zip(("activations", "gradients"), sys.argv[1:]):
    write_config(run, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current", "values": values})

    class Due(BeholderCallback):
        def on_train_batch_begin(self, batch, logs=None):  # (the training thread, between steps)
            super().on_train_batch_begin(batch, logs)
            self.beholder.flush()
            self.beholder.frame_due_now()

    callback = Due(run, strict=True, probe=x[:2])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    frame = read_frame_file(run)
    records = [(s["name"], s.get("missing", "")[:40]) for s in frame.sections]
    print(values, callback.beholder.frames_written, callback.beholder.failures, records)
    if values == "activations":  # the last frame: the probe's layer outputs with the weights after fit
        hidden = keras.ops.convert_to_numpy(model.get_layer("d1")(x[:2]))
        print(np.allclose(np.sort(frame.section_values(0).ravel()), np.sort(hidden.ravel()), rtol=1e-5))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_callbacks_activations_and_gradients_views_work_during_fit(tmp_path, backend):
    """Activations (of a probe) and gradients picked in the dashboard during fit(): on JAX the trainer
    leaves the model's variables empty between syncs, so the watch reads the model through the
    callback's Callback.model, which syncs them. Before, every frame failed on JAX ("'NoneType'
    object is not callable") and strict=True raised it into fit()."""
    pytest.importorskip(backend)
    env = dict(os.environ, **PYTHON_ENV, KERAS_BACKEND=backend)
    runs = [str(tmp_path / "activations"), str(tmp_path / "gradients")]
    out = subprocess.run([sys.executable, "-c", VIEWS, *runs], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    activations, close, gradients = out.stdout.strip().splitlines()[-3:]
    assert activations.startswith("activations ") and " 0 [('d1', ''), ('d2', '')]" in activations
    assert int(activations.split()[1]) >= 1 and close == "True"
    assert gradients.startswith("gradients ") and int(gradients.split()[1]) >= 1
    if backend == "jax":  # (its fit() computes the gradients inside its jitted step: the sections say so)
        assert """ 0 [('sequential/d1/kernel', "Keras's fit() keeps gradients inside the")""" in gradients
    else:  # (torch: read from the variables' .grad)
        assert " 0 [('sequential/d1/kernel', ''), ('sequential/d1/bias', '')," in gradients


STEPS = """
import json, sys
import numpy as np
import keras
from beholder_plugin import BeholderCallback, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.protocol.timeline import read_timeline
from support import framed_steps

rng = np.random.default_rng(0)
x = rng.normal(size=(40, 6)).astype("float32")  # 10 batches of 4
y = x[:, :3] * 2


def model(steps_per_execution=1):
    keras.utils.set_random_seed(0)
    built = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d1"),
                              keras.layers.Dense(3, name="d2")])
    built.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", steps_per_execution=steps_per_execution)
    return built


def callback(run):
    write_config(run, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current"})
    made = BeholderCallback(run, strict=True)
    return made, framed_steps(made.beholder)  # (the hooks Keras's workers run late make no frame)


def report(case, run, trained, steps):
    frame = read_frame_file(run)
    weights = {v.path: keras.ops.convert_to_numpy(v.value) for v in trained.trainable_variables}
    located = [w for w in (locate(frame.sections, frame.width, px, py)
                           for px in range(0, frame.width, 3) for py in range(0, frame.height, 3))
               if w is not None]
    shown = len(located) > 10 and all(frame.values[w["offset"]] == weights[w["name"]][tuple(w["index"])]
                                      for w in located)
    last = max(int(c["step"].max()) for c in read_timeline(run).values())
    print(json.dumps({"case": case, "steps": steps, "frame": frame.header["step"], "timeline": last,
                      "iterations": int(keras.ops.convert_to_numpy(trained.optimizer.iterations)),
                      "shown": shown}))


runs = iter(sys.argv[1:])
trained = model()
first, _ = callback(next(runs))
trained.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[first])
run = next(runs)
resumed, steps = callback(run)
trained.fit(x, y, batch_size=4, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[resumed])
report("resumed", run, trained, steps)
if keras.backend.backend() != "torch":  # (torch's fit() takes steps_per_execution=1 only)
    for case, data in (("known", (x, y)), ("generator", None)):
        trained, run = model(steps_per_execution=4), next(runs)
        made, steps = callback(run)
        if data is None:  # a generator: Keras knows no length, and runs 4, 4 and 2 batches
            batches = ((x[i:i + 4], y[i:i + 4]) for i in range(0, 40, 4))
            trained.fit(batches, epochs=1, verbose=0, callbacks=[made])
        else:
            trained.fit(*data, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[made])
        report(case, run, trained, steps)
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_frame_steps_follow_the_optimizers_iterations_on_every_backend(tmp_path, backend):
    """A resumed fit given a new callback stamped its frames from 1 while optimizer.iterations went on
    from 10; with steps_per_execution=4 on a generator the short last execution counted 4 batches
    (frames up to 12 for 10 batches). Late hooks on a Keras worker thread (JAX, torch) leave some
    batches without a frame, but every frame's step is one the optimizer counted, in order."""
    pytest.importorskip(backend)
    runs = [str(tmp_path / name) for name in ("first", "resumed", "known", "generator")]
    out = run_script(STEPS, *runs, **PYTHON_ENV, KERAS_BACKEND=backend)
    assert out.returncode == 0, out.stderr[-3000:]
    cases = {r["case"]: r for r in map(json.loads, out.stdout.strip().splitlines()[-3:]) if "case" in r}
    expected = {"resumed": (range(11, 31), 30), "known": ([4, 8, 10, 14, 18, 20], 20),
                "generator": ([4, 8, 10], 10)}
    assert set(cases) == ({"resumed"} if backend == "torch" else set(expected))
    wrong = {}
    for case, got in cases.items():
        possible, final = expected[case]
        steps = got["steps"]
        if not (steps == sorted(set(steps)) and set(steps) <= set(possible)  # (in order, each one counted)
                and (backend != "tensorflow" or steps == list(possible))  # (TF: a frame at every hook)
                and steps[-1] == got["frame"] == got["timeline"] == got["iterations"] == final
                and got["shown"]):  # (the last frame shows the trained weights)
            wrong[case] = got
    assert wrong == {}
