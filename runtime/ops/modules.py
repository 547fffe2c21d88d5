"""The modules the `norm` and `tensor` param kinds construct in the emitted model.py (ops.Norm, ops.Tensor)."""
from __future__ import annotations

import torch
from torch import nn


class Norm(nn.Module):
    """The weight (and optional bias) of a normalisation, of any rank; the op decides which normalisation."""

    def __init__(self, *shape: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None


class Tensor(nn.Module):
    """A bare learned tensor (a class token, learned position embeddings) held as `.weight`."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
