"""The run-time library of the emitted model.py (`from runtime import ops`): every function and
module it calls as `ops.<name>`. The compiler's op table (compiler/ops) names these in `OpDef.run`."""
from runtime.ops.alibi import alibi_slopes
from runtime.ops.attention import attention
from runtime.ops.grouped import GroupedLinear
from runtime.ops.linear_layers import FusedLinear, Linear, linear
from runtime.ops.modules import Norm, Tensor
from runtime.ops.norms import layer_norm, rms_norm
from runtime.ops.parallel import all_gather, all_reduce, embedding_shard
from runtime.ops.rotary import rope, rope_table
from runtime.ops.sequence import keep_positions, last_positions, positions, relative_buckets
from runtime.ops.tensors import concat, dropout, reduce_sum, silu, softcap, softmax, topk

__all__ = ["alibi_slopes", "attention", "FusedLinear", "GroupedLinear", "Linear", "linear", "Norm", "Tensor", "layer_norm", "rms_norm", "rope",
           "rope_table", "keep_positions", "last_positions", "positions", "relative_buckets", "concat", "dropout", "silu", "softcap",
           "softmax", "topk", "reduce_sum",
           "all_gather", "all_reduce", "embedding_shard"]
