"""What the whole-output norm of watched activations costs a hooked training step on the CPU.

    python benchmarks/activation_norm_bench.py [--steps 60]

A small convnet (conv 3-32, conv 32-64, 2x2 pools, linear; 32x32 inputs,
batch 64, SGD) with ``watch(model, gradients=False)`` showing activations, a
frame at every step so every step is hooked. Three conditions interleaved
step by step: ``no_norm`` (the hook keeps only the sample's norm), ``budget``
(as shipped: within the exact pass's 256 K values a frame, with its own
credit), ``always`` (every output's norm, every hooked step). Prints the
median step time per condition and the time spent inside the norm per step.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time


def main() -> None:
    """Run the interleaved conditions and print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60, help="hooked steps per condition")
    steps = parser.parse_args().steps

    import torch

    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config
    from beholder_plugin.trainer.exact_pass import HOST_EXACT_VALUES
    from beholder_plugin.trainer.sources import torch_modules

    real = torch_modules.whole_norm
    spent = {"no_norm": 0.0, "budget": 0.0, "always": 0.0}
    taken = dict.fromkeys(spent, 0)
    credit = [0]
    mode = ["no_norm"]

    def timed(tensor, values, **kwargs):
        start = time.perf_counter()
        norm, left = real(tensor, values, **kwargs)
        spent[mode[0]] += time.perf_counter() - start
        taken[mode[0]] += norm is not None
        return norm, left

    def budget(tensor, values, **kwargs):
        norm, credit[0] = timed(tensor, credit[0], **kwargs)
        return norm, values

    modes = {
        "no_norm": lambda tensor, values, **kwargs: (None, values),
        "budget": budget,
        "always": lambda tensor, values, **kwargs: (timed(tensor, 1 << 40, **kwargs)[0], values),
    }
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    run = tempfile.mkdtemp()
    write_config(run, {**DEFAULT_CONFIG, "FPS": 1, "values": "activations", "mode": "current"})
    beholder = Beholder(run)
    beholder.watch(model, gradients=False)
    names = list(modes)
    times: dict[str, list[float]] = {name: [] for name in names}
    warmup = 2 * len(names)
    try:
        for i in range(steps * len(names) + warmup):
            mode[0] = names[i % len(names)]
            torch_modules.whole_norm = modes[mode[0]]
            if mode[0] == "budget":
                credit[0] = min(credit[0] + HOST_EXACT_VALUES, 64 * HOST_EXACT_VALUES)
            start = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if i >= warmup:
                times[mode[0]].append(time.perf_counter() - start)
            beholder.frame_due_now()
            beholder.update()  # takes this step's frame and arms the hooks for the next
    finally:
        torch_modules.whole_norm = real
        beholder.close()
        shutil.rmtree(run, ignore_errors=True)
    for name in names:
        print(f"{name:8s} median hooked step {statistics.median(times[name]) * 1e3:7.2f} ms, "
              f"{spent[name] / (steps + 2) * 1e3:.2f} ms a step inside the norm "
              f"({taken[name]} norms taken)")


if __name__ == "__main__":
    main()
