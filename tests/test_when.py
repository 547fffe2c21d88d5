"""`when:` on params, graph lines and block uses: per config (a run-time branch in model.py, params
built only where they exist), per layer (through `layer`), and decided at compile time when constant.
Numbers are proven against Transformers: the same artifact computes Llama with the switches off and
Qwen3 (per-head q/k norms) with them on."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import runtime
from compiler.errors import SpecError
from compiler.lower import lower
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from runtime.errors import CheckpointError
from tests.family_parity import TOL, max_logit_diff, random_ids
from tests.hf_checkpoints import randomize, rewrite_config, save
from tests.llama_child import llama_child

transformers = pytest.importorskip("transformers")

# Llama with two switches read from config.json: per-head q/k RMSNorm before RoPE, and a parallel
# residual (attention and MLP both read the layer's input, as GPT-J and Pythia do).
SWITCHES = """
config:
  use_qk_norm: bool = false
  parallel: bool = false
  qk_norm_layers: int = num_layers
blocks:
  attention:
    params:
      q_norm: {norm: head_dim, when: QK_WHEN}
      k_norm: {norm: head_dim, when: QK_WHEN}
    edits:
      - insert:
          - q: {op: rms_norm, x: q, w: q_norm, eps: rms_norm_eps, when: QK_WHEN}
          - k: {op: rms_norm, x: k, w: k_norm, eps: rms_norm_eps, when: QK_WHEN}
        before: q#3
  decoder_layer:
    graph:
      - h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}
      - a: {op: call, block: attn, x: h, cos: cos, sin: sin}
      - x: {op: add, a: x, b: a, when: not parallel}
      - h: {op: rms_norm, x: x, w: mlp_norm, eps: rms_norm_eps}
      - h: {op: call, block: mlp, x: h}
      - x: {op: add, a: x, b: a, when: parallel}
      - x: {op: add, a: x, b: h}
