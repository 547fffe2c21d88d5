"""The op registry and the PyTorch implementations the emitted model.py calls as `ops.<name>`."""
from . import attention as _attention_ops, elementwise as _elementwise_ops, linear as _linear_ops  # noqa: F401
from . import norms as _norm_ops, rope as _rope_ops, shape_ops as _shape_ops  # noqa: F401
from . import conv as _conv_ops, indexing as _indexing_ops, relative as _relative_ops  # noqa: F401
from .attention import attention
from .elementwise import softcap
from .fused import FusedLinear, Linear
from .norms import layer_norm, rms_norm
from .indexing import concat, keep_positions, positions
from .relative import relative_buckets
from .params import Norm, Tensor
from .registry import OPS, OpDef, get, register
from .rope import rope, rope_table

__all__ = ["OPS", "OpDef", "get", "register", "attention", "softcap", "layer_norm", "rms_norm",
           "rope", "rope_table", "Norm", "Tensor", "concat", "keep_positions", "positions", "relative_buckets", "FusedLinear", "Linear"]
