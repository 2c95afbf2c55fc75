"""What a frame costs the training thread in Python and launches, measured without a GPU.

    python benchmarks/launch_bench.py [--frames 60] [--rounds 3]

On a GPU the kernels of a frame are cheap and asynchronous; what the training
thread pays is the Python and the launches that issue them: arming hooks,
the hooks' own work during a step, and the update() that takes the frame.
This measures exactly that on the CPU: a model with ResNet-50's module tree
(53 conv-batchnorm-relu layers and a linear head: 214 parameters, 162 leaf
layers) built of tiny tensors (8 channels, 4x4 images, batch 2), so that the
kernels take next to nothing, with ``BEHOLDER_BATCH_CPU_TENSORS=1`` so that
CPU tensors take the device path (one index_select per section, one cat, the
variance window and the copy, as on a GPU).

Conditions, one after the other in each round, ``watch(model)`` at FPS 10 in
variance mode, the clock driven by the script (a frame falls due when it
says):

- ``weights``: the frame read from the parameters by the update() it falls
  due at (on CUDA its gathers are replayed as one graph: the CPU figure is
  the eager path);
- ``gradients``: read from ``.grad`` the same way (the step left them);
- ``gradients (hooked)``: ``zero_grad(set_to_none=True)`` before update(), so
  post-accumulate-grad hooks catch the next backward pass (and copy the
  gradients into one buffer when it ends);
- ``activations``: forward hooks on the 162 layers for one step;
- ``weights, replayed`` and ``gradients, replayed``: as above, with the
  frame's gathers and the per-step check captured and replayed as on CUDA
  (``torch_batch.CPU_GRAPHS``) and the replays' kernels left out, which on a
  GPU are one graph launch each, and the fused norm pass of a check not
  replayed left out too (``launched_norms``: its result laid out as CUDA's
  kernel returns it, views of one new vector): what is left is the Python
  of update() on CUDA, the figure the 0.3 ms target of ``update()``
  blocking is about. Its frames are not right
  (nothing was gathered); it is timing only. Its gradients are zeroed in
  place, so that each step's lie where the last step's did (as a GPU's
  caching allocator mostly places them) and the frame can be replayed;
- ``gradients (hooked), replayed``: the hooked gradients the same way (their
  one buffer stays where it is, so the frame's gathers from it replay).

Per frame it prints the median of: the update() that falls due (arms, or
takes the frame), the hooked step minus the plain step after it, the update()
that takes a hooked frame, and their sum, the training thread's whole cost
of one frame; and the update() with no frame due (the timeline's per-step
check). The worker finishes each frame before the next thing is timed (its
competition with training for the GIL is benchmarks/torch_bench.py's).
Compare figures only within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = "1"  # before beholder_plugin reads it
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONDITIONS = ("weights", "gradients", "gradients (hooked)", "activations", "weights, replayed",
              "gradients, replayed", "gradients (hooked), replayed")
VALUES = {"weights": "trainable_variables", "gradients": "gradients", "gradients (hooked)": "gradients",
          "activations": "activations", "weights, replayed": "trainable_variables",
          "gradients, replayed": "gradients", "gradients (hooked), replayed": "gradients"}


class Clock:
    """The Beholder's clock, moved by the script."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def resnet50_tree(torch):
    """ResNet-50's count of parameters and leaf layers, in tiny tensors."""
    nn = torch.nn
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    for _ in range(52):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)]
    return nn.Sequential(*layers)


def measure(condition: str, frames: int) -> dict[str, float]:
    """Median milliseconds per frame of each part, for one condition."""
    from beholder_plugin.trainer.sources import torch_batch

    if not condition.endswith("replayed"):
        return measure_as_is(condition, frames)
    import torch

    real_replay, real_norms = torch_batch.AddressReplay.replay, torch._foreach_norm
    torch_batch.CPU_GRAPHS, torch_batch.AddressReplay.replay = True, lambda graph: None
    torch._foreach_norm = launched_norms
    try:
        return measure_as_is(condition, frames)
    finally:
        torch_batch.CPU_GRAPHS, torch_batch.AddressReplay.replay = False, real_replay
        torch._foreach_norm = real_norms


