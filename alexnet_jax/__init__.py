"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) in JAX/Flax."""

import importlib.util as _importlib_util
import sys as _sys


def _load_triton_before_tensorflow():
  """Where triton is installed (PyPI's CUDA builds of torch bring it: requirements-torch.txt),
  load it before TensorFlow: its C extension segfaults the process when it loads after
  TensorFlow's libraries (triton 3.8, TensorFlow 2.21), which torchvision's import and
  torch.compile do. Loaded first, both work. About 0.2 s, and only where triton is installed."""
  if "triton" in _sys.modules or "tensorflow" in _sys.modules:
    return
  try:
    if _importlib_util.find_spec("triton") is None:
      return
    import triton  # noqa: F401
  except Exception:  # a broken triton only matters to code that imports it
    pass


_load_triton_before_tensorflow()
