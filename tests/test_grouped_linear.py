"""The grouped expert matmul: the Triton kernel (runtime/ops/grouped_triton.py) under the interpreter
against the unfused per-expert torch ops, a whole MoE model through it against the CPU path, and the
kernel compiled ahead of time for sm_80 and sm_90."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import runtime
from compiler.triton.aot import compile_in_child
from runtime.ops import GroupedLinear, grouped_triton
from tests.aot_checks import assert_compiled
from tests.family_parity import random_ids
from tests.moe_checkpoints import expert_rows

transformers = pytest.importorskip("transformers")
TARGETS = ["sm_80", "sm_90"]


def per_expert_reference(rows, weight, bias, counts):
    """The unfused ops: each expert's rows through F.linear with its weight, concatenated."""
    parts, start = [], 0
    for e, n in enumerate(counts):
        parts.append(F.linear(rows[start:start + n], weight[e], None if bias is None else bias[e]))
        start += n
    return torch.cat(parts)


@pytest.mark.parametrize("counts, k, n, bias", [
    ([3, 0, 17, 1], 32, 24, False),       # an expert with no rows, one crossing the 16-row tile
    ([0, 0, 5], 40, 70, True),            # ragged in and out features, a bias
    ([33, 2], 8, 5, True),                # three tiles of one expert
    ([0, 0, 0], 16, 16, False),           # no rows at all
])
def test_kernel_equals_the_per_expert_linears(counts, k, n, bias):
    gen = torch.Generator().manual_seed(sum(counts) + k)
    rows = torch.randn(sum(counts), k, generator=gen)
    weight = torch.randn(len(counts), n, k, generator=gen) * 0.1
    b = torch.randn(len(counts), n, generator=gen) if bias else None
    got = grouped_triton.grouped_matmul(rows, weight, b, counts)
    torch.testing.assert_close(got, per_expert_reference(rows, weight, b, counts), rtol=0, atol=2e-5)


def test_kernel_writes_bf16_rows_rounded_once():
    gen = torch.Generator().manual_seed(1)
    counts = [4, 9]
    rows = torch.randn(13, 32, generator=gen).bfloat16()
    weight = (torch.randn(2, 20, 32, generator=gen) * 0.1).bfloat16()
    got = grouped_triton.grouped_matmul(rows, weight, None, counts)
    assert got.dtype == torch.bfloat16
    want = per_expert_reference(rows.float(), weight.float(), None, counts).bfloat16()
    # fp32 sums in another order may land on the other side of a rounding boundary: one bf16 ulp
    torch.testing.assert_close(got, want, rtol=2 ** -7, atol=1e-6)


def test_kernel_tiles_cover_each_picked_expert_and_no_other():
    experts, starts, ends = grouped_triton.tiles([3, 0, 40, 0, 1], 16)
    assert experts == [0, 2, 2, 2, 4]
    assert starts == [0, 3, 19, 35, 43] and ends == [3, 43, 43, 43, 44]


def test_module_sends_each_row_to_its_expert_and_counts_only_picked_experts():
    layer = GroupedLinear(5, 6, 4, bias=True)
    x = torch.randn(2, 3, 6)
    index = torch.tensor([[[0, 3], [3, 1], [0, 0]], [[1, 3], [3, 0], [1, 3]]])
    want = torch.einsum("bsi,bsjoi->bsjo", x, layer.weight[index]) + layer.bias[index]
    for triton in (False, True):
        layer.triton = triton
        layer.expert_rows.clear()
        torch.testing.assert_close(layer(x, index), want, rtol=0, atol=2e-5)
        assert layer.expert_rows == {0: 4, 1: 3, 3: 5}      # experts 2 and 4: nothing computed


def test_an_expert_index_out_of_range_is_refused_by_name():
    layer = GroupedLinear(3, 4, 4)
    with pytest.raises(IndexError, match=r"expert index out of range \[0, 3\): 0\.\.3"):
        layer(torch.randn(1, 2, 4), torch.tensor([[[0], [3]]]))


def test_a_mixtral_through_the_kernel_equals_the_cpu_path(tmp_path):
    config = transformers.MixtralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    model = runtime.from_pretrained(tmp_path / "ckpt")
    x = random_ids(97, 2, 7)
    want, want_rows = model(x).logits, expert_rows(model, x)
    for m in model.net.modules():
        if isinstance(m, GroupedLinear):
            m.triton = True
    torch.testing.assert_close(model(x).logits, want, rtol=0, atol=1e-5)
    assert expert_rows(model, x) == want_rows


@pytest.fixture(scope="module")
def compiled():
    return compile_in_child(Path(grouped_triton.__file__), grouped_triton.AOT, TARGETS)


@pytest.mark.parametrize("job", sorted(grouped_triton.AOT))
def test_kernel_compiles_to_ptx_and_cubin_for_sm80_and_sm90(compiled, job):
    assert_compiled(compiled, job, TARGETS)
