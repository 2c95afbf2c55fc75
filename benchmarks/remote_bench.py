"""What a remote logdir (s3://) costs the training loop, against moto's S3 server on 127.0.0.1.

Run: .venv/bin/python benchmarks/remote_bench.py [--calls N] [--frames N]
(needs moto[server] and s3fs: pip install -e '.[test]')

Prints, medians:

- the cost of an update() call when no frame is due, on s3:// and on a
  local directory (target <= 10 us on s3://), and how many requests to the
  store those calls made on the training thread (must be 0);
- update()'s blocking time when a frame is due, next to the floor (copying
  the values the frame shows into a preallocated buffer), for the MNIST-sized
  convnet of benchmarks/model_shapes.json;
- the delay from update() to the frame being readable through the plugin's
  ``live`` route (a BeholderPlugin on s3:// in this process: the frame is
  uploaded by the worker, the plugin's watcher notices the new object's
  metadata, reads and encodes it).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from update_bench import floor_gather, load_models, make_arrays  # noqa: E402

from beholder_plugin import Beholder, write_config  # noqa: E402
from beholder_plugin.protocol.files import files_for  # noqa: E402
from beholder_plugin.protocol.settings import DEFAULT_CONFIG  # noqa: E402

BASE = "/data/plugin/beholder"


def start_moto() -> tuple[object, str]:
    """moto's S3 server on a free port, and the environment that points s3fs at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    return server, endpoint


def count_training_thread_requests(url: str) -> list[str]:
    """Wrap the store's methods so that calls made on this thread are recorded in the returned list."""
    fs = files_for(url).fs
    calls: list[str] = []
    me = threading.get_ident()
    for name in ("info", "cat_file", "pipe_file", "ls", "copy", "rm_file", "isdir"):
        real = getattr(fs, name)

        def call(*args, _real=real, _name=name, **kwargs):
            if threading.get_ident() == me:
                calls.append(_name)
            return _real(*args, **kwargs)

        setattr(fs, name, call)
    return calls


def idle_call_cost(logdir: str, arrays: dict, calls: int, requests: list[str]) -> tuple[float, int]:
    """Median seconds of one update() call when no frame is due (each call timed on its own).

    Also how many store requests those calls made on this thread (``requests`` records them).
    """
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 1})
    beholder = Beholder(logdir, strict=True)
    beholder.update(arrays=arrays)  # one frame; the next second has none due
    beholder.flush()
    times = []
    clock = time.perf_counter
    before = len(requests)
    deadline = clock() + 0.8
    while len(times) < calls and clock() < deadline:
        start = clock()
        beholder.update(arrays=arrays)
        times.append(clock() - start)
    made = len(requests) - before
    beholder.close()
    return statistics.median(times), made


def blocking_vs_floor(
    logdir: str, arrays_list: list[dict], frames: int, requests: list[str]
) -> tuple[float, float, int]:
    """Median floor and update() blocking time (seconds) when a frame is due, interleaved.

    Also how many store requests the timed update() calls made on this thread.
    """
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30})
    beholder = Beholder(logdir, strict=True)
    for arrays in arrays_list * 2:  # plans and buffers
        beholder.frame_due_now()
        beholder.update(arrays=arrays)
        beholder.flush()
    out = np.empty(beholder.gatherer.frame_plans[0].value_count, np.float32)
    floor, blocking = [], []
    made = 0
    for i in range(frames):
        arrays = arrays_list[i % len(arrays_list)]
        floor.append(floor_gather(beholder, arrays, out))
        beholder.frame_due_now()  # due now (the 2 frames/s cap is waited out below)
        before = len(requests)
        start = time.perf_counter()
        handed = beholder.update(arrays=arrays)
        blocking.append(time.perf_counter() - start)
        made += len(requests) - before
        assert handed, "every timed call must hand a frame to the worker"
        beholder.flush()
    beholder.close()
    return statistics.median(floor), statistics.median(blocking), made


def delay_to_plugin(logdir_url: str, run: str, arrays_list: list[dict], frames: int) -> list[float]:
    """Seconds from update() to the frame being answered by the plugin's live route, per frame."""
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from beholder_plugin.server.plugin import BeholderPlugin

    run_url = f"{logdir_url}/{run}"
    write_config(run_url, {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30})
    beholder = Beholder(run_url, strict=True)
    plugin = BeholderPlugin(base_plugin.TBContext(logdir=logdir_url))
    client = Client(application.TensorBoardWSGI([plugin]))
    etag, delays = "", []
    for i in range(frames + 1):
        time.sleep(1.0 / beholder.max_fps + 0.01)  # the next frame is due
        start = time.perf_counter()
        assert beholder.update(arrays=arrays_list[i % len(arrays_list)])
        reply = client.get(f"{BASE}/live?run={run}&timeout=30&after={etag}")
        elapsed = time.perf_counter() - start
        assert reply.status_code == 200, reply.data
        etag = reply.headers["ETag"]
        if i:  # the first one also warms the plugin up
            delays.append(elapsed)
    beholder.close()
    return delays


def main() -> None:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="update() calls timed with no frame due")
    parser.add_argument("--frames", type=int, default=20, help="frames timed when due, and for the delay")
    args = parser.parse_args()
    server, endpoint = start_moto()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}"
    try:
        files_for(url).fs.mkdir(bucket)
        shapes = load_models()["mnist_convnet"]
        arrays_list = [make_arrays(shapes, seed) for seed in (0, 1)]
        print(f"moto S3 at {endpoint}, bucket {bucket}; arrays: mnist_convnet ({len(shapes)} arrays)")
        calls = count_training_thread_requests(url)
        remote_idle, requests = idle_call_cost(f"{url}/idle", arrays_list[0], args.calls, calls)
        with tempfile.TemporaryDirectory() as tmp:
            local_idle, _ = idle_call_cost(os.path.join(tmp, "idle"), arrays_list[0], args.calls, [])
        print(f"no frame due, s3://: {remote_idle * 1e6:.2f} us per update() (target <= 10 us); "
              f"local: {local_idle * 1e6:.2f} us; store requests made by those calls: {requests}")
        floor, blocking, requests = blocking_vs_floor(f"{url}/due", arrays_list, args.frames, calls)
        print(f"frame due, s3://: update() blocks {blocking * 1e3:.3f} ms; floor {floor * 1e3:.3f} ms; "
              f"store requests made by those calls: {requests}")
        delays = sorted(delay_to_plugin(url, "live", arrays_list, args.frames))
        p90 = delays[min(len(delays) - 1, int(0.9 * len(delays)))]
        median = statistics.median(delays)
        print(f"update() -> readable through the plugin (live): median {median * 1e3:.0f} ms, "
              f"p90 {p90 * 1e3:.0f} ms, {len(delays)} frames")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