"""
CONFIG = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)


def child(folder: Path, body: str, name: str = "switches") -> Path:
    return llama_child(folder, name, f"spec: 1\nname: {name}\nextends: llama\n" + textwrap.dedent(body))


@pytest.fixture(scope="module")
def switches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("switches")
    return compile_spec(child(folder, SWITCHES.replace("QK_WHEN", "use_qk_norm")), folder / "art").directory


def reference(folder: Path, family: str, seed: int = 0, **config):
    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[family]
    model = randomize(model_cls(cfg_cls(**{**CONFIG, **config})), seed)
    return model, save(model, folder)


def ids(batch=2, length=9, seed=0):
    return random_ids(CONFIG["vocab_size"], batch, length, seed)


def test_a_config_switch_is_a_run_time_branch_and_a_param_built_only_where_it_holds(switches):
    source = (switches / "model.py").read_text()
    assert "self.q_norm = ops.Norm(cfg.head_dim) if cfg.use_qk_norm else None" in source
    assert "        if cfg.use_qk_norm:\n            q = ops.rms_norm(q, self.q_norm.weight" in source
    assert "        if not cfg.parallel:\n            x = x + a" in source
    assert "        if cfg.parallel:\n            x = x + a" in source


def test_switches_off_compute_llama_and_q_k_norms_on_compute_qwen3(tmp_path, switches):
    llama, folder = reference(tmp_path / "llama", "llama")
    ours = runtime.load(switches, folder)
    assert ours.net.layers[0].attn.q_norm is None
    assert max_logit_diff(llama, ours, ids()) <= TOL
    qwen3, folder = reference(tmp_path / "qwen3", "qwen3")
    rewrite_config(folder, lambda data: data.update(use_qk_norm=True))
    ours = runtime.load(switches, folder)
    assert max_logit_diff(qwen3, ours, ids()) <= TOL
    have = ours.generate(ids(batch=1, length=5, seed=1), max_new_tokens=8)
    want = qwen3.generate(ids(batch=1, length=5, seed=1), max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert have.tolist() == want.tolist()


def test_the_parallel_residual_adds_attention_and_mlp_of_the_same_input(tmp_path, switches):
    """Against a spec that writes the parallel layer out without any `when`."""
    plain = child(tmp_path, """
        blocks:
          decoder_layer:
            graph:
              - h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}
              - a: {op: call, block: attn, x: h, cos: cos, sin: sin}
              - h: {op: rms_norm, x: x, w: mlp_norm, eps: rms_norm_eps}
              - h: {op: call, block: mlp, x: h}
              - x: {op: add, a: x, b: a}
              - x: {op: add, a: x, b: h}
    """, name="parallel")
    _, folder = reference(tmp_path / "ckpt", "llama")
    rewrite_config(folder, lambda data: data.update(parallel=True))
    written_out = runtime.load(compile_spec(plain, tmp_path / "plain").directory, folder)
    switched = runtime.load(switches, folder)
    x = ids()
    assert torch.equal(switched(x).logits, written_out(x).logits)
    rewrite_config(folder, lambda data: data.update(parallel=False))
    assert not torch.allclose(runtime.load(switches, folder)(x).logits, written_out(x).logits)


def test_tensors_of_a_param_that_does_not_exist_are_unexpected_and_one_that_does_is_missing(tmp_path, switches):
    _, folder = reference(tmp_path / "qwen3", "qwen3")
    with pytest.raises(CheckpointError, match=r"self_attn\.q_norm\.weight \(maps to layers\.0\.attn\.q_norm\.weight, "
                                              r"which this config does not have\)"):
        runtime.load(switches, folder)
    _, folder = reference(tmp_path / "llama", "llama")
    rewrite_config(folder, lambda data: data.update(use_qk_norm=True))
    with pytest.raises(CheckpointError, match=r"missing[\s\S]*layers\.0\.attn\.q_norm\.weight"):
        runtime.load(switches, folder)


def test_a_per_layer_when_builds_the_param_in_the_layers_where_it_holds(tmp_path):
    spec = child(tmp_path, SWITCHES.replace("QK_WHEN", "layer < qk_norm_layers"))
    art = compile_spec(spec, tmp_path / "art").directory
    source = (art / "model.py").read_text()
    assert "self.q_norm = ops.Norm(cfg.head_dim) if self.layer < cfg.qk_norm_layers else None" in source
    qwen3, folder = reference(tmp_path / "qwen3", "qwen3")
    assert max_logit_diff(qwen3, runtime.load(art, folder), ids()) <= TOL      # every layer: Qwen3
    rewrite_config(folder, lambda data: data.update(qk_norm_layers=1))
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.q_norm\.weight \(maps to"):
        runtime.load(art, folder)
    llama, folder = reference(tmp_path / "llama", "llama")
    rewrite_config(folder, lambda data: data.update(qk_norm_layers=0))
    assert max_logit_diff(llama, runtime.load(art, folder), ids()) <= TOL      # no layer: Llama


def test_a_constant_when_is_decided_at_compile_time(tmp_path):
    spec = child(tmp_path, SWITCHES.replace("QK_WHEN", "1 > 2").replace("when: not parallel", "when: true"))
    ir = lower(load_spec(spec))
    attention = ir.blocks["attention"]
    assert "q_norm" not in attention.params and [n.op for n in attention.order()].count("rms_norm") == 0
    layer = ir.blocks["decoder_layer"]
    adds = [n for n in layer.order() if n.op == "add"]
    assert [bool(n.when) for n in adds] == [False, True, False]


@pytest.mark.parametrize("edit, message", [
    # the param exists only under the condition, the line using it runs everywhere
    (("- q: {op: rms_norm, x: q, w: q_norm, eps: rms_norm_eps, when: QK_WHEN}",
      "- q: {op: rms_norm, x: q, w: q_norm, eps: rms_norm_eps}"),
     "param 'q_norm' exists only when `use_qk_norm`; this line needs `when: use_qk_norm`"),
    # a new value under `when`, read where it may not exist
    (("- x: {op: add, a: x, b: a, when: parallel}",
      "- p: {op: add, a: x, b: a, when: parallel}\n      - x: {op: add, a: p, b: x}"),
     "value 'p' exists only when `parallel` (it is defined under `when` at blocks.decoder_layer.graph[5].p)"),
    # the only line reading a param is decided false
    (("- k: {op: rms_norm, x: k, w: k_norm, eps: rms_norm_eps, when: QK_WHEN}",
      "- k: {op: rms_norm, x: k, w: k_norm, eps: rms_norm_eps, when: false}"),
     "param 'k_norm' is used only by lines whose `when` is false here"),
])
def test_conditions_that_do_not_hold_together_are_explained_at_the_line(tmp_path, edit, message):
    body = SWITCHES.replace(*edit).replace("QK_WHEN", "use_qk_norm")
    with pytest.raises(SpecError) as info:
        lower(load_spec(child(tmp_path, body)))
    assert message in str(info.value)
    assert "switches.yaml:" in str(info.value)


def test_an_output_that_exists_only_under_a_condition_is_refused(tmp_path):
    spec = child(tmp_path, """
        config:
          extra: bool = false
        blocks:
          mlp:
            graph:
              - gate: {op: linear, x: x, w: gate_proj}
              - up:   {op: linear, x: x, w: up_proj}
              - gate: {op: silu, x: gate}
              - h:    {op: mul, a: gate, b: up}
              - y:    {op: linear, x: h, w: down_proj}
              - z:    {op: silu, x: y, when: extra}
            outputs: [z]
    """)
    with pytest.raises(SpecError, match="output 'z' exists only when `extra`; a block's outputs always exist"):
        lower(load_spec(spec))


@pytest.fixture
def switches_ir(tmp_path):
    return load_spec(child(tmp_path, SWITCHES.replace("QK_WHEN", "use_qk_norm")))


def test_every_pass_keeps_the_conditions_valid(switches_ir):
    from compiler.passes import enabled, run_pipeline
    from compiler.verify import verify
    seen = []
    run_pipeline(switches_ir, after=lambda name, ir: (verify(ir, after=name), seen.append(name)), verify=False)
    assert seen == enabled()


@pytest.mark.parametrize("breakage, message", [
    ("drop the kept value", "exists only when use_qk_norm, outside that condition"),
    ("keep a value of another type", "which is conditional or of another type"),
    ("use the param everywhere", "uses param 'q_norm' outside its condition"),
])
def test_broken_conditions_are_caught_by_verify(switches_ir, breakage, message):
    from compiler.passes import run_pipeline
    from compiler.verify import IRError, verify
    ir = run_pipeline(switches_ir, until="fold_constants")
    attention = ir.blocks["attention"]
    norm = next(n for n in attention.order() if n.op == "rms_norm" and "q_norm" in n.params.values())
    if breakage == "drop the kept value":
        norm.orelse.clear()
    elif breakage == "keep a value of another type":
        out = norm.outputs[0]
        attention.graph.remove_node(norm.id)
        norm.orelse[out] = "x"
        attention.add(norm)
    else:
        norm.when = ()
        norm.orelse.clear()
    with pytest.raises(IRError, match=message):
        verify(ir)


EXTRA = SWITCHES.replace("QK_WHEN", "use_qk_norm") + """
  extra_layer:
    inputs: {x: [B, S, hidden_size]}
    params:
      extra: {block: mlp, when: extra_mlp}
    graph:
      - x: {op: call, block: extra, x: x, when: extra_mlp}
    outputs: [x]
