"""A rank's slice of a weight read through its weight rule's transforms (runtime/parallel/slices.py) is
the slice of what the rule makes of the whole tensors, whatever the layout: a transposed fused
tensor split in three (GPT-2's c_attn), a split of unequal parts (Phi-3's qkv_proj), a concat, a
permute, a reshape, per-expert tensors stacked; a slice of whole rows is a view of the mapped file, nothing copied."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from runtime.expr import parse_expr
from runtime.interface import WeightRule
from runtime.rules import run_transforms
from runtime.parallel.slices import Piece, through
from runtime.safetensors_io import open_checkpoint

CONFIG = {"heads": 4, "kv_heads": 2, "head_dim": 3}


@pytest.fixture
def checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"c_attn": torch.randn(8, 36, generator=gen),          # [in, 3 * out], stored transposed
               "qkv": torch.randn(24, 8, generator=gen),             # q 12 rows, k 6, v 6
               "a": torch.randn(5, 8, generator=gen), "b": torch.randn(7, 8, generator=gen),
               "cube": torch.randn(2, 3, 4, generator=gen),
               **{f"e{e}.{w}": torch.randn(6, 8, generator=gen) for e in range(3) for w in ("up", "down")}}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with open_checkpoint(tmp_path) as ckpt:
        yield ckpt, tensors


def rule(sources, targets, transforms):
    return WeightRule(tuple(sources), tuple(targets), tuple(transforms), None, None)


RULES = [
    rule(["c_attn"], ["q", "k", "v"], ["transpose", {"split": {"dim": 0}}]),
    rule(["qkv"], ["q", "k", "v"], [{"split": {"dim": 0, "sizes": [parse_expr("heads * head_dim"),
                                                                   parse_expr("kv_heads * head_dim"),
                                                                   parse_expr("kv_heads * head_dim")]}}]),
    rule(["a", "b"], ["ab"], [{"concat": {"dim": 0}}]),
    rule(["a", "b"], ["ab_t"], [{"concat": {"dim": 0}}, "transpose"]),
    rule(["cube"], ["c"], [{"permute": [2, 0, 1]}]),
    rule(["cube"], ["r"], [{"reshape": [parse_expr("6"), parse_expr("4")]}]),
]
# per-expert tensors (e0.up, e0.down, e1.up, ...: value-major) stacked, with transforms before and after
STACKED = [
    rule(["e{e}.up", "e{e}.down"], ["up", "down"], [{"stack": {"over": "e", "dim": 0}}]),
    rule(["e{e}.up"], ["up_t"], ["transpose", {"stack": {"over": "e", "dim": 1}}, {"permute": [2, 0, 1]}]),
]


def sources(r):
    """A rule's checkpoint tensors, value-major over 3 experts for a stacking rule."""
    if "{e}" not in r.sources[0]:
        return list(r.sources)
    return [s.replace("{e}", str(e)) for e in range(3) for s in r.sources]


@pytest.mark.parametrize("r", RULES + STACKED, ids=lambda r: "+".join(str(t) for t in r.transforms))
def test_every_slice_of_every_target_is_the_slice_of_the_transformed_whole(checkpoint, r):
    ckpt, _ = checkpoint
    whole = run_transforms(r, [ckpt.get(s) for s in sources(r)], CONFIG)
    for target, lazy in zip(whole, through(r, [Piece.of(ckpt, s) for s in sources(r)], CONFIG, ckpt)):
        assert tuple(lazy.shape) == tuple(target.shape)
        assert torch.equal(lazy.read(ckpt), target)
        for dim in range(target.dim()):
            n = target.shape[dim]
            for start, length in ((0, n // 2), (n // 2, n - n // 2), (1, max(n - 2, 0))):
                got = lazy.narrow(dim, start, length).read(ckpt)
                assert torch.equal(got, target.narrow(dim, start, length)), (dim, start, length)


def test_a_slice_of_whole_rows_is_a_view_of_the_mapped_file(checkpoint):
    ckpt, tensors = checkpoint
    mapped = ckpt.get("qkv")
    (q, k, v) = through(RULES[1], [Piece.of(ckpt, "qkv")], CONFIG, ckpt)
    rows = k.narrow(0, 3, 3).read(ckpt)                     # rows 15..17 of the file's tensor
    assert rows.data_ptr() == mapped.data_ptr() + 15 * 8 * mapped.element_size()
    assert torch.equal(rows, tensors["qkv"][15:18])
    columns = Piece.of(ckpt, "qkv").narrow(1, 2, 4).read(ckpt)   # not contiguous there: copied
    assert not (mapped.data_ptr() <= columns.data_ptr() < mapped.data_ptr() + mapped.nbytes)
    assert torch.equal(columns, tensors["qkv"][:, 2:6])
