"""The emitted Triton kernels, run through Triton's interpreter on CPU, against the PyTorch ops they replace.

Irregular row lengths (96, 1000, 1823) exercise the masking; inputs are strided views where the
model hands kernels views (the halves of a fused projection's output). Sizes are otherwise tiny:
the interpreter runs each program in numpy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import runtime
from compiler.ops import OPS
from compiler.pipeline import compile_spec
from runtime import ops
from runtime.artifact import import_model
from runtime.context import ForwardContext, KVCache, SequenceState
from runtime.kernels import import_kernels
from tests.hf_checkpoints import randomize, save

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter tests")

ROWS = [96, 1000, 1823]
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}

TOY = """
spec: 1
name: toy
config:
  d: {hf: d, type: int}
  eps: {hf: eps, type: float, default: 1e-5}
blocks: {}
model:
  inputs: {x: [B, S, d], y: [B, S, d]}
  params:
    ln: {norm: d, bias: true}
    gn: {norm: d}
  graph:
    - t: {op: scale, x: x, by: d ** -0.5}
    - t: {op: gelu, x: t}
    - t: {op: softcap, x: t, cap: 3.0}
    - u: {op: add, a: t, b: y}
    - v: {op: layer_norm, x: u, w: ln, eps: eps}
    - v: {op: relu, x: v}
    - g: {op: gelu, x: y}
    - w: {op: rms_norm, x: g, w: gn, eps: eps, offset: 1.0}
    - o: {op: sub, a: v, b: w}
    - o: {op: mul, a: o, b: u}
  outputs: [o]
weights:
  - {from: "{p}.{t}", to: "{p}.{t}"}
