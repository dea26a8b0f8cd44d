r"""The paper's ablations (§3.3-§4.1) as one sweep over configs/paper.py: each point is a
full paper run with one switch flipped.

  python launch/sweep.py --config=configs/ablations.py --workdir=runs/ablations --mode=print
  python launch/sweep.py --config=configs/ablations.py --workdir=runs/ablations --mode=slurm \
      --sbatch=--gpus-per-node=2

At demo scale (configs/demo.py:sgd: the demo's digits and quarter-width net with the paper's
optimizer and dropout; 5 runs of about a minute each on 2 CPU cores, then their table and
curves from python -m alexnet_jax.compare):

  python launch/sweep.py --config=configs/ablations.py:demo --workdir=runs/ablations_demo \
      --mode=local

Paper (ILSVRC-2012 val): LRN -1.4% top-1; overlapping pooling -0.4%; two towers vs the
one-GPU net -1.7%; PCA lighting > 1% top-1.
"""

from configs import demo, paper


def get_config(scale: str | None = None):
  """scale 'demo' (--config=configs/ablations.py:demo): the same switches on the demo."""
  if scale not in (None, "", "paper", "demo"):
    raise ValueError(f"configs/ablations.py:{scale}: the scales are 'paper' and 'demo'")
  return demo.get_config("sgd") if scale == "demo" else paper.get_config()


def sweep():
  return [
      {},  # the paper's network
      {"model.lrn": False},  # no local response normalisation
      {"model.overlapping_pool": False},  # 2x2 stride-2 pooling
      {"model.variant": "one_gpu", "mesh.tower": 1},  # the one-GPU net
      {"augment.lighting_std": 0.0},  # no PCA lighting
  ]
