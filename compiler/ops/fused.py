"""Modules and helpers the fusion pass's emitted code uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, parts={self.parts}, bias={self.bias is not None}"
