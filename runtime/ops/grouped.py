"""Grouped linears (mixture of experts): each row goes through the expert its index picks, and only
experts some row picks are computed.

The rows (one per token and pick) are sorted by expert, so each expert's rows are contiguous; on CPU
each picked expert is one matmul over its rows, on CUDA one Triton launch covers every picked expert
(runtime/ops/grouped_triton.py). Nothing is computed for an expert no row picked: no dense pass over
all experts with the unpicked ones masked out.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from runtime import native
from runtime.context import tracing
from runtime.ops.linear_layers import linear


def sort_by_expert(index: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, counts): the picks in expert order (stable: rows keep their order within an expert)
    and the number of rows of each expert."""
    flat = index.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= experts):
        raise IndexError(f"grouped_linear: expert index out of range [0, {experts}): "
                         f"{int(flat.min())}..{int(flat.max())}")
    return torch.argsort(flat, stable=True), torch.bincount(flat, minlength=experts)


def grouped_matmul(rows: torch.Tensor, counts: list[int], out_features: int, product) -> torch.Tensor:
    """rows [M, in] sorted by expert (counts[e] rows of expert e) -> [M, out]: product(e, the rows of
    expert e) for each expert some row picked."""
    out = rows.new_empty(rows.shape[0], out_features)
    start = 0
    for e, n in enumerate(counts):
        if n:
            out[start:start + n] = product(e, rows[start:start + n])
            start += n
    return out


def route(module: nn.Module, x: torch.Tensor, index: torch.Tensor, compute) -> torch.Tensor:
    """The grouped product of `module` (num experts of out_features each; GroupedLinear or its
    quantized form): x's rows sorted by the expert each pick names, `compute(rows, counts)` -> their
    outputs in that order, put back in pick order as [..., k, out]."""
    k = index.shape[-1]
    rows = x.reshape(-1, x.shape[-1])
    order, counts = sort_by_expert(index, module.num)
    # a pick's row: its token's row (x per token) or its own (x per pick)
    source = order // k if x.dim() == index.dim() else order
    counts = counts.tolist()
    y = compute(rows.index_select(0, source), counts)
    module.expert_rows.update({e: n for e, n in enumerate(counts) if n})
    out = torch.empty_like(y)
    out[order] = y
    return out.view(*index.shape, module.out_features)


# Up to this many picks (tokens x k: a decode step, a short prompt, a batch) one C call computes
# them all, each picked expert's rows as one product; more (a long prompt) take the sorted path,
# where an expert's many rows may take another kernel (MKL's GEMM, a measured choice for quantized
# ones). Prompts of tools.bench_moe's mixture (top 2 of 8), C call against sorted path, alternated:
# 32 / 64 / 128 tokens 0.84 / 0.85 / 1.01x the time in fp32, 0.66 / 0.74 / 0.74x in int4.
NATIVE_PICKS = 256


class NativePicks:
    """Every pick's product in one C call (runtime/csrc/program.c gs_grouped), with the experts read
    from the index inside it: no sort in Python, no count read into Python, so a recorded decode step
    holds it as one kernel call and replays whatever the router picks. `kernel` (a matrix product of
    runtime/csrc/matmul.c) on `args`: its arguments for one row of expert 0, x and y (at `x_arg`,
    `y_arg`) left None, the row count at `rows_arg`; `strides` per argument, the bytes from one
    expert's weights to the next's (0 for the others); rows of `dtype`; `keep` the tensors the
    arguments point into."""

    def __init__(self, kernel, args: list, strides: list, x_arg: int, y_arg: int, in_features: int,
                 out_features: int, experts: int, dtype: torch.dtype, keep, rows_arg: int = 1):
        lib = native.library()
        index = lib.gs_program_kernel(kernel.__name__.encode(), len(args))
        if index < 0:
            raise ValueError(f"{kernel.__name__} is not a matrix product the grouped kernel can call")
        size = torch.empty((), dtype=dtype).element_size()
        self.words = torch.tensor([index, len(args), x_arg, y_arg, rows_arg, in_features * size, out_features * size,
                                   *[0 if a is None else a for a in args]], dtype=torch.int64)
        self.strides = torch.tensor(strides, dtype=torch.int64)
        self.run, self.experts, self.out_features, self.dtype, self.keep = lib.gs_grouped, experts, out_features, dtype, keep

    @classmethod
    def product(cls, kernel, weight_args, strides, in_features: int, out_features: int, experts: int, keep):
        """For the fp32 products (x, M, K, ldx, *weights, N, y, ldy, threads) of matmul.c."""
        args = [None, 1, in_features, in_features, *weight_args, out_features, None, out_features,
                torch.get_num_threads()]
        return cls(kernel, args, [0] * 4 + list(strides) + [0] * 4, 0, 5 + len(weight_args), in_features,
                   out_features, experts, torch.float32, keep)

    @staticmethod
    def takes(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, in_features: int) -> bool:
        """Rows of `dtype` on the CPU laid out as the index says (one per token or one per pick: the C
        loop reads the rows the index implies), few picks, nothing for autograd to see, not traced."""
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        return (x.dtype == dtype and x.device.type == "cpu" and weight.device.type == "cpu" and not grad
                and x.shape[-1] == in_features and x.shape[:-1] in (index.shape, index.shape[:-1])
                and x.is_contiguous() and index.is_contiguous() and index.dtype == torch.int64
                and 0 < index.numel() <= NATIVE_PICKS and not tracing() and native.available())

    def __call__(self, x: torch.Tensor, index: torch.Tensor, computed: torch.Tensor | None = None) -> torch.Tensor:
        """`computed`: int64 [experts], each expert's rows added (ExpertRows)."""
        y = torch.empty(*index.shape, self.out_features, dtype=self.dtype)
        per_pick = int(x.dim() != index.dim())
        status = native.call(self.run, x, y, index, index.numel(), index.shape[-1], per_pick, self.experts,
                             self.words, self.strides, computed)
        if status == -3:
            raise IndexError(f"grouped_linear: expert index out of range [0, {self.experts})")
        if status == -1:
            raise MemoryError("grouped_linear: no memory for the grouped kernel's rows")
        if status:
            raise RuntimeError(f"grouped_linear: the grouped kernel failed (status {status})")
        return y


