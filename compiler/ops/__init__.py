"""The op registry and the PyTorch implementations the emitted model.py calls as `ops.<name>`."""
from . import attention as _attention_ops, elementwise as _elementwise_ops, linear as _linear_ops  # noqa: F401
from . import norms as _norm_ops, rope as _rope_ops, shape_ops as _shape_ops  # noqa: F401
from . import conv as _conv_ops, indexing as _indexing_ops, relative as _relative_ops  # noqa: F401
from .attention import attention
from .elementwise import softcap
from .norms import layer_norm, rms_norm
from .indexing import concat, keep_positions, positions
from .relative import relative_buckets
from .registry import OPS, OpDef, get, register
from .rope import rope, rope_table

__all__ = ["OPS", "OpDef", "get", "register", "attention", "softcap", "layer_norm", "rms_norm",
           "rope", "rope_table", "Norm", "Tensor", "concat", "keep_positions", "positions", "relative_buckets", "FusedLinear", "Linear"]


def __getattr__(name: str):
    # The nn.Module subclasses the emitted model.py builds (ops.Linear(...), ops.Norm(...)) need torch
    # to be defined, and importing torch is over half of a cold compile, which never uses them: they
    # load on first use (PEP 562). The op modules' functions import torch on first use too (LazyModule).
    if name in ("FusedLinear", "Linear"):
        from . import fused as module
    elif name in ("Norm", "Tensor"):
        from . import param_modules as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