expect_fused: []     # the layer ends with a call now: its residual add is not carried into the next
weights:
  - {from: "model.layers.{i}.extra.{proj}.{t}", to: "layers.{i}.ext.extra.{proj}.{t}"}
"""


def test_a_block_use_under_when_is_built_and_called_only_where_it_holds(tmp_path):
    text = EXTRA.replace("  parallel: bool = false\n", "  parallel: bool = false\n  extra_mlp: bool = false\n")
    text = text.replace("      - x: {op: add, a: x, b: h}\n", "      - x: {op: add, a: x, b: h}\n      - x: {op: call, block: ext, x: x}\n")
    text = text.replace("  decoder_layer:\n", "  decoder_layer:\n    params:\n      ext: {block: extra_layer}\n")
    spec = child(tmp_path, text)
    art = compile_spec(spec, tmp_path / "art").directory
    source = (art / "model.py").read_text()
    assert "self.extra = Mlp(cfg) if cfg.extra_mlp else None" in source
    assert "        if cfg.extra_mlp:\n            x = self.extra(x)" in source
    llama, folder = reference(tmp_path / "llama", "llama")
    ours = runtime.load(art, folder)
    assert ours.net.layers[0].ext.extra is None
    assert max_logit_diff(llama, ours, ids()) <= TOL
    rewrite_config(folder, lambda data: data.update(extra_mlp=True))
    with pytest.raises(CheckpointError, match=r"missing[\s\S]*layers\.0\.ext\.extra\.gate_proj\.weight"):
        runtime.load(art, folder)


def test_no_op_may_name_a_field_like_a_key_every_line_carries():
    from compiler.ops import OPS
    from compiler.ops.registry import Attr, OpDef, register
    op = OpDef(name="with_a_when", doc="", operands=("x",), infer=lambda ctx: [ctx["x"]], emit=lambda e: e["x"],
               attrs=(Attr("when", "expr"),))
    with pytest.raises(ValueError, match=r"field\(s\) \['when'\] are keys every graph line may carry"):
        register(op)
    assert "with_a_when" not in OPS
