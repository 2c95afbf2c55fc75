"""A trainer for the remote-logdir tests: ``python tests/remote_trainer.py URL STOP_FILE``.

Updates a Beholder on URL (``s3://bucket/run``, any fsspec URL) with
drifting NumPy arrays and a 2-D frame until STOP_FILE (a local path outside
its working directory) exists, then closes it and prints its counters as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    """Write frames to the URL until the stop file exists; print the Beholder's counters."""
    import numpy as np

    from beholder_plugin import Beholder

    url, stop_file = argv
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(40, 30)).astype(np.float32)
    beholder = Beholder(url, config_poll_seconds=0.5)
    while not os.path.exists(stop_file):
        kernel += rng.normal(scale=0.1, size=kernel.shape).astype(np.float32)
        beholder.update(arrays={"dense/kernel": kernel, "dense/bias": kernel[0]}, frame=(kernel * 10) % 7)
        time.sleep(0.02)
    beholder.close()
    names = ("frames_written", "skipped", "failures", "write_errors")
    counters = {name: getattr(beholder, name) for name in names}
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
