"""`make demo`: train the Keras and PyTorch demos side by side and serve them with TensorBoard, until Ctrl-C.

Starts ``demos/keras_demo.py`` (writing to ``<logdir>/keras-demo``),
``demos/torch_demo.py`` (``<logdir>/torch-demo``, when PyTorch is installed)
and ``tensorboard --logdir <logdir>``, prints the URL to open, and stops them
all when you press Ctrl-C or when any of them exits. The two demos train the
same small convnet, so the Run menu compares the frameworks' pictures.

    python demos/run_demo.py [--logdir demo-logs] [--port 6006] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def tensorboard_command(logdir: str, host: str, port: int) -> list[str]:
    """The `tensorboard` launcher installed beside this Python (the venv's), or `python -m`."""
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    base = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "tensorboard.main"]
    return [*base, "--logdir", logdir, "--host", host, "--port", str(port)]


def torch_installed() -> bool:
    """Whether PyTorch can be imported here (the PyTorch demo runs only then)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def answers(url: str) -> bool:
    """True when an HTTP server answers at url."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(proc: subprocess.Popen, name: str, grace: float = 10.0) -> None:
    """Ask a child to stop with SIGINT (as Ctrl-C would), then SIGTERM, then kill it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
    if proc.poll() is None:
        print(f"run_demo: {name} did not stop; killing it", flush=True)
        proc.kill()
        proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    """Treat SIGTERM like Ctrl-C, so that `kill` also stops both children."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo and TensorBoard side by side; return the exit code of the one that ended first."""
    # A shell starts background jobs with SIGINT ignored, and children would inherit that;
    # handle it (and SIGTERM) ourselves so Ctrl-C and kill always stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo-logs", help="TensorBoard logdir (gitignored)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--steps", type=int, default=None, help="stop the demo after N steps")
    args = parser.parse_args(argv)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    demos = {"demo": "keras", "torch demo": "torch"} if torch_installed() else {"demo": "keras"}
    commands = {}
    for name, framework in demos.items():
        run_dir = os.path.join(args.logdir, f"{framework}-demo")
        commands[name] = [sys.executable, os.path.join(HERE, f"{framework}_demo.py"), "--logdir", run_dir]
        if args.steps is not None:
            commands[name] += ["--steps", str(args.steps)]
    url = f"http://{args.host}:{args.port}/"

    # Own process groups: Ctrl-C reaches only this script, which then stops each child once.
    children: dict[str, subprocess.Popen] = {}
    code = 0
    try:
        children["tensorboard"] = subprocess.Popen(
            tensorboard_command(args.logdir, args.host, args.port), env=env,
            start_new_session=True,
        )
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, env=env, start_new_session=True)
        pids = ", ".join(f"{name} pid {proc.pid}" for name, proc in children.items() if name != "tensorboard")
        print(f"run_demo: {pids}, tensorboard pid {children['tensorboard'].pid}", flush=True)
        announced = False
        while True:
            ended = [(name, p.returncode) for name, p in children.items() if p.poll() is not None]
            if ended:
                name, code = ended[0]
                print(f"run_demo: {name} exited with code {code}; stopping", flush=True)
                break
            if not announced and answers(url):
                announced = True
                print(f"\n  Beholder is live: open {url}#beholder  (Ctrl-C to stop)\n", flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nrun_demo: stopping", flush=True)
        code = 0
    finally:
        # Ignore further Ctrl-C while the children shut down, so none is left behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for name, proc in children.items():
                stop(proc, name)
        finally:
            signal.signal(signal.SIGINT, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
