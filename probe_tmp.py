import time, jax, jax.numpy as jnp, numpy as np
from alexnet_jax import train, train_state, sharding, evaluation
from configs import demo, lars
from tests import test_train as T
def timeit(c, n, reps=2, **kw):
  mesh = sharding.make_mesh(1, 1)
  model = train_state.create_model(c, 10)
  state = train_state.create_train_state(c, model, mesh)
  step = train.make_train_step(c, model, mesh, steps_per_epoch=2, **kw)
  spec, lighting = jax.device_put(T._inputs(c), sharding.replicated(mesh))
  b = evaluation.global_batch(mesh, T._batch(n=n))
  t = time.time(); state, m = step(state, b, spec, lighting); jax.block_until_ready(m); c0 = time.time() - t
  ts = []
  for _ in range(reps):
    t = time.time(); state, m = step(state, b, spec, lighting); jax.block_until_ready(m); ts.append(time.time() - t)
  return round(c0, 1), [round(x, 2) for x in ts], float(m["loss"])
c = demo.get_config(); c.batch_size = 64; c.gradient_accumulation = 8
print("host K8 b64", timeit(c, 64), flush=True)
c = demo.get_config(); c.batch_size = 8
print("K1 b8", timeit(c, 8), flush=True)
c = lars.get_config("demo")
print("lars demo K8 b512", timeit(c, 512), flush=True)