class ExpertRows:
    """`expert_rows` of a grouped linear: per expert, the rows it has computed since the module was
    built — what ran, for tests and profiling (reset it freely). The sorted path counts in Python; the
    C path (NativePicks) adds to `rows_computed`, an int64 tensor per expert that the kernel writes (so a
    replayed step counts too), folded in when `expert_rows` is read."""

    def _count_rows(self, num: int) -> None:
        self.__dict__["_expert_rows"] = Counter()
        # on the CPU whatever device the module is built on (a loader builds on "meta"): a counter only
        self.__dict__["rows_computed"] = torch.zeros(num, dtype=torch.int64, device="cpu")

    @property
    def expert_rows(self) -> Counter:
        rows, computed = self.__dict__["_expert_rows"], self.__dict__["rows_computed"]
        if bool(computed.any()):
            rows.update({e: n for e, n in enumerate(computed.tolist()) if n})
            computed.zero_()
        return rows

    @expert_rows.setter
    def expert_rows(self, value) -> None:        # a reset: module.expert_rows = Counter()
        self.__dict__["rows_computed"].zero_()
        self.__dict__["_expert_rows"] = Counter(value)


# the products a float grouped linear's picks take, by weight dtype (those of native_rows.linear)
_PICKS_KERNELS = {torch.float32: "gs_f32_mm", torch.bfloat16: "gs_bf16_linear"}


class GroupedLinear(ExpertRows, nn.Module):
    """`num` linears [out, in] stacked: weight [num, out, in] (bias [num, out]).

    forward(x, index): x [..., in] (one row per token, shared by its k picks) or [..., k, in] (one
    row per pick), index [..., k] -> [..., k, out]. `expert_rows`: see ExpertRows.
    """

    def __init__(self, num: int, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.num, self.in_features, self.out_features = num, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num, out_features)) if bias else None
        self._count_rows(num)
        self.triton = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # each expert as nn.Linear initialises itself: U(-1/sqrt(in), 1/sqrt(in))
        if self.weight.is_meta:
            return
        bound = self.in_features ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (self.bias is None and not self.triton and w.dtype in _PICKS_KERNELS and w.is_contiguous()
                and NativePicks.takes(x, index, w, w.dtype, self.in_features)):
            return self._picks()(x, index, self.rows_computed)

        def compute(picked, counts):
            if x.is_cuda or self.triton:
                from runtime.ops.grouped_triton import grouped_matmul as launch
                return launch(picked, self.weight, self.bias, counts)
            bias = self.bias
            return grouped_matmul(picked, counts, self.out_features,
                                  lambda e, rows: linear(rows, self.weight[e], None if bias is None else bias[e]))
        return route(self, x, index, compute)

    def __getstate__(self):
        # copy.deepcopy and torch.save: the C path's words point into this module's weight
        state = super().__getstate__()
        state.pop("_native_picks", None)
        return state

    def _picks(self) -> NativePicks:
        """The C path's words, rebuilt when the weight or the thread count changed."""
        w = self.weight
        key = (w.data_ptr(), w.dtype, torch.get_num_threads())
        cached = self.__dict__.get("_native_picks")
        if cached is None or cached[0] != key:
            kernel = getattr(native.library(), _PICKS_KERNELS[w.dtype])
            stride = w[0].numel() * w.element_size()
            k, n = self.in_features, self.out_features
            if w.dtype == torch.float32:
                picks = NativePicks.product(kernel, (w.data_ptr(),), [stride], k, n, self.num, w)
            else:        # gs_bf16_linear(x, M, K, ldx, w, bias, N, y, threads): bf16 in and out
                picks = NativePicks(kernel, [None, 1, k, k, w.data_ptr(), None, n, None, torch.get_num_threads()],
                                    [0, 0, 0, 0, stride, 0, 0, 0, 0], 0, 7, k, n, self.num, w.dtype, w)
            self.__dict__["_native_picks"] = cached = (key, picks)
        return cached[1]

    def extra_repr(self) -> str:
        return (f"num={self.num}, in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
