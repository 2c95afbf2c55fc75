"""Beholder demo in PyTorch: the Keras demo's convnet, watched with one line, streamed to TensorBoard.

``beholder.watch(model)`` is all it takes: each ``update()`` then shows the
weights, the gradients or each layer's activations, whichever the
dashboard's Values selector picks, drawn in PyTorch's own axis order
(kernels ``[out, in, kh, kw]``, activations ``[n, c, h, w]``). "Frames"
shows the first input image.

    python demos/torch_demo.py --logdir demo-logs/torch-demo [--steps N]
    tensorboard --logdir demo-logs     # open the "Beholder" tab

Without --steps it trains until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import demo_steps
import numpy as np
from synthetic_shapes import CLASSES, make_batch


def convnet():
    """conv1 (8, 3x3) -> pool -> conv2 (16, 3x3) -> pool -> dense 32 -> logits, with named layers."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 3)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("dense", nn.Linear(16 * 5 * 5, 32)), ("relu3", nn.ReLU()),
        ("logits", nn.Linear(32, len(CLASSES))),
    ]))


def main(argv: list[str] | None = None) -> int:
    """Train until --steps (or Ctrl-C), calling beholder.update() after each step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo-logs/torch-demo", help="run directory")
    parser.add_argument("--steps", type=int, default=None, help="stop after N steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from beholder_plugin import Beholder

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = convnet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = None

    def frame():  # called by Beholder only when "frames" is selected and a frame is due
        return np.kron(images[0, 0].numpy(), np.ones((8, 8), np.float32))

    print(f"Beholder PyTorch demo writing to {os.path.abspath(args.logdir)}", flush=True)
    started = time.monotonic()
    with Beholder(args.logdir) as beholder:
        beholder.watch(model)  # weights, gradients and activations, as the dashboard picks
        try:
            for step in demo_steps.steps(args.steps):
                batch, labels = make_batch(rng, args.batch_size)
                images = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NHWC -> NCHW
                optimizer.zero_grad()
                loss = loss_fn(model(images), torch.from_numpy(labels).long())
                loss.backward()
                optimizer.step()
                beholder.update(frame=frame)
                if step % 200 == 0:
                    print(f"step {step}: loss {loss.item():.4f}", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print(
            f"done: {beholder.frames_written} frames in {time.monotonic() - started:.1f} s, "
            f"{beholder.failures} failures",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
