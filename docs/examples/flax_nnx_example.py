import sys

import jax
import optax
from flax import nnx

from beholder_plugin import Beholder

logdir = sys.argv[1] if len(sys.argv) > 1 else "logs/nnx"


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
x = jax.random.normal(jax.random.PRNGKey(1), (32, 784))
y = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 10)


@nnx.jit
def train_step(model, optimizer):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)
    return grads


beholder = Beholder(logdir)
beholder.watch(model)  # trainable variables: nnx.state(model, nnx.Param), "hidden/kernel", ...
for _ in range(50):
    grads = train_step(model, optimizer)
    beholder.update(arrays=grads)  # the gradient State, named by the same paths
beholder.close()
