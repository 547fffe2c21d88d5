"""Linears: a CPU-aware `Linear` and the fusion pass's `FusedLinear` (several linears as one matmul)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.context import tracing
from runtime.ops import native_rows
from runtime.measure import reduced_precision_gemm_is_slow


# Up to this many rows (decode steps, short prompts) an fp32 CPU linear is split across the threads.
# MKL runs a matrix-vector product on one thread whatever torch.get_num_threads() says: 17 GB/s of
# weights on this 2-core machine, against 30 GB/s for two halves as one batched GEMM (one per
# thread). Up to 64 rows the split measured faster on every projection of tools.bench's model; beyond, they tie.
SPLIT_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, routed around slow CPU paths (same result up to fp32 summation order).

    - bf16 and fp32, up to native_rows.LINEAR_ROWS rows (32 / 8): the C kernel (native_rows.linear),
      when it is built.
    - fp32, a few more rows: the output columns split into one batched GEMM entry per thread.
    - several rows of bf16/fp16 where this CPU's GEMM in that dtype measured slower than fp32
      (`runtime.measure`; no AVX512-BF16/AMX): an fp32 GEMM over the upcast operands, rounded once
      at the end (fp32 accumulation, as torch's own bf16 GEMM does). A single row stays on
      F.linear, whose bf16 matrix-vector path is threaded and reads the stored width.
    """
    if x.device.type != "cpu" or tracing():    # a traced graph leaves GEMM choices to its compiler
        return F.linear(x, weight, bias)
    few = native_rows.linear(x, weight, bias)
    if few is not None:
        return few
    if x.dtype == torch.float32:
        return _split_linear(x, weight, bias)
    several_rows = x.numel() != x.shape[-1]
    if x.dtype in (torch.bfloat16, torch.float16) and several_rows and reduced_precision_gemm_is_slow(x.dtype):
        y = _split_linear(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(x.dtype)
    return F.linear(x, weight, bias)


def _split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out, k = weight.shape
    rows = x.numel() // max(k, 1)
    parts = max(min(torch.get_num_threads(), out), 1)
    while out % parts:
        parts -= 1
    if parts < 2 or rows > SPLIT_ROWS or k == 0 or not weight.is_contiguous():
        return F.linear(x, weight, bias)
    # weight [out, k] viewed as [parts, out/parts, k]: no copy; part p computes columns p*out/parts...
    y = torch.bmm(x.reshape(1, rows, k).expand(parts, rows, k), weight.view(parts, out // parts, k).transpose(1, 2))
    y = y.view(*x.shape[:-1], out) if rows == 1 else y.transpose(0, 1).reshape(*x.shape[:-1], out)
    return y if bias is None else y + bias


class Linear(nn.Linear):
    """nn.Linear (same params, same checkpoint layout) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedLinear(nn.Module):
    """Several linears reading the same input, as one matmul over their concatenated weights.

    `parts` maps each original param name to its output size, in concatenation order; the loader
    reads those params from the checkpoint through the spec's weight rules and concatenates them on
    dim 0 into `weight` (and `bias`). forward returns one tensor per part (views of one GEMM output).
    """

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool = False):
        super().__init__()
        self.parts = dict(parts)
        self.sizes = list(self.parts.values())
        out = sum(self.sizes)
        self.weight = nn.Parameter(torch.empty(out, in_features))
        self.bias = nn.Parameter(torch.empty(out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)); the parts share fan-in, so one bound serves all
        # (a model built without a checkpoint, runtime.init_random, must not start from uninitialised memory).
        if self.weight.is_meta:
            return
        bound = self.weight.shape[1] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return linear(x, self.weight, self.bias).split(self.sizes, dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, parts={self.parts}, bias={self.bias is not None}"
