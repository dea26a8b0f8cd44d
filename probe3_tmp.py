import jax, jax.numpy as jnp, re, collections
exec(open("probe2_tmp.py").read().split("for name, fn")[0])
for name, fn in (("scan", scan), ("unrolled", unrolled)):
  txt = jax.jit(fn, compiler_options=opts).lower(w, x).compile().as_text()
  c = collections.Counter()
  for l in txt.splitlines():
    if "convolution(" in l:
      c[(l.split("=")[1].split("convolution")[0].strip(), re.search(r"window=\{[^}]*\}", l).group(0), re.search(r"dim_labels=\S+", l).group(0))] += 1
  for k, v in c.items(): print(name, v, k)
