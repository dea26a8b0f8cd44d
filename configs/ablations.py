r"""The paper's ablations (§3.3-§4.1) as one sweep over configs/paper.py: each point is a
full paper run with one switch flipped.

  python launch/sweep.py --config=configs/ablations.py --workdir=runs/ablations --mode=print
  python launch/sweep.py --config=configs/ablations.py --workdir=runs/ablations --mode=slurm \
      --sbatch=--gpus-per-node=2

Paper (ILSVRC-2012 val): LRN -1.4% top-1; overlapping pooling -0.4%; two towers vs the
one-GPU net -1.7%; PCA lighting > 1% top-1.
"""

from configs import paper


def get_config():
  return paper.get_config()


def sweep():
  return [
      {},  # the paper's network
      {"model.lrn": False},  # no local response normalisation
      {"model.overlapping_pool": False},  # 2x2 stride-2 pooling
      {"model.variant": "one_gpu", "mesh.tower": 1},  # the one-GPU net
      {"augment.lighting_std": 0.0},  # no PCA lighting
  ]
