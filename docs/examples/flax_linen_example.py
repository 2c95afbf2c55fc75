import sys

import flax.linen as nn
import jax
import optax

from beholder_plugin import Beholder

logdir = sys.argv[1] if len(sys.argv) > 1 else "logs/flax"


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))  # kernel (3, 3, 1, 8): HWIO
        return nn.Dense(10)(x.reshape(x.shape[0], -1))  # kernel (in, out)


model = ConvNet()
x = jax.random.normal(jax.random.PRNGKey(1), (32, 28, 28, 1))
y = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 10)
params = model.init(jax.random.PRNGKey(0), x)
optimizer = optax.sgd(0.01)
opt_state = optimizer.init(params)


@jax.jit
def train_step(params, opt_state):
    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, grads


beholder = Beholder(logdir)
for _ in range(50):
    params, opt_state, grads = train_step(params, opt_state)
    # sections "params/Conv_0/kernel", "params/Dense_0/bias", ...
    beholder.update(variables=params, arrays=grads, frame=lambda: x[0, :, :, 0])
beholder.close()
