"""The fusion pass: groups found from fusion kinds and graph structure, decisions, contracts, -O0."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.errors import SpecError
from compiler.passes import run_pipeline
from compiler.passes.expect_fused import check_expect_fused
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from tests.hf_checkpoints import randomize, save
from tools.cli import main as cli

LLAMA = "specs/llama.yaml"

TOY = """
spec: 1
name: toy
config:
  d: {hf: d, type: int}
blocks: {}
model:
  inputs: {x: [B, S, d], y: [B, S, d], v: [d]}
  params:
    a: {linear: [d, d]}
    b: {linear: [d, d]}
    c: {linear: [d, d]}
  graph:
    - t: {op: scale, x: x, by: 2.0}
    - t: {op: silu, x: t}
    - t: {op: mul, a: t, b: y}
    - u: {op: add, a: t, b: v}
    - p: {op: linear, x: u, w: a}
    - q: {op: linear, x: u, w: b}
    - r: {op: linear, x: u, w: c}
    - o: {op: add, a: p, b: q}
    - o: {op: add, a: o, b: r}
  outputs: [o]
weights:
  - {from: "{p}.weight", to: "{p}.weight"}
"""


def fused_ir(path_or_text, tmp_path=None):
    """The IR right after the fusion pass."""
    if tmp_path is not None:
        path = tmp_path / "toy.yaml"
        path.write_text(path_or_text)
        path_or_text = path
    return run_pipeline(load_spec(path_or_text), until="fuse")


def regions_by_ops(ir, block):
    return {"+".join(m.op for m in n.region.nodes): n.region for n in ir.blocks[block].order() if n.region}


def test_llama_groups_are_found_from_fusion_kinds():
    ir = fused_ir(LLAMA)
    layer = ir.blocks["decoder_layer"]
    norms = [n.region for n in layer.order() if n.region]
    # after the residual adds moved across layer boundaries: [add+rms_norm, attention, add+rms_norm, mlp]
    assert [[m.op for m in r.nodes] for r in norms] == [["add", "rms_norm"], ["add", "rms_norm"]]
    assert [n.op for n in layer.order()] == ["region", "call", "region", "call"]
    assert all(r.template == "row_reduction" for r in norms)
    assert [layer.values[v].name for v in norms[1].outputs] == ["x", "h"]   # new residual and normalised output
    attn = regions_by_ops(ir, "attention")
    assert attn["rope+rope"].template == "rope"
    assert ir.blocks["attention"].params[attn["linear+linear+linear"].fused_param].members == ["q_proj", "k_proj", "v_proj"]
    assert attn["linear+linear+linear"].fused_param == "qkv_proj"
    mlp = regions_by_ops(ir, "mlp")
    assert mlp["silu+mul"].template == "pointwise"
    assert mlp["linear+linear"].fused_param == "gate_up_proj"


def test_every_decision_is_recorded_with_a_reason():
    ir = fused_ir(LLAMA)
    refused = [d for d in ir.decisions if not d.taken]
    taken = [d for d in ir.decisions if d.taken]
    assert taken and refused and all(d.reason for d in ir.decisions)
    assert any("opaque" in d.reason for d in refused)
    assert any(d.rule == "horizontal" and "cos, sin" in d.reason for d in taken)


def test_chains_merge_and_broadcast_operands_are_refused(tmp_path):
    ir = fused_ir(TOY, tmp_path)
    groups = regions_by_ops(ir, "model")
    assert groups["scale+silu+mul"].template == "pointwise"
    assert "linear+linear+linear" in groups and groups["add+add"].template == "pointwise"
    assert any(not d.taken and "broadcast" in d.reason and "v" in d.reason for d in ir.decisions)


FP32_ONLY = """
spec: 1
name: fp32_only
config:
  d: {hf: d, type: int}
blocks: {}
model:
  inputs: {x: [B, S, d], i: {shape: [B, S, d], dtype: int}}
  graph:
    - e: {op: cast, x: i, to: fp32}
    - e: {op: exp, x: e}
    - e: {op: cast, x: e, to: float}
    - y: {op: scale, x: x, by: 2.0}
  outputs: [y, e]
