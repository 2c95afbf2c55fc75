"""A remote logdir against a real S3 API: moto's S3 server, a trainer process, a TensorBoard process.

The trainer is tests/remote_trainer.py, writing to s3://beholder-test/run.

TensorBoard is started with ``tensorflow`` hidden from it: with TensorFlow
installed, TensorBoard refuses an s3:// logdir unless tensorflow-io is
installed too (docs/remote.md); without it, TensorBoard's own stub takes
over and the Beholder plugin reads the bucket through s3fs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from server_support import (
    BASE,
    PYTHON,
    ROOT,
    beholder_frame,
    chromium_page,
    free_port,
    http_get,
    wait_for,
)

pytest.importorskip("moto.server", reason="needs moto[server] (the test extra: pip install -e '.[test]')")
pytest.importorskip("s3fs", reason="needs s3fs (the test extra: pip install -e '.[test]')")

pytestmark = pytest.mark.slow

BUCKET = "beholder-test"
RUN_URL = f"s3://{BUCKET}/run"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# TensorBoard without TensorFlow (see the module docstring).
TENSORBOARD_WITHOUT_TF = (
    "import sys; sys.modules['tensorflow'] = None; sys.argv[0] = 'tensorboard'; "
    "from tensorboard.main import run_main; sys.exit(run_main())"
)


def start_s3(port: int) -> tuple:
    """moto's S3 server on a port, with the bucket: (server, environment for child processes, s3fs)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint,
                           skip_instance_cache=True, use_listings_cache=False)
    if not fs.exists(BUCKET):  # moto keeps buckets per process: another test may have made it
        fs.mkdir(BUCKET)
    return server, env, fs


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on a free port with the bucket: (environment for child processes, s3fs)."""
    server, env, fs = start_s3(free_port())
    try:
        yield env, fs
    finally:
        server.stop()


def post_config(url: str, changes: dict) -> int:
    """POST a config change to a real TensorBoard; the status code."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(changes).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def frame_headers(base: str) -> dict[str, str] | None:
    """The headers of the run's latest frame through the plugin, or None while it has none."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/frame?run=run", timeout=10) as reply:
            reply.read()
            return dict(reply.headers)
    except OSError:
        return None


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """A child process with its output in log."""
    cwd.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    """End a child process (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_trainer_and_tensorboard_share_an_s3_bucket(s3, tmp_path):
    env, fs = s3
    stop_file = tmp_path / "stop"
    trainer_cwd, tb_cwd = tmp_path / "trainer-cwd", tmp_path / "tb-cwd"
    port = free_port()
    base = f"http://127.0.0.1:{port}{BASE}"
    tensorboard = start(
        [PYTHON, "-c", TENSORBOARD_WITHOUT_TF, "--logdir", f"s3://{BUCKET}", "--host", "127.0.0.1",
         "--port", str(port)],
        env, tb_cwd, tmp_path / "tensorboard.log",
    )
    staging = tmp_path / "tmp"  # the trainer's TMPDIR: where recordings are made before the upload
    staging.mkdir()
    trainer = start([PYTHON, str(ROOT / "tests" / "remote_trainer.py"), RUN_URL, str(stop_file)],
                    {**env, "TMPDIR": str(staging)}, trainer_cwd, tmp_path / "trainer.log")
    try:
        runs = wait_for(lambda: http_get(f"{base}/runs?fresh=1", timeout=5)[1], timeout=120,
                        interval=0.5, message="TensorBoard's /runs")
        listed = wait_for(lambda: json.loads(http_get(f"{base}/runs?fresh=1")[1]), timeout=60,
                          interval=0.5, message="the run to be listed")
        assert [(r["run"], r["storage"]) for r in listed] == [("run", "s3")], runs

        first = wait_for(lambda: frame_headers(base), timeout=60, message="a first frame")
        assert first["X-Beholder-Storage"] == "s3" and first["X-Beholder-Max-Fps"] == "2"
        # The dashboard says where the run lives and what that costs in frame rate.
        with chromium_page() as page:
            page.goto(f"http://127.0.0.1:{port}/#beholder")
            dashboard = beholder_frame(page)
            status = wait_for(lambda: "remote logdir" in (t := dashboard.inner_text("#status")) and t,
                              timeout=60, message="the status line of a remote run")
            assert "remote logdir (s3://): up to 2 frames/s" in status
        status, _ = http_get(f"{base}/live?run=run&timeout=20&after={first['ETag']}", timeout=30)
        assert status == 200

        # A settings change made through the plugin reaches the trainer: its next frames show it.
        assert post_config(f"{base}/config?run=run", {"values": "arrays", "colormap": "viridis"}) == 200
        changed = wait_for(
            lambda: (h := frame_headers(base)) and h["X-Beholder-Values"] == "arrays"
            and h["X-Beholder-Colormap"] == "viridis" and h,
            timeout=60, message="a frame with the new settings",
        )
        assert int(changed["X-Beholder-Frame-Id"]) > int(first["X-Beholder-Frame-Id"])

        # A recording is made while is_recording is on and lands in the bucket when it ends.
        assert post_config(f"{base}/config?run=run", {"is_recording": True}) == 200
        start_id = int(changed["X-Beholder-Frame-Id"])
        wait_for(lambda: int(frame_headers(base)["X-Beholder-Frame-Id"]) >= start_id + 6, timeout=60,
                 message="frames while recording")
        assert post_config(f"{base}/config?run=run", {"is_recording": False}) == 200
        videos = wait_for(
            lambda: [i for i in fs.ls(f"{BUCKET}/run/plugins/beholder", detail=True)
                     if i["name"].rsplit("/", 1)[-1].startswith("video-") and i["size"] > 0],
            timeout=60, message="the recording in the bucket",
        )
        assert videos[0]["name"].endswith(".mp4")
        assert fs.ls(f"{BUCKET}/run/plugins/beholder/history")  # kept frames, as objects
    finally:
        stop_file.touch()
        try:
            trainer.wait(60)
        finally:
            stop(trainer)
            stop(tensorboard)
    assert trainer.returncode == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    stats = json.loads((tmp_path / "trainer.log").read_text().strip().splitlines()[-1])
    assert stats["failures"] == 0 and stats["write_errors"] == 0 and stats["frames_written"] > 8
    assert os.listdir(trainer_cwd) == [] and os.listdir(tb_cwd) == []  # nothing written locally
    assert os.listdir(staging) == []  # the recording's local staging copy is gone


def test_the_s3_server_going_away_and_coming_back_mid_run(tmp_path):
    """Stop the S3 server while a trainer writes, then start it again on the same port.

    The trainer keeps running (frames skipped and counted as write errors, one
    warning), no failure is counted, every frame object ever read from the
    bucket is whole, and frames resume once the server is back.
    """
    from moto.server import ThreadedMotoServer

    from beholder_plugin.protocol.frame_format import decode_frame

    port = free_port()
    server, env, fs = start_s3(port)
    stop_file = tmp_path / "stop"
    run_url = f"s3://{BUCKET}/outage-{tmp_path.name}"  # a run of its own, whatever the bucket holds
    # (botocore's own retries and backoff, 10 s of this test, are not what it checks: one attempt each)
    env = {**env, "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    trainer = start([PYTHON, str(ROOT / "tests" / "remote_trainer.py"), run_url, str(stop_file)],
                    env, tmp_path / "cwd", tmp_path / "trainer.log")
    frame_key = f"{run_url[len('s3://'):]}/plugins/beholder/frame.bin"

    def frame_id() -> int | None:
        """The frame id of the frame object now in the bucket (it must decode whole), or None."""
        try:
            data = fs.cat_file(frame_key)
        except FileNotFoundError:
            return None
        return decode_frame(data).header["frame_id"]  # a partial object would raise here

    try:
        before = wait_for(frame_id, timeout=60, message="a first frame in the bucket")
        server.stop()
        wait_for(lambda: "cannot write frames" in (tmp_path / "trainer.log").read_text(), timeout=60,
                 interval=0.5, message="the trainer's warning that the store is unreachable")
        assert trainer.poll() is None  # still training
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # moto keeps its buckets in the process: the bucket is back as it was
        fs.invalidate_cache()
        after = wait_for(lambda: (i := frame_id()) and i > before and i, timeout=120, interval=0.5,
                         message="frames to resume")
        assert after > before
    finally:
        stop_file.touch()
        try:
            trainer.wait(120)
        finally:
            stop(trainer)
            try:
                fs.rm(run_url[len("s3://"):], recursive=True)  # leave the shared bucket as it was
            finally:
                server.stop()
    log = (tmp_path / "trainer.log").read_text()
    assert trainer.returncode == 0, log[-3000:]
    stats = json.loads(log.strip().splitlines()[-1])
    assert stats["failures"] == 0 and stats["write_errors"] >= 1
    assert log.count("cannot write frames") == 1  # warned once


def test_beholder_tensorboard_serves_an_s3_logdir_with_tensorflow_installed(s3, tmp_path):
    """`beholder-tensorboard` where TensorFlow is installed (which plain `tensorboard` refuses for s3://)."""
    tf = pytest.importorskip("tensorflow", reason="the point is an environment with TensorFlow")
    env, fs = s3
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    logdir = f"s3://{BUCKET}/logs"
    plain = subprocess.run([PYTHON, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(free_port())],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "Unsupported filename scheme 's3'" in plain.stderr
    # TensorBoard's own event files, next to the Beholder run: read through the layer too.
    events = tmp_path / "events"
    with tf.summary.create_file_writer(str(events)).as_default():
        tf.summary.scalar("loss", 0.5, step=1)
    for path in events.iterdir():
        fs.put(str(path), f"{BUCKET}/logs/run/{path.name}")
    stop_file = tmp_path / "stop"
    port = free_port()
    tensorboard = start([PYTHON, "-m", "beholder_plugin.server.launcher", "--logdir", logdir,
                         "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "tb-cwd",
                        tmp_path / "tensorboard.log")
    trainer = start([PYTHON, str(ROOT / "tests" / "remote_trainer.py"), f"{logdir}/run", str(stop_file)],
                    env, tmp_path / "trainer-cwd", tmp_path / "trainer.log")
    try:
        base = f"http://127.0.0.1:{port}"
        listed = wait_for(lambda: json.loads(http_get(f"{base}{BASE}/runs?fresh=1", timeout=5)[1]),
                          timeout=120, interval=0.5, message="the Beholder run to be listed")
        assert [(r["run"], r["storage"]) for r in listed] == [("run", "s3")]
        assert wait_for(lambda: frame_headers(f"{base}{BASE}"), timeout=60, message="a frame")
        runs = wait_for(lambda: json.loads(http_get(f"{base}/data/runs", timeout=5)[1]), timeout=60,
                        interval=1, message="TensorBoard's own runs, from the event file in the bucket")
        assert runs == ["run"]
    finally:
        stop_file.touch()
        stop(trainer)
        stop(tensorboard)
    log = (tmp_path / "tensorboard.log").read_text()
    assert "Unsupported filename scheme" not in log
