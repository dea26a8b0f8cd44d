"""AlexNet in JAX/Flax (README.md)."""

import os as _os
import sys as _sys

# TensorFlow's C++ log level as the user set it (None: unset), read before any module of the
# package imports JAX: JAX's __init__ sets TF_CPP_MIN_LOG_LEVEL=1 when it is unset, which
# would hide the user's choice from runtime.setup. With JAX imported first (a notebook), a 1
# is taken for JAX's.
TF_LOG_LEVEL_GIVEN = _os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if "jax" in _sys.modules and TF_LOG_LEVEL_GIVEN == "1":
  TF_LOG_LEVEL_GIVEN = None