"""


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = compile_spec("specs/llama.yaml", tmp_path_factory.mktemp("k") / "llama").directory
    return import_kernels(directory / "kernels.py", interpret=True)


def rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def close(got, want, dtype):
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16])
def test_pointwise_chain_kernel_reads_strided_halves(llama, n, dtype):
    both = rand(3, 2 * n, dtype=dtype)          # a fused gate/up projection's output
    gate, up = both.split(n, dim=-1)
    close(llama.silu_mul(gate, up), F.silu(gate) * up, dtype)


@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16])
def test_residual_add_and_rms_norm_kernel_writes_both_outputs(llama, n, dtype):
    x, h = rand(2, 3, n, dtype=dtype), rand(2, 3, n, dtype=dtype, seed=1)
    w = (1 + 0.1 * rand(n, seed=2)).to(dtype)
    residual, normed = llama.add_rms_norm(x, h, w, 1e-6)
    close(residual, x + h, dtype)
    close(normed, ops.rms_norm(x + h, w, 1e-6), dtype)
    # the final norm after the last layer's deferred residual add: only the normalised output is written
    close(llama.add_rms_norm_2(x, h, w, 1e-6), ops.rms_norm(x + h, w, 1e-6), dtype)


@pytest.mark.parametrize("head_dim,rot", [(96, 96), (64, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_kernel_rotates_q_and_k_in_one_launch(llama, head_dim, rot, dtype):
    batch, seq, hq, hk = 2, 5, 4, 2
    qkv = rand(batch, seq, (hq + 2 * hk) * head_dim, dtype=dtype)
    q, k, _ = qkv.split([hq * head_dim, hk * head_dim, hk * head_dim], dim=-1)
    q = q.unflatten(-1, (hq, -1)).transpose(1, 2)          # strided, as split_heads leaves it
    k = k.unflatten(-1, (hk, -1)).transpose(1, 2)
    pos = torch.arange(seq).expand(batch, -1) + torch.tensor([[0], [3]])
    cos, sin = ops.rope_table(pos, ForwardContext(dtype, "cpu"), rot, 10000.0)
    rq, rk = llama.rope_q_k(q, k, cos, sin)
    close(rq, ops.rope(q, cos, sin), dtype)
    close(rk, ops.rope(k, cos, sin), dtype)


ATTENTION_CASES = {
    "causal_gqa": dict(hq=4, hk=2, q_len=13, past=0, window=None, padding=False, causal=True),
    "causal_mqa_padding": dict(hq=4, hk=1, q_len=9, past=0, window=None, padding=True, causal=True),
    "sliding_window": dict(hq=2, hk=2, q_len=21, past=0, window=6, padding=False, causal=True),
    "decode_with_cache": dict(hq=4, hk=2, q_len=1, past=17, window=None, padding=False, causal=True),
    "chunk_after_cache_padded": dict(hq=4, hk=2, q_len=3, past=6, window=4, padding=True, causal=True),
    "bidirectional": dict(hq=2, hk=1, q_len=11, past=0, window=None, padding=True, causal=False),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_flash_attention_kernel_matches_sdpa(llama, case, dtype):
    c = ATTENTION_CASES[case]
    batch, head_dim = 2, 24
    total = c["past"] + c["q_len"]
    padding = None
    if c["padding"]:
        padding = torch.ones(batch, total, dtype=torch.bool)
        padding[1, :3] = False          # left padding on row 1
    results = []
    for use_kernel in (True, False):
        cache = KVCache(total) if c["past"] else None
        if cache is not None:           # the past, written by an earlier step
            k0, v0 = rand(batch, c["hk"], c["past"], head_dim, dtype=dtype, seed=7), rand(batch, c["hk"], c["past"], head_dim, dtype=dtype, seed=8)
            cache.update("slot", k0, v0, 0)
        ctx = ForwardContext(dtype, "cpu", {"S": SequenceState(padding, c["past"], cache)})
        q = rand(batch, c["hq"], c["q_len"], head_dim, dtype=dtype, seed=1)
        k = rand(batch, c["hk"], c["q_len"], head_dim, dtype=dtype, seed=2)
        v = rand(batch, c["hk"], c["q_len"], head_dim, dtype=dtype, seed=3)
        fn = llama.attention if use_kernel else ops.attention
        results.append(fn(q, k, v, ctx, "slot", seq="S", causal=c["causal"], scale=head_dim ** -0.5, window=c["window"]))
    got, want = results
    if padding is not None:
        # a padding query that sees no key has no defined output; compare the real queries
        real = padding[:, -c["q_len"]:]
        got, want = got.transpose(1, 2)[real], want.transpose(1, 2)[real]
    close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_of_a_spec_matches_its_groups_pytorch_code(tmp_path, dtype):
    """Pointwise scalars (scale, softcap), gelu, layer_norm with bias + epilogue, rms_norm with offset."""
    spec = tmp_path / "toy.yaml"
    spec.write_text(TOY)
    result = compile_spec(spec, tmp_path / "toy")
    kernels = result.manifest["kernels"]
    # prologue chain + layer_norm + epilogue chain in one kernel; gelu + rms_norm(offset) in another
    assert sorted(g for k in kernels.values() for g in k["groups"]) == [
        "model.gelu_rms_norm", "model.scale_gelu_softcap_add_layer_norm_relu_sub_mul"]
    module = import_model(result.directory, result.manifest)
    for n in (96, 1823):
        torch.manual_seed(n)
        net = module.MODEL(module.Config(d=n, eps=1e-5)).to(dtype)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x, y = rand(2, 3, n, dtype=dtype, seed=1), rand(2, 3, n, dtype=dtype, seed=2)
        ctx = ForwardContext(dtype, "cpu")
        with torch.no_grad():      # the kernels run outside autograd
            module.kernels.force = False
            want = net(x, y, ctx)["o"]
            module.kernels.force = True
            got = net(x, y, ctx)["o"]
            module.kernels.force = None
        close(got, want, dtype)


KERNEL_OPS = Path("tests/specs/kernel_ops.yaml")


@pytest.fixture(scope="module")
def kernel_ops(tmp_path_factory):
    result = compile_spec(KERNEL_OPS, tmp_path_factory.mktemp("ops") / "kernel_ops")
    return result, import_model(result.directory, result.manifest)


def test_every_op_with_a_triton_lowering_enters_a_kernel_of_the_test_spec(kernel_ops):
    """tests/specs/kernel_ops.yaml exists for these kernels: if an op gains a lowering, it joins the spec."""
    result, _ = kernel_ops
    in_kernels = {op for group in result.manifest["fusion"]["groups"]["model"] for op in group["ops"]}
    lowered = {name for name, op in OPS.items()
               if op.triton is not None and op.fusion in ("elementwise", "broadcast", "reduction") and not op.internal}
    # the kernels of TOY and of llama's templates (rope) are tested above
    shipped = {"add", "mul", "scale", "silu", "gelu", "softcap", "rms_norm", "layer_norm", "relu", "rope"}
    assert lowered - shipped <= in_kernels
    groups = {g["name"]: g["template"] for g in result.manifest["fusion"]["groups"]["model"]}
    assert sorted(groups.values()) == ["pointwise", "pointwise", "row_reduction", "row_reduction", "row_reduction"]
    assert set(result.manifest["kernels"]) == set(groups)


@pytest.mark.parametrize("n", [96, 1823])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_of_the_primitive_ops_match_their_groups_pytorch_code(kernel_ops, n, dtype):
    """Pointwise chains through comparisons, where, casts (bool in, bool out, fp32 out) and the row
    reductions softmax, log_softmax and normalize, with prologues. Kernels compute in fp32, so the
    reference is the groups' PyTorch code in fp32 on the same inputs: in bf16, exp then log alone
    rounds a small value away (exp(0.003) is 1.0 in bf16), which the kernel keeps."""
    _, module = kernel_ops
    net = module.MODEL(module.Config(d=n))
    x, y = rand(2, 3, n, dtype=dtype, seed=1), rand(2, 3, n, dtype=dtype, seed=2)
    x[0, 0, :7] = y[0, 0, :7]                     # equal elements, for eq and le
    m = rand(2, 3, n, seed=3) > 0
    try:
        with torch.no_grad():      # the kernels run outside autograd
            module.kernels.force = False
            want = net(x.float(), y.float(), m, ForwardContext(torch.float32, "cpu"))
            module.kernels.force = True
            got = net(x, y, m, ForwardContext(dtype, "cpu"))
    finally:
        module.kernels.force = None
    assert got["flag"].dtype == torch.bool and torch.equal(got["flag"], want["flag"])
    assert got["probs"].dtype == torch.float32
    for name in ("w", "logp", "unit"):
        assert got[name].dtype == dtype
        close(got[name], want[name].to(dtype), dtype)
    close(got["probs"], want["probs"], torch.float32)


def test_tiny_llama_through_the_triton_path_equals_the_unfused_compile(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    folder = save(randomize(transformers.LlamaForCausalLM(config)), tmp_path / "ckpt")
    fused = runtime.load(compile_spec("specs/llama.yaml", tmp_path / "f").directory, folder, triton=True)
    plain = runtime.load(compile_spec("specs/llama.yaml", tmp_path / "u", {"fuse": False}).directory, folder)
    report = fused.kernel_report()
    assert report["decoder_layer.add_rms_norm"] == "triton (interpreter)"
    assert report["attention.attention"] == "triton (interpreter)"
    assert report["attention.qkv_proj"].startswith("torch")
    x = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    try:
        with torch.no_grad():      # the kernels run outside autograd
            assert (fused(x).logits - plain(x).logits).abs().max().item() <= 1e-4
            got, want = fused(x, attention_mask=mask).logits, plain(x, attention_mask=mask).logits
        assert (got[:, 2:] - want[:, 2:]).abs().max().item() <= 1e-4
        assert fused.generate(x[:1], max_new_tokens=6).tolist() == plain.generate(x[:1], max_new_tokens=6).tolist()
    finally:
        sys.modules[type(fused.net).__module__].kernels.force = None


def test_environment_variable_forces_the_triton_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSPEC_TRITON", "1")
    result = compile_spec("specs/llama.yaml", tmp_path / "env")
    module = import_model(result.directory, result.manifest)
    try:
        with torch.no_grad():
            assert module.kernels.enabled(torch.zeros(1))
        assert not module.kernels.enabled(torch.zeros(1)), "under autograd the groups run their PyTorch code"
        assert module.kernels.path_for(torch.device("cpu")) == "triton (interpreter)"
        monkeypatch.delenv("GRAPHSPEC_TRITON")
        assert module.kernels.path_for(torch.device("cpu")) == "torch"
    finally:
        module.kernels.force = None


def test_environment_variable_is_read_when_a_model_is_loaded(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)
    folder = save(randomize(transformers.LlamaForCausalLM(config)), tmp_path / "ckpt")
    artifact = compile_spec("specs/llama.yaml", tmp_path / "a").directory
    try:
        monkeypatch.setenv("GRAPHSPEC_TRITON", "1")
        forced = runtime.load(artifact, folder)
        assert forced.kernel_report()["decoder_layer.add_rms_norm"] == "triton (interpreter)"
        monkeypatch.delenv("GRAPHSPEC_TRITON")
        plain = runtime.load(artifact, folder)
        # the setting belongs to the artifact's module: the latest load decides it
        assert plain.kernel_report()["decoder_layer.add_rms_norm"] == "torch"
        assert forced.kernel_report()["decoder_layer.add_rms_norm"] == "torch"
    finally:
        sys.modules[type(forced.net).__module__].kernels.force = None
