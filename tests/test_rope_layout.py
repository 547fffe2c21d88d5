"""rope `layout: interleaved` (dims 2i and 2i + 1 turn together, GPT-J's rotate_every_two) against
Transformers' GPT-J function, and its Triton kernel through the interpreter against the PyTorch op."""
from __future__ import annotations

import pytest
import torch

from compiler.pipeline import compile_spec
from runtime import ops
from runtime.context import ForwardContext
from runtime.kernels import import_kernels
from tests.llama_child import llama_child

gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")

INTERLEAVED = """spec: 1
name: interleaved
extends: llama
blocks:
  attention:
    edits:
      - {update: q#3, set: {layout: interleaved}}
      - {update: k#3, set: {layout: interleaved}}
"""


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head_dim, rot", [(16, 16), (16, 8)])
def test_interleaved_rope_equals_gptj(head_dim, rot):
    batch, seq, heads = 2, 7, 3
    pos = torch.arange(seq).expand(batch, -1) + torch.tensor([[0], [4]])
    x = rand(batch, seq, heads, head_dim)                  # GPT-J rotates [B, S, H, D]
    table = gptj.create_sinusoidal_positions(64, rot)[pos]
    sin, cos = torch.split(table, rot // 2, dim=-1)
    want = torch.cat([gptj.apply_rotary_pos_emb(x[..., :rot], sin, cos), x[..., rot:]], dim=-1)
    ours_cos, ours_sin = ops.rope_table(pos, ForwardContext(torch.float32, "cpu"), rot, 10000.0)
    got = ops.rope(x.transpose(1, 2), ours_cos, ours_sin, interleaved=True).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(ops.rope(x.transpose(1, 2), ours_cos, ours_sin).transpose(1, 2), want, atol=1e-3)


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interleaved")
    return compile_spec(llama_child(folder, "interleaved", INTERLEAVED), folder / "art").directory


def test_the_emitted_line_says_interleaved(interleaved):
    assert "ops.rope(q, cos, sin, interleaved=True)" in (interleaved / "model.py").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter test")
@pytest.mark.parametrize("head_dim, rot", [(32, 32), (32, 16)])
def test_the_interleaved_rope_kernel_equals_the_pytorch_op(interleaved, head_dim, rot):
    kernels = import_kernels(interleaved / "kernels.py", interpret=True)
    batch, seq, hq, hk = 2, 5, 4, 2
    q = rand(batch, seq, hq * head_dim).unflatten(-1, (hq, -1)).transpose(1, 2)
    k = rand(batch, seq, hk * head_dim, seed=1).unflatten(-1, (hk, -1)).transpose(1, 2)
    pos = torch.arange(seq).expand(batch, -1) + torch.tensor([[0], [3]])
    cos, sin = ops.rope_table(pos, ForwardContext(torch.float32, "cpu"), rot, 10000.0)
    rq, rk = kernels.rope_q_k(q, k, cos, sin)
    torch.testing.assert_close(rq, ops.rope(q, cos, sin, interleaved=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, ops.rope(k, cos, sin, interleaved=True), rtol=1e-5, atol=1e-5)


def test_q_and_k_rotated_in_different_layouts_get_no_kernel(tmp_path):
    mixed = INTERLEAVED.replace("name: interleaved", "name: mixed").replace(
        "      - {update: k#3, set: {layout: interleaved}}\n", "")
    art = compile_spec(llama_child(tmp_path, "mixed", mixed), tmp_path / "art").directory
    assert "def rope_q_k" not in (art / "kernels.py").read_text()
    assert "ops.rope(q, cos, sin, interleaved=True)" in (art / "model.py").read_text()


def test_the_interleaved_rope_kernel_compiles_ahead_of_time_for_sm80_and_sm90(tmp_path):
    spec = llama_child(tmp_path, "interleaved", INTERLEAVED)
    kernels = compile_spec(spec, tmp_path / "art", {"aot": ["sm_80", "sm_90"]}).manifest["kernels"]
    rope = next(k for k in kernels.values() if k["template"] == "rope")
    for target in ("sm_80", "sm_90"):
        for dtype in ("fp32", "bf16"):
            assert rope["compiled"][target][dtype]["cubin_bytes"] > 0
