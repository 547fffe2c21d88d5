"""The op registry: what the compiler knows of each op. The run-time functions the emitted model.py
calls as `ops.<name>` are runtime/ops (each OpDef names its own in `run`)."""
from . import attention as _attention_ops, elementwise as _elementwise_ops, linear as _linear_ops  # noqa: F401
from . import norms as _norm_ops, rope as _rope_ops, shape_ops as _shape_ops  # noqa: F401
from . import conv as _conv_ops, indexing as _indexing_ops, relative as _relative_ops  # noqa: F401
from . import alibi as _alibi_ops, compare as _compare_ops, reduce as _reduce_ops  # noqa: F401
from . import parallel as _parallel_ops  # noqa: F401
from .registry import OPS, OpDef, get, register

__all__ = ["OPS", "OpDef", "get", "register"]
