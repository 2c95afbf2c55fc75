"""beholder-tensorboard: which logdir schemes get the file-system layer, and what it passes through."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from server_support import ROOT

from beholder_plugin.server.launcher import logdir_schemes


@pytest.mark.parametrize(("argv", "schemes"), [
    (["--logdir", "s3://bucket/logs"], ["s3"]),
    (["--logdir=s3://bucket/logs", "--port", "6007"], ["s3"]),
    (["--logdir_spec", "a:s3://b/x,b:gs://c/y,c:/local"], ["s3", "gs"]),
    (["--logdir", "logs", "--host", "s3://not-a-logdir"], []),
    (["--logdir", "file:///tmp/logs"], []),
    (["--logdir", "S3://Bucket/logs"], ["s3"]),
])
def test_the_schemes_come_from_the_logdir_arguments_only(argv, schemes):
    assert logdir_schemes(argv) == schemes


LAYER = """
import sys
import tensorflow as tf
from beholder_plugin.server import launcher
original = tf.io.gfile.exists
print(launcher.prepare(["--logdir", "gs://b/logs", "--port", "1"]), tf.io.gfile.exists is original)
print(launcher.prepare(["--logdir", "s3://b/logs", "--port", "1"]), tf.io.gfile.exists is original,
      "s3" in tf.io.gfile.get_registered_schemes())
print(launcher.prepare(["--logdir", "s3://b/logs", "--load_fast", "false"]))
print(tf.io.gfile.exists(sys.argv[1]), tf.io.gfile.isdir(sys.argv[1]))  # local paths: TensorFlow's, as before
"""


def test_with_tensorflow_only_the_schemes_it_lacks_get_the_layer(tmp_path):
    pytest.importorskip("tensorflow")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", LAYER, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    gs, s3, given, local = out.stdout.strip().splitlines()[-4:]
    assert gs == "['--logdir', 'gs://b/logs', '--port', '1'] True"  # TensorFlow reads gs://: untouched
    assert s3 == "['--logdir', 's3://b/logs', '--port', '1', '--load_fast=false'] False True"
    assert given == "['--logdir', 's3://b/logs', '--load_fast', 'false']"  # the user's choice stands
    assert local == "True True"


def test_the_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'beholder-tensorboard = "beholder_plugin.server.launcher:main"' in text
