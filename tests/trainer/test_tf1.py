"""TF1 graph mode through tf.compat.v1: update(session=sess) and the gradient helper."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support import due
from tf_support_helpers import configure

from beholder_plugin import Beholder, gradient_helper, read_frame, read_section_info
from beholder_plugin.trainer.sources import tf_tensors as tf_support

pytestmark = [pytest.mark.tf, pytest.mark.usefixtures("flushed_updates")]
tf = pytest.importorskip("tensorflow")
v1 = tf.compat.v1

BIG = (3, 3, 256, 512)  # 1.18 M values, of which a frame shows 16 input-channel rows


class RecordingSession:
    """A session stand-in that forwards to a real one and records what each run() returned."""

    def __init__(self, session):
        self._session = session
        self.graph = session.graph
        self.fetched_sizes: list[int] = []

    def run(self, fetches, *args, **kwargs):
        values = self._session.run(fetches, *args, **kwargs)
        self.fetched_sizes.extend(np.asarray(v).size for v in values)
        return values


@pytest.fixture
def graph_session():
    """A graph with a big conv kernel, a dense kernel, a bias and a float16 variable, initialised."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        init = v1.random_normal_initializer(seed=1)
        v1.get_variable("conv/kernel", BIG, initializer=init)
        v1.get_variable("dense/kernel", (40, 10), initializer=init)
        v1.get_variable("dense/bias", (10,), initializer=init)
        v1.get_variable("half", (6, 7), dtype=tf.float16, initializer=v1.ones_initializer())
        v1.get_variable("frozen", (5,), trainable=False)
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    yield session
    session.close()


def _full_values(session) -> dict[str, np.ndarray]:
    with session.graph.as_default():
        variables = v1.trainable_variables()
    return dict(zip([v.name for v in variables], session.run(variables)))


def test_session_variable_shapes(graph_session):
    names, shapes = tf_support.session_variable_shapes(graph_session)
    assert names == ["conv/kernel:0", "dense/kernel:0", "dense/bias:0", "half:0"]
    assert shapes == [BIG, (40, 10), (10,), (6, 7)]


def test_session_frame_equals_a_numpy_rendering_of_the_full_values(run_dir, graph_session):
    configure(run_dir)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(session=graph_session)
    names = [s["name"] for s in read_section_info(run_dir)]
    assert names == ["conv/kernel:0", "dense/kernel:0", "dense/bias:0", "half:0"]
    reference = os.path.join(run_dir, "reference")
    configure(reference, values="arrays")
    full = {k: v.astype(np.float32) for k, v in _full_values(graph_session).items()}
    with Beholder(reference, strict=True) as ref:
        assert ref.update(arrays=full)
    np.testing.assert_array_equal(read_frame(run_dir), read_frame(reference))


def test_session_fetches_only_the_shown_values(run_dir, graph_session):
    configure(run_dir)
    session = RecordingSession(graph_session)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(session=session)
    assert len(session.fetched_sizes) == 4
    big_fetched = session.fetched_sizes[0]
    assert big_fetched == 3 * 3 * 16 * 512  # rows kept by the truncation rule, not all 256
    assert sum(session.fetched_sizes) < np.prod(BIG) / 10


def test_gather_ops_are_built_once(run_dir, graph_session):
    configure(run_dir)
    graph = graph_session.graph
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(session=graph_session)
        ops_after_first = len(graph.get_operations())
        for _ in range(3):
            due(beholder)
            assert beholder.update(session=graph_session)
        assert len(graph.get_operations()) == ops_after_first
        assert beholder.frames_written == 4
        # a different layout (show_all) needs new gather ops, built once as well
        configure(run_dir, show_all=True)
        due(beholder)
        assert beholder.update(session=graph_session)
        ops_show_all = len(graph.get_operations())
        assert ops_show_all > ops_after_first
        due(beholder)
        assert beholder.update(session=graph_session)
        assert len(graph.get_operations()) == ops_show_all


def test_finalized_graph_falls_back_to_full_fetches(run_dir, graph_session):
    """A finalized graph (MonitoredTrainingSession) cannot get new ops: whole variables are read."""
    reference = os.path.join(run_dir, "reference")
    configure(reference)
    with Beholder(reference, strict=True) as ref:
        assert ref.update(session=graph_session)
    graph_session.graph.finalize()
    configure(run_dir)
    session = RecordingSession(graph_session)
    with Beholder(run_dir, strict=True) as beholder:  # its own plans: the ops above do not fit
        assert beholder.update(session=session)
    assert session.fetched_sizes[0] == np.prod(BIG)
    np.testing.assert_array_equal(read_frame(run_dir), read_frame(reference))


def test_gradient_helper_trains_and_gradients_render(run_dir):
    configure(run_dir, values="arrays")
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, (None, 3))
        w = v1.get_variable("w", initializer=np.ones((3, 2), np.float32))
        b = v1.get_variable("b", initializer=np.zeros(2, np.float32))
        loss = tf.reduce_sum(tf.matmul(x, w) + b)
        train_op, grads = gradient_helper(v1.train.GradientDescentOptimizer(0.5), loss)
        assert set(grads) == {"w:0", "b:0"}
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            feed = {x: np.array([[1.0, 2.0, 3.0]], np.float32)}
            _, values = sess.run([train_op, grads], feed)
            w_after = sess.run(w)
            with Beholder(run_dir, strict=True) as beholder:
                assert beholder.update(session=sess, arrays=values)
    np.testing.assert_array_equal(values["w:0"], [[1, 1], [2, 2], [3, 3]])
    np.testing.assert_allclose(w_after, 1.0 - 0.5 * values["w:0"])
    assert [s["name"] for s in read_section_info(run_dir)] == ["w:0", "b:0"]


def test_graph_without_trainable_variables_is_a_clear_error(run_dir):
    configure(run_dir)
    graph = tf.Graph()
    with graph.as_default():
        v1.get_variable("counter", (), trainable=False)
    with v1.Session(graph=graph) as sess, Beholder(run_dir, strict=True) as beholder:
        with pytest.raises(ValueError, match="no trainable variables"):
            beholder.update(session=sess)
