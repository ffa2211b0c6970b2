"""Deprecated: moved to :mod:`pmsm_compiler.training.activations` (the training side's subpackage).

Kept because users' code follows the README's earlier ``pmsm_compiler.activations``; this name is the new
module itself, so its classes and functions are the same objects.
"""

import sys
import warnings

from pmsm_compiler.training import activations as _moved

warnings.warn("pmsm_compiler.activations moved to pmsm_compiler.training.activations", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
