"""What watch() costs a torch.compile'd training loop: a ResNet at FPS 10, weights, gradients, activations.

Conditions, each its own copy of the model (same weights), compiled once and
watched by its own Beholder for the whole run (as in a real run, where the
model is compiled once and watch() is called once):

- ``none``: the compiled loop without Beholder;
- ``weights``, ``gradients``, ``activations``: ``watch(model)`` and
  ``update()`` every step, FPS 10, showing each kind of values.

The model is torchvision's ResNet-18 when torchvision is installed, else a
ResNet-like network of the same shape built here (basic blocks 2-2-2-2,
64-512 channels). After a warm-up that compiles every graph (each condition
once armed and once not), runs of ``steps`` steps are interleaved in rounds
(every condition once per round, in a shuffled order), so a machine that
slows down for a while slows every condition alike. Reported per condition:
the median step time, its ratio to ``none``, frames written per second of
training, Beholder's failures, and how many frames dynamo compiled in all.

On a GPU (the lead calls ``compiled_rows()``): inductor, bf16 autocast,
batch 128 at 224 x 224, default mode, then ``--mode reduce-overhead``.
Quick check on the CPU:

    .venv/bin/python benchmarks/compile_bench.py --device cpu --backend eager
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CONDITIONS = {
    "none": None,
    "weights": "trainable_variables",
    "gradients": "gradients",
    "activations": "activations",
}


def resnet(classes: int = 1000) -> Any:
    """torchvision's ResNet-18 if it is installed, else a ResNet-like network of the same layout."""
    try:
        from torchvision.models import resnet18

        return resnet18(num_classes=classes)
    except ImportError:
        return resnet_like(classes)


def resnet_like(classes: int = 1000, stages: tuple = ((64, 1), (128, 2), (256, 2), (512, 2)),
                blocks: int = 2) -> Any:
    """A ResNet-18-like network built here: a 7 x 7 stem, then per stage (channels, stride) ``blocks``
    basic blocks (BatchNorm, the residual added in place, in-place ReLUs), pooled into a linear head."""
    import torch

    nn = torch.nn

    class Basic(nn.Module):
        """Two 3 x 3 convolutions with BatchNorm, a residual added in place, in-place ReLUs."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
                self.downsample = nn.Sequential(conv, nn.BatchNorm2d(cout))

        def forward(self, x):
            """The block's output."""
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += x if self.downsample is None else self.downsample(x)
            return self.relu(out)

    cin = stages[0][0]
    layers: list[nn.Module] = [
        nn.Conv2d(3, cin, 7, 2, 3, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    for cout, stride in stages:
        layers += [Basic(cin, cout, stride)] + [Basic(cout, cout, 1) for _ in range(blocks - 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def compiled_rows(
    device: str = "cuda",
    steps: int = 50,
    rounds: int = 5,
    backend: str = "inductor",
    mode: str | None = None,
    batch: int | None = None,
    size: int | None = None,
    model: Callable[[], Any] | None = None,
) -> list[dict]:
    """Time the compiled loop under each condition, interleaved; one dict per condition.

    Keys: condition, median_step_ms, vs_none (the ratio minus 1), frames_per_s,
    frames, failures, compiled_frames (dynamo's count for the whole
    benchmark, the same in every row). ``mode`` is torch.compile's
    (``None``, ``"reduce-overhead"``, ...). Batch and image size default to
    128 x 224 on a GPU and 8 x 64 on the CPU. ``model`` builds the network
    (default: ``resnet()``).
    """
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config

    cuda = device.startswith("cuda")
    batch = batch or (128 if cuda else 8)
    size = size or (224 if cuda else 64)
    # Four copies of one model share its code: each state of each copy is a cache entry of that code.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    build = model or resnet
    base = build().to(device).to(memory_format=torch.channels_last) if cuda else build()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(batch, 3, size, size, generator=gen).to(device), torch.randint(0, 1000, (batch,),
                                                                                    generator=gen).to(device))
        for _ in range(4)
    ]
    root = tempfile.mkdtemp(prefix="compile-bench-")
    loops = {}
    try:
        for name, values in CONDITIONS.items():
            model = copy.deepcopy(base)
            compiled = torch.compile(model, backend=backend, mode=mode)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            beholder = None
            if values is not None:
                run = os.path.join(root, name)
                write_config(run, {**DEFAULT_CONFIG, "values": values, "FPS": 10, "mode": "current"})
                beholder = Beholder(run)
                beholder.watch(compiled)
            loops[name] = (compiled, optimizer, beholder)

        def train(name: str, count: int) -> list[float]:
            compiled, optimizer, beholder = loops[name]
            times = []
            for step in range(count):
                x, y = batches[step % len(batches)]
                start = time.perf_counter()
                with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
                    loss = torch.nn.functional.cross_entropy(compiled(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if beholder is not None:
                    beholder.update()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            return times

        for name, (_compiled, _optimizer, beholder) in loops.items():  # compile each state of each condition
            for _ in range(3):
                if beholder is not None:
                    beholder.frame_due_now()  # due: the next update arms, the one after takes
                train(name, 2)
            if beholder is not None:
                beholder.flush()
                beholder.frames_written = beholder.failures = 0
        step_times: dict[str, list[float]] = {name: [] for name in CONDITIONS}
        order = list(CONDITIONS)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                step_times[name] += train(name, steps)
        for _compiled, _optimizer, beholder in loops.values():
            if beholder is not None:
                beholder.flush()
        base_ms = statistics.median(step_times["none"]) * 1000
        rows = []
        for name, (_compiled, _optimizer, beholder) in loops.items():
            median_ms = statistics.median(step_times[name]) * 1000
            frames = beholder.frames_written if beholder is not None else 0
            rows.append({
                "condition": name,
                "median_step_ms": round(median_ms, 3),
                "vs_none": round(median_ms / base_ms - 1, 4),
                "frames_per_s": round(frames / sum(step_times[name]), 2),
                "frames": frames,
                "failures": beholder.failures if beholder is not None else 0,
                "compiled_frames": counters["frames"]["total"],
            })
        return rows
    finally:  # the Beholders first (their workers write until closed), then their runs
        for _compiled, _optimizer, beholder in loops.values():
            if beholder is not None:
                beholder.close()
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The rows as a plain text table."""
    lines = [f"{'condition':<12} {'median ms':>10} {'vs none':>8} {'frames/s':>9} {'frames':>7} "
             f"{'failures':>9}"]
    for row in rows:
        lines.append(f"{row['condition']:<12} {row['median_step_ms']:10.3f} {row['vs_none']:+8.1%} "
                     f"{row['frames_per_s']:9.2f} {row['frames']:7d} {row['failures']:9d}")
    lines.append(f"dynamo compiled {rows[0]['compiled_frames']} frames in all")
    return "\n".join(lines)


def main() -> int:
    """Print the table for the device asked for (exits 0, saying so, when it is CUDA and there is none)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--mode", default=None, help="torch.compile's mode, e.g. reduce-overhead")
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image height and width")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("compile_bench: no CUDA device here, nothing timed (try --device cpu --backend eager)")
        return 0
    rows = compiled_rows(args.device, args.steps, args.rounds, args.backend, args.mode, args.batch_size,
                         args.size)
    print(f"torch {torch.__version__}, {args.device}, backend {args.backend}, mode {args.mode or 'default'}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