weights: []
"""


def test_a_chain_no_float_value_enters_gets_no_kernel_and_says_why(tmp_path):
    # exp + cast(to float) reads only fp32: a kernel could not tell which float dtype to write
    ir = fused_ir(FP32_ONLY, tmp_path)
    assert list(regions_by_ops(ir, "model")) == ["scale"]
    assert any(not d.taken and d.what == "exp(e) + cast(e)" and "no float value enters" in d.reason
               for d in ir.decisions)


def test_a_tied_projection_is_not_concatenated(tmp_path):
    text = TOY.replace("c: {linear: [d, d]}", "c: {linear: [d, d], tied: {to: a}}")
    ir = fused_ir(text, tmp_path)
    groups = regions_by_ops(ir, "model")
    assert "linear+linear+linear" not in groups
    assert any(not d.taken and "tied" in d.reason for d in ir.decisions)


def test_a_required_fusion_that_did_not_happen_fails_compilation(tmp_path):
    text = TOY + "expect_fused: [scale+silu, linear+add]\n"
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    ir = fused_ir(path)
    with pytest.raises(SpecError) as err:
        check_expect_fused(ir)
    message = str(err.value)
    assert "linear+add" in message and "scale+silu" not in message and "toy.yaml" in message
    with pytest.raises(SpecError):
        compile_spec(path, tmp_path / "out")
    compile_spec(path, tmp_path / "out0", {"fuse": False})   # the contract is about the pass


def test_explain_prints_groups_and_refusals(tmp_path, capsys):
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "a"), "-q", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "group add_rms_norm [row_reduction]: add + rms_norm" in out
    assert "refused" in out and "qkv_proj = concat(q_proj, k_proj, v_proj)" in out
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "b"), "-q", "-O0"]) == 0
    assert "FusedLinear" not in (tmp_path / "b" / "model.py").read_text()
    manifest = compile_spec(LLAMA, tmp_path / "a").manifest
    assert manifest["fusion"]["fused_params"]["attention"] == {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_and_unfused_compiles_compute_the_same_logits(tmp_path, dtype):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    folder = save(randomize(transformers.LlamaForCausalLM(config)), tmp_path / "ckpt")
    fused = runtime.load(compile_spec(LLAMA, tmp_path / "f").directory, folder, dtype=dtype)
    plain = runtime.load(compile_spec(LLAMA, tmp_path / "u", {"fuse": False}).directory, folder, dtype=dtype)
    assert fused.net.layers[0].attn.qkv_proj.weight.shape == (32 + 2 * 16, 32)
    x = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    a, b = fused(x).logits.float(), plain(x).logits.float()
    assert (a - b).abs().max().item() <= (1e-5 if dtype == torch.float32 else 0.05)
    assert fused.generate(x[:1], max_new_tokens=8).tolist() == plain.generate(x[:1], max_new_tokens=8).tolist()


def test_fused_toy_model_computes_what_the_unfused_one_does(tmp_path):
    """Reordered groups, rebound names and a three-way projection, without any checkpoint."""
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    from runtime.artifact import import_model
    from runtime.context import ForwardContext
    outs = []
    for options in ({}, {"fuse": False}):
        result = compile_spec(path, tmp_path / f"toy{len(options)}", options)
        module = import_model(result.directory, result.manifest)
        torch.manual_seed(0)
        net = module.MODEL(module.Config(d=8))
        gen = torch.Generator().manual_seed(1)
        weights = {n: torch.randn(8, 8, generator=gen) for n in ("a", "b", "c")}
        if options:
            for n, w in weights.items():
                getattr(net, n).weight.data.copy_(w)
        else:
            net.abc.weight.data.copy_(torch.cat([weights[n] for n in ("a", "b", "c")]))
        x, y, v = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen), torch.randn(8, generator=gen)
        with torch.no_grad():
            outs.append(net(x, y, v, ForwardContext(torch.float32, "cpu"))["o"])
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5


def test_param_names_avoid_what_the_installed_torch_defines_on_nn_module():
    """The compiler keeps a copy of nn.Module's public attributes (it must not import torch)."""
    import subprocess
    import sys

    from compiler.names import NN_MODULE_ATTRS
    # A fresh process: this one has transformers loaded, which adds nn.Module.smart_apply.
    code = "from torch import nn; print(*(n for n in {*dir(nn.Module), *dir(type(nn.Module))} if n[0] != '_'))"
    public = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    ours = {"training", "cfg", "layer", "tie_weights"}       # what every emitted module sets besides
    assert NN_MODULE_ATTRS - ours == public, "update the copy in compiler/names.py"
