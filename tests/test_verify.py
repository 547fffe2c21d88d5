"""`verify`: the IR's invariants hold after every pass of every shipped spec, and each invariant,
broken on purpose, is caught with the block and node named."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.ir import Node
from compiler.passes import enabled, run_pipeline
from compiler.spec import load_spec
from compiler.verify import IRError, verify
from runtime.expr import parse_expr

SPECS = sorted(Path("specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_pass_of_every_spec_leaves_a_valid_ir(path):
    seen = []
    run_pipeline(load_spec(path), after=lambda name, ir: (verify(ir, after=name), seen.append(name)), verify=False)
    assert seen == enabled()


@pytest.fixture
def llama():
    return run_pipeline(load_spec("specs/llama.yaml"), until="fold_constants")


def first(block, op):
    return next(n for n in block.order() if n.op == op)


def test_a_value_read_before_it_is_defined_is_caught(llama):
    mlp = llama.blocks["mlp"]
    node = first(mlp, "silu")
    node.inputs["x"] = "nowhere"
    with pytest.raises(IRError, match=r"(?s)block 'mlp'.*reads 'nowhere' before any definition"):
        verify(llama, after="a test")


def test_a_value_defined_twice_is_caught(llama):
    mlp = llama.blocks["mlp"]
    silu = first(mlp, "silu")
    mlp.add(Node("extra", "silu", {"x": "up"}, {}, {}, list(silu.outputs), index=99))
    with pytest.raises(IRError, match="defined twice"):
        verify(llama)


def test_edges_that_do_not_mirror_operands_are_caught(llama):
    mlp = llama.blocks["mlp"]
    mul = first(mlp, "mul")
    (edge,) = [(u, v, k) for u, v, k in mlp.graph.in_edges(mul.id, keys=True) if k == mul.inputs["a"]]
    mlp.graph.remove_edge(*edge)
    with pytest.raises(IRError, match="do not mirror its operands"):
        verify(llama)


def test_an_output_type_that_disagrees_with_the_shape_rule_is_caught(llama):
    attention = llama.blocks["attention"]
    q = first(attention, "split_heads")
    q.attrs["heads"] = parse_expr("num_kv_heads")     # the recorded type still says num_heads
    with pytest.raises(IRError, match="its rule says"):
        verify(llama)


def test_an_unused_param_is_caught(llama):
    mlp = llama.blocks["mlp"]
    mlp.params["spare"] = mlp.params["up_proj"]
    with pytest.raises(IRError, match="param 'spare' is used by no node"):
        verify(llama)


def test_a_region_that_hides_a_value_read_after_it_is_caught():
    ir = run_pipeline(load_spec("specs/llama.yaml"), until="fuse")
    mlp = ir.blocks["mlp"]
    region = next(n for n in mlp.order() if n.region is not None and n.region.fused_param is None).region
    region.outputs.clear()
    with pytest.raises(IRError, match="region silu_mul"):
        verify(ir)


def test_a_cycle_is_caught(llama):
    mlp = llama.blocks["mlp"]
    silu, mul = first(mlp, "silu"), first(mlp, "mul")
    mlp.graph.add_edge(mul.id, silu.id, key="h")
    with pytest.raises(IRError, match="cycle"):
        verify(llama)
