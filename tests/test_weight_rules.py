"""Weight-rule transforms: shapes predicted from headers match the tensors, and inverses undo them."""
from __future__ import annotations

import pytest
import torch

from compiler.spec import WeightRule
from runtime.expr import parse_expr
from runtime.rules import (
    fill,
    invert_transforms,
    placeholders,
    run_shapes,
    run_transforms,
    template_regex,
)


def rule(sources, targets, transforms):
    return WeightRule(sources, targets, transforms, None, ())


CASES = [
    ("transpose", ["c"], ["w"], ["transpose"], [(6, 4)]),
    ("split_equal", ["qkv"], ["q", "k", "v"], [{"split": {"dim": 0}}], [(12, 4)]),
    ("split_sizes", ["qkv"], ["q", "k", "v"], [{"split": {"dim": 0, "sizes": [parse_expr("hidden"), 2, 2]}}], [(8, 4)]),
    ("gpt2_c_attn", ["c_attn"], ["q", "k", "v"], ["transpose", {"split": {"dim": 0}}], [(4, 12)]),
    ("concat", ["a", "b"], ["ab"], [{"concat": {"dim": 0}}], [(3, 4), (5, 4)]),
    ("reshape", ["w"], ["w"], [{"reshape": [parse_expr("hidden"), 2, 3]}], [(4, 6)]),
    ("permute", ["w"], ["w"], [{"permute": [2, 0, 1]}], [(2, 3, 5)]),
    # per-expert tensors (three experts) -> one [E, ...] tensor, each transposed first
    ("stack", ["w1"], ["w1"], ["transpose", {"stack": {"over": "e", "dim": 0}}], [(4, 6), (4, 6), (4, 6)]),
    # two tensors per expert (gate, up) for two experts, stacked on dim 1
    ("stack_pairs", ["g", "u"], ["g", "u"], [{"stack": {"over": "e", "dim": 1}}], [(2, 3), (2, 3), (2, 3), (2, 3)]),
    # per-head tensors stacked, then flattened into one projection
    ("stack_heads", ["q"], ["q"], [{"stack": {"over": "h", "dim": 0}}, {"reshape": [6, 4]}], [(2, 4)] * 3),
    # one stacked tensor -> per-expert tensors, each transposed after
    ("unstack", ["w"], ["w"], [{"unstack": {"over": "e", "dim": 0}}, "transpose"], [(3, 6, 4)]),
]


@pytest.mark.parametrize("name, sources, targets, transforms, shapes", CASES, ids=[c[0] for c in CASES])
def test_predicted_shapes_match_and_the_inverse_restores_the_checkpoint(name, sources, targets, transforms, shapes):
    r = rule(sources, targets, transforms)
    config = {"hidden": 4}
    tensors = [torch.randn(s) for s in shapes]
    out = run_transforms(r, tensors, config)
    assert [tuple(t.shape) for t in out] == [tuple(s) for s in run_shapes(r, shapes, config)]
    back = invert_transforms(r, out, config, shapes)
    assert all(torch.equal(a, b) for a, b in zip(back, tensors))


def test_stacking_tensors_of_different_shapes_is_a_shape_error():
    with pytest.raises(ValueError, match="cannot stack tensors of shapes"):
        run_shapes(rule(["w"], ["w"], [{"stack": {"over": "e", "dim": 0}}]), [(4, 6), (4, 5)], {})


def test_a_split_that_does_not_add_up_is_a_shape_error():
    r = rule(["qkv"], ["q", "k", "v"], [{"split": {"dim": 0, "sizes": [4, 4, 4]}}])
    with pytest.raises(ValueError, match="do not add up"):
        run_shapes(r, [(10, 4)], {})


def test_an_uneven_equal_split_is_a_shape_error():
    with pytest.raises(ValueError, match="equal parts"):
        run_shapes(rule(["qkv"], ["q", "k", "v"], [{"split": {"dim": 0}}]), [(10, 4)], {})


def test_a_reshape_to_another_element_count_is_a_shape_error():
    with pytest.raises(ValueError, match="cannot reshape"):
        run_shapes(rule(["w"], ["w"], [{"reshape": [5, 5]}]), [(4, 6)], {})


def test_templates_match_one_segment_per_placeholder():
    rx = template_regex("model.layers.{i}.self_attn.{proj}.weight")
    assert rx.match("model.layers.11.self_attn.q_proj.weight").groupdict() == {"i": "11", "proj": "q_proj"}
    assert rx.match("model.layers.1.x.self_attn.q_proj.weight") is None
    assert rx.match("model.layers.1.self_attn.q.proj.weight") is None
    assert placeholders("a.{i}.{t}") == {"i", "t"}
    assert fill("layers.{i}.{t}", {"i": "3", "t": "bias"}) == "layers.3.bias"
