"""Modules the emitted code uses for linears: a CPU-aware `Linear` and the fusion pass's `FusedLinear`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _slow_reduced_precision_gemm() -> bool:
    # Without AVX512-BF16 / AMX, torch's bf16 and fp16 GEMMs on CPU run far below its fp32 GEMM
    # (tools.bench, 1 x 512 tokens of Llama-135M on AVX2: 13.4 s in bf16 against 0.74 s in fp32).
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" not in cap and "BF16" not in cap


SLOW_LOW_PRECISION = _slow_reduced_precision_gemm()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, routed around slow reduced-precision CPU GEMMs.

    Several rows of bf16/fp16 on such a CPU: an fp32 GEMM over the upcast operands, rounded once
    at the end (fp32 accumulation, as torch's own bf16 GEMM does). A single row (decode) stays on
    F.linear, whose matrix-vector path is fast and reads the weights at their stored width.
    """
    if (SLOW_LOW_PRECISION and x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu"
            and x.numel() != x.shape[-1]):
        y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(x.dtype)
    return F.linear(x, weight, bias)


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
