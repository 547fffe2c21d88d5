"""A rank's slice of a weight, read through its weight rule's transforms without reading the rest.

The rule's transforms run first on lazy stand-ins of the checkpoint tensors (`Piece`: a box of one
mapped tensor, its dims permuted): a transpose or permute reorders dims, a split narrows the box, a
concat joins stand-ins. The rank's slice of a target then narrows its stand-in, and only that box is
read: a box of whole rows is a view of the mapped file (nothing copied), any other box is copied
row-chunk by row-chunk, each chunk's mapped pages given back once copied. A stack (per-expert tensors
as one) keeps each value's stand-in, so a slice of every expert reads only that slice of each. A
transform no box reads through (reshape) reads its inputs whole; the shard pass splits no tensor fed
by such a rule.
"""
from __future__ import annotations

import torch

from runtime.rules import TRANSFORMS, stacking, transform_name
from runtime.safetensors_io import DTYPES
from runtime.weights import CHUNK_BYTES


class Piece:
    """A box of one checkpoint tensor (`box`: [lo, hi) per dim of the source), seen with its dims in
    the order `perm` (view dim i is source dim perm[i]). Nothing is read until `read`."""

    def __init__(self, source: str, box: list[tuple[int, int]], perm: tuple[int, ...], dtype: torch.dtype):
        self.source, self.box, self.perm, self.dtype = source, box, perm, dtype

    @classmethod
    def of(cls, checkpoint, name: str) -> "Piece":
        info = checkpoint.tensors[name]
        return cls(name, [(0, n) for n in info.shape], tuple(range(len(info.shape))), DTYPES[info.dtype])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.box[d][1] - self.box[d][0] for d in self.perm)

    def narrow(self, dim: int, start: int, length: int) -> "Piece":
        src = self.perm[dim]
        box = list(self.box)
        lo = box[src][0] + start
        box[src] = (lo, lo + length)
        return Piece(self.source, box, self.perm, self.dtype)

    def permute(self, order) -> "Piece":
        return Piece(self.source, self.box, tuple(self.perm[i] for i in order), self.dtype)

    def read(self, checkpoint) -> torch.Tensor:
        full = checkpoint.get(self.source)          # a view of the mapped file: nothing read yet
        region = full[tuple(slice(lo, hi) for lo, hi in self.box)]
        if not region.is_contiguous():
            region = _copy_rows(checkpoint, self.source, full, region, self.box[0][0])
        return region.permute(self.perm)


def _copy_rows(checkpoint, source: str, full: torch.Tensor, region: torch.Tensor, first: int) -> torch.Tensor:
    """The box copied out chunk by chunk of source rows, each chunk's mapped pages given back after
    (touched again, they are read from the file again), so the whole source is never resident."""
    out = torch.empty(region.shape, dtype=region.dtype)
    row_bytes = full[0].numel() * full.element_size()
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for a in range(0, region.shape[0], step):
        b = min(region.shape[0], a + step)
        out[a:b].copy_(region[a:b])
        checkpoint.release(source, (first + a) * row_bytes, (first + b) * row_bytes)
    return out


class Joined:
    """Stand-ins concatenated along `dim` (a concat transform)."""

    def __init__(self, parts: list, dim: int):
        self.parts, self.dim = parts, dim
        self.dtype = parts[0].dtype

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.parts[0].shape
        return tuple(sum(p.shape[self.dim] for p in self.parts) if d == self.dim else n for d, n in enumerate(first))

    def narrow(self, dim: int, start: int, length: int):
        if dim != self.dim:
            return Joined([p.narrow(dim, start, length) for p in self.parts], self.dim)
        parts, offset = [], 0
        for p in self.parts:
            n = p.shape[dim]
            lo, hi = max(start, offset), min(start + length, offset + n)
            if hi > lo:
                parts.append(p.narrow(dim, lo - offset, hi - lo))
            offset += n
        return parts[0] if len(parts) == 1 else Joined(parts, dim)

    def permute(self, order):
        return Joined([p.permute(order) for p in self.parts], list(order).index(self.dim))

    def read(self, checkpoint) -> torch.Tensor:
        return torch.cat([p.read(checkpoint) for p in self.parts], dim=self.dim)


class Stacked:
    """Stand-ins stacked along a new dim `dim` (a stack transform: one per value of its placeholder)."""

    def __init__(self, parts: list, dim: int):
        self.parts, self.dim = parts, dim
        self.dtype = parts[0].dtype

    @property
    def shape(self) -> tuple[int, ...]:
        inner = self.parts[0].shape
        return inner[:self.dim] + (len(self.parts),) + inner[self.dim:]

    def narrow(self, dim: int, start: int, length: int):
        if dim == self.dim:
            return Stacked(self.parts[start:start + length], dim)
        inner = dim if dim < self.dim else dim - 1
        return Stacked([p.narrow(inner, start, length) for p in self.parts], self.dim)

    def permute(self, order):
        inner = [o if o < self.dim else o - 1 for o in order if o != self.dim]
        return Stacked([p.permute(inner) for p in self.parts], list(order).index(self.dim))

    def read(self, checkpoint) -> torch.Tensor:
        return torch.stack([p.read(checkpoint) for p in self.parts], dim=self.dim)


class Whole:
    """A tensor already read (after a transform no box reads through)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.dtype = tensor, tensor.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def narrow(self, dim: int, start: int, length: int) -> "Whole":
        return Whole(self.tensor.narrow(dim, start, length))

    def permute(self, order) -> "Whole":
        return Whole(self.tensor.permute(*order))

    def read(self, checkpoint) -> torch.Tensor:
        return self.tensor


def through(rule, items: list, config: dict, checkpoint) -> list:
    """The rule's transforms on stand-ins, in order (what runtime.rules.run_transforms does to tensors).
    A stacking rule's items are its sources value-major; transforms before the stack run per value."""
    transforms = list(rule.transforms)
    st = stacking(rule)
    if st is not None and st[0] == "stack":
        at = next(i for i, t in enumerate(transforms) if transform_name(t)[0] == "stack")
        width = len(rule.sources)
        groups = [_through(rule, transforms[:at], items[i:i + width], config, checkpoint)
                  for i in range(0, len(items), width)]
        items = [Stacked([g[j] for g in groups], st[2] % (len(groups[0][j].shape) + 1)) for j in range(len(groups[0]))]
        transforms = transforms[at + 1:]
    return _through(rule, transforms, items, config, checkpoint)


def _through(rule, transforms: list, items: list, config: dict, checkpoint) -> list:
    for t in transforms:
        name, arg = transform_name(t)
        if name == "transpose":
            items = [x.permute((1, 0)) if len(x.shape) == 2 else x for x in items]
        elif name == "permute":
            items = [x.permute(tuple(arg)) for x in items]
        elif name == "split":
            shapes = TRANSFORMS["split"].shapes([x.shape for x in items], arg, config, len(rule.targets))
            dim, offset, parts = arg["dim"] % len(items[0].shape), 0, []
            for s in shapes:
                parts.append(items[0].narrow(dim, offset, s[dim]))
                offset += s[dim]
            items = parts
        elif name == "concat":
            items = [Joined(items, arg["dim"] % len(items[0].shape))]
        else:
            items = [Whole(x) for x in TRANSFORMS[name].apply([x.read(checkpoint) for x in items], arg, config)]
    return items