def launched_norms(tensors: list, *args, **kwargs) -> list:
    """torch._foreach_norm as a GPU's training thread meets it: a new vector whose elements are returned as
    views, one per tensor (as CUDA's fused kernel lays them out), its kernel left out (zeros)."""
    import torch

    return list(torch.zeros(len(tensors), dtype=kwargs.get("dtype") or tensors[0].dtype).unbind())


def measure_as_is(condition: str, frames: int) -> dict[str, float]:
    """measure() with the gathers as they are set up."""
    import torch

    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config

    torch.manual_seed(0)
    model = resnet50_tree(torch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 10, (2,))
    hooked_grads = condition.startswith("gradients (hooked)")

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        # (replayed: zeroed where they lie, so that each step's gradients are where the last ones were,
        # as a GPU's caching allocator mostly places them; CPU memory would move them every step)
        opt.zero_grad(set_to_none=condition != "gradients, replayed")
        loss.backward()
        opt.step()
        if hooked_grads:
            opt.zero_grad(set_to_none=True)  # gone before update(), as Hugging Face's Trainer does

    run = tempfile.mkdtemp(prefix="launch-bench-")
    write_config(run, {**DEFAULT_CONFIG, "values": VALUES[condition], "FPS": 10, "mode": "variance"})
    clock = Clock()
    beholder = Beholder(run, clock=clock)
    beholder.watch(model)
    parts: dict[str, list[float]] = {"due": [], "hooked-plain": [], "take": [], "not due": []}

    def timed(call):
        """(seconds, result) of one call; the worker then finishes its frame before anything else is timed."""
        t0 = time.perf_counter()
        result = call()
        spent = time.perf_counter() - t0
        beholder.flush()
        return spent, result

    for i in range(frames + 10):
        clock.now += 0.2  # a frame falls due
        step()
        due, took = timed(beholder.update)  # takes the frame, or arms the hooks for the next step
        clock.now += 0.001
        hooked, _ = timed(step)
        take, took_next = timed(beholder.update) if not took else (0.0, False)
        clock.now += 0.001
        plain, _ = timed(step)
        not_due, _ = timed(beholder.update)
        if i >= 10:  # after the plans, indices and caches of the first frames
            parts["due"].append(due)
            parts["hooked-plain"].append(hooked - plain)
            parts["take"].append(take if took_next else 0.0)
            parts["not due"].append(not_due)
    written, failures = beholder.frames_written, beholder.failures
    beholder.close()
    shutil.rmtree(run, ignore_errors=True)
    out = {name: statistics.median(values) * 1e3 for name, values in parts.items()}
    out["frame"] = out["due"] + out["hooked-plain"] + out["take"]
    out["frames"] = written
    out["failures"] = failures
    return out


def main() -> None:
    """Run the conditions in rounds and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per condition per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the worker thread renders beside it, as on a GPU machine's host
    print(f"launch_bench: torch {torch.__version__}, {args.frames} frames x {args.rounds} rounds, "
          "CPU tensors through the device path")
    print(f"{'condition':<22}{'round':>6}{'due update':>12}{'hooked-plain':>14}{'take update':>13}"
          f"{'per frame':>11}{'not due':>9}  (ms)")
    for r in range(args.rounds):
        for condition in CONDITIONS:
            got = measure(condition, args.frames)
            print(f"{condition:<22}{r:>6}{got['due']:>12.3f}{got['hooked-plain']:>14.3f}{got['take']:>13.3f}"
                  f"{got['frame']:>11.3f}{got['not due']:>9.3f}"
                  + (f"  ({got['failures']} failures)" if got["failures"] else ""), flush=True)


if __name__ == "__main__":
    main()
