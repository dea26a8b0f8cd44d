import time, jax, jax.numpy as jnp, numpy as np
from alexnet_jax import evaluation
opts = evaluation.compiler_options()
def f(w, xb):
  y = jax.lax.conv_general_dilated(xb, w, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jax.nn.relu(y)
  y = jax.lax.conv_general_dilated(y, w2, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jax.nn.relu(y) ** 2)
w2 = jnp.ones((5, 5, 64, 24)) * 0.01
g = jax.grad(f)
def unrolled(w, x, barrier):
  c = jnp.zeros_like(w)
  for i in range(x.shape[0]):
    xi = x[i]
    if barrier: xi, c = jax.lax.optimization_barrier((xi, c))
    c = c + g(w, xi)
  return c
w = jnp.ones((5, 5, 24, 64)) * 0.01
for k in (1, 2, 8):
  x = jnp.ones((k, 16, 55, 55, 24))
  for barrier in (False, True):
    m = jax.jit(unrolled, static_argnums=2, compiler_options=opts).lower(w, x, barrier).compile().memory_analysis()
    print(k, barrier, m.temp_size_in_bytes / 1e6)
print("--- no concurrency-optimized scheduler")
o2 = dict(opts or {}, xla_cpu_enable_concurrency_optimized_scheduler=False)
for k in (1, 8):
  x = jnp.ones((k, 16, 55, 55, 24))
  for barrier in (False, True):
    m = jax.jit(unrolled, static_argnums=2, compiler_options=o2).lower(w, x, barrier).compile().memory_analysis()
    print(k, barrier, m.temp_size_in_bytes / 1e6)
