"""The shard pass (`--tp N`): the tensor-parallel plan it derives from each spec's graph, the IR it
leaves (valid after every pass, model.py reading plainly), its report, and what loading checks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import runtime
from compiler.passes import NAMES, run_pipeline
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from compiler.verify import verify
from runtime.errors import ArtifactError, ConfigError
from tests.hf_checkpoints import randomize, save
from tools.cli import main as cli

SPECS = sorted(Path("specs").glob("*.yaml"))


def plan(spec: str, tp: int = 2):
    return run_pipeline(load_spec(spec), {"tp": tp}).parallel


def split_of(p) -> dict[str, int]:
    return {s.tensor: s.dim for s in p.split}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_pass_of_every_spec_with_tp_and_quant_leaves_a_valid_ir(path):
    seen = []
    run_pipeline(load_spec(path), {"tp": 2, "quant": "int8"},
                 after=lambda name, ir: (verify(ir, after=name), seen.append(name)), verify=False)
    assert seen == NAMES


def test_llama_projections_split_into_heads_and_intermediate_are_column_parallel_and_merge_back_row_parallel():
    p = plan("specs/llama.yaml")
    split = split_of(p)
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert split[f"layers.{{i}}.attn.{proj}.weight"] == 0 and split[f"layers.{{i}}.attn.{proj}.bias"] == 0
    for proj in ("gate_proj", "up_proj"):
        assert split[f"layers.{{i}}.mlp.{proj}.weight"] == 0
    assert split["layers.{i}.attn.o_proj.weight"] == 1 and split["layers.{i}.mlp.down_proj.weight"] == 1
    # a row-parallel bias is added once: rank 0 holds it, the all-reduce sums it in
    assert set(p.rank0) == {"layers.{i}.attn.o_proj.bias", "layers.{i}.mlp.down_proj.bias"}
    assert split["embed.weight"] == 0 and split["lm_head.weight"] == 0            # vocab-parallel
    assert p.replicated["layers.{i}.attn_norm.weight"] == "rms_norm(h) (llama.yaml:79) reads it whole"
    assert set(p.replicated) == {"layers.{i}.attn_norm.weight", "layers.{i}.mlp_norm.weight", "norm.weight"}
    assert [(c.block, c.op, c.value) for c in p.collectives] == [
        ("mlp", "all_reduce", "y"), ("attention", "all_reduce", "y"),
        ("model", "all_reduce", "x"), ("model", "all_gather", "logits")]
    assert [str(c.that) for c in p.checks][1:] == ["num_heads % tp_size == 0",
                                                    "num_kv_heads % tp_size == 0 or tp_size % num_kv_heads == 0"]


def test_key_value_heads_follow_the_query_heads_each_rank_needs():
    """Rank r's kv heads are those its q heads read: 4 q heads over 2 kv heads on 4 ranks give each
    rank one q head and the kv head of its pair (ranks 0, 1: kv 0; ranks 2, 3: kv 1)."""
    ir = run_pipeline(load_spec("specs/llama.yaml"), {"tp": 4})
    k = next(s for s in ir.parallel.split if s.tensor == "layers.{i}.attn.k_proj.weight")
    from runtime.config import resolve_config
    from runtime.interface import parse_interface
    from compiler.interface import build_interface
    interface = parse_interface(build_interface(ir, "llama.yaml"))
    hf = {"vocab_size": 10, "hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2}
    slices = []
    for rank in range(4):
        config = resolve_config(interface, hf, overrides={"tp_size": 4, "tp_rank": rank})
        slices.append((k.start.evaluate(config), k.length.evaluate(config), config["local_num_heads"]))
    assert slices == [(0, 8, 1), (0, 8, 1), (8, 8, 1), (8, 8, 1)]       # head_dim 8


def test_gpt2_fused_transposed_c_attn_targets_split_and_positions_stay_whole():
    p = plan("specs/gpt2.yaml")
    split = split_of(p)
    assert all(split[f"h.{{i}}.attn.{x}_proj.weight"] == 0 for x in "qkv")
    assert split["h.{i}.attn.o_proj.weight"] == 1 and split["h.{i}.mlp.c_proj.weight"] == 1
    assert split["wte.weight"] == 0 and split["lm_head.weight"] == 0
    assert "not the vocabulary" in p.replicated["wpe.weight"]


@pytest.mark.parametrize("spec, attn", [("gpt_neox", "layers.{i}.attention"), ("bloom", "h.{i}.self_attention")])
def test_per_head_fused_query_key_value_splits_by_whole_heads_and_dense_is_row_parallel(spec, attn):
    p = plan(f"specs/{spec}.yaml")
    split = {s.tensor: s for s in p.split}
    qkv = split[f"{attn}.query_key_value.weight"]
    # rows laid out [heads, 3, head_dim]: a rank's rows are its heads' q, k and v together
    rank = {"head_dim": 16, "local_num_heads_start": 2, "local_num_heads": 1}
    assert (qkv.dim, qkv.start.evaluate(rank), qkv.length.evaluate(rank)) == (0, 2 * 3 * 16, 3 * 16)
    assert split[f"{attn}.query_key_value.bias"].dim == 0
    assert split[f"{attn}.dense.weight"].dim == 1
    assert f"{attn}.dense.bias" in p.rank0
    assert any(c.block == "attention" and c.op == "all_reduce" for c in p.collectives)


def test_alibi_slopes_of_a_split_attention_are_those_of_the_ranks_own_heads():
    ir = run_pipeline(load_spec("specs/bloom.yaml"), {"tp": 2})
    node = next(n for n in ir.model.order() if n.op == "alibi_slopes")
    assert {k: str(v) for k, v in node.attrs.items()} == {
        "heads": "num_heads", "first": "local_num_heads_start", "count": "local_num_heads"}


def test_t5_relative_position_biases_split_by_head_with_the_attention_they_feed():
    split = split_of(plan("specs/t5.yaml"))
    assert split["encoder.rel_bias.weight"] == 1 and split["dec_bias.weight"] == 1     # [buckets, heads]
    assert split["dec_layers.{i}.cross_kv.k.weight"] == 0 and split["dec_layers.{i}.cross_attn.o.weight"] == 1
    assert split["shared.weight"] == 0


def test_mixtral_experts_split_their_features_within_every_expert_and_the_router_stays_whole():
    p = plan("specs/mixtral.yaml")
    split = split_of(p)
    # weights [experts, out, in]: w1 and w3 column-parallel, w2 row-parallel; no rank holds a whole expert
    assert split["layers.{i}.mlp.experts.w1.weight"] == 1 and split["layers.{i}.mlp.experts.w3.weight"] == 1
    assert split["layers.{i}.mlp.experts.w2.weight"] == 2
    assert "softmax(probs)" in p.replicated["layers.{i}.mlp.gate.weight"]
    assert ("experts", "all_reduce", "y") in [(c.block, c.op, c.value) for c in p.collectives]


def test_an_op_without_a_parallel_form_keeps_what_it_reads_whole():
    p = plan("specs/vit.yaml")
    line = next(n for n, text in enumerate(Path("specs/vit.yaml").read_text().splitlines(), 1) if "op: conv2d" in text)
    assert p.replicated["patch_embed.weight"] == f"conv2d(x) (vit.yaml:{line}) has no parallel form"


TINY = """\
spec: 1
name: tiny
doc: an embedding, a two-layer MLP, a head
matches: {model_type: [tiny]}
config:
  vocab_size: {hf: vocab_size, type: int}
  hidden: {hf: hidden, type: int}
  inner: {hf: inner, type: int}
blocks: {}
model:
  inputs:
    input_ids: {shape: [B, S], dtype: int}
  params:
    embed: {embedding: [vocab_size, hidden]}
    up: {linear: [hidden, inner]}
    down: {linear: [inner, hidden]}
    head: {linear: [hidden, vocab_size]}
  graph:
    - x: {op: embedding, ids: input_ids, w: embed}
    - h: {op: linear, x: x, w: up}
    - h: {op: relu, x: h}
    - y: {op: linear, x: h, w: down}
    - y: {op: add, a: x, b: y}
    - logits: {op: linear, x: y, w: head}
  outputs: [logits]
weights:
  - {from: "embed", to: "embed.weight"}
  - {from: "up", to: "up.weight", transforms: [{reshape: [inner, hidden]}]}
  - {from: "down", to: "down.weight"}
  - {from: "head", to: "head.weight"}
"""


def test_a_weight_rule_no_slice_reads_through_keeps_its_axis_whole_and_says_why(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    p = plan(str(spec))
    assert "up.weight" not in split_of(p) and "down.weight" not in split_of(p)
    assert "reshape" in p.replicated["up.weight"] and "reshape" in p.replicated["down.weight"]
    assert split_of(p) == {"embed.weight": 0, "head.weight": 0}


def test_compile_tp_explain_prints_the_plan_and_every_collective(tmp_path, capsys):
    assert cli(["compile", "specs/llama.yaml", "--tp", "2", "-o", str(tmp_path / "a"), "-q", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "tensor parallelism over 2 rank(s)" in out
    assert "attention: all_reduce(y) after linear(y) (llama.yaml:54) - row-parallel 'o_proj'" in out
    assert "model: all_gather(logits) after linear(logits) (llama.yaml:101)" in out
    model_py = (tmp_path / "a" / "model.py").read_text()
    assert "        y = self.o_proj(y)" in model_py and "        y = ops.all_reduce(y, ctx)" in model_py
    assert "q.unflatten(-1, (cfg.local_num_heads, -1))" in model_py
    assert (tmp_path / "a" / "parallel.json").exists()
    capsys.readouterr()
    assert cli(["compile", "specs/llama.yaml", "--tp", "0"]) == 2
    assert "the number of ranks must be at least 1" in capsys.readouterr().err


LLAMA = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    return save(randomize(LlamaForCausalLM(LlamaConfig(**LLAMA))), tmp_path_factory.mktemp("tp_llama"))


def test_heads_that_do_not_split_evenly_are_a_config_error_at_load(llama_checkpoint):
    artifact = compile_spec("specs/llama.yaml", options={"tp": 3}).directory
    with pytest.raises(ConfigError, match=r"num_heads .* must be a multiple of tp_size.*num_heads=4, tp_size=3"):
        runtime.load(artifact, llama_checkpoint, config_overrides={"tp_size": 3})


def test_tp_plan_needs_an_artifact_compiled_with_one(llama_checkpoint):
    plain = compile_spec("specs/llama.yaml").directory
    with pytest.raises(ArtifactError, match="compiled without a tensor-parallel plan"):
        runtime.load(plain, llama_checkpoint, tp_plan="auto")
    with pytest.raises(ValueError, match="tp_plan must be one of 'auto'"):
        runtime.load(compile_spec("specs/llama.yaml", options={"tp": 1}).directory, llama_checkpoint, tp_plan="mine")


def test_one_process_without_torchrun_is_one_rank_holding_everything(llama_checkpoint):
    ids = torch.randint(3, 61, (2, 7), generator=torch.Generator().manual_seed(0))
    plain = runtime.from_pretrained(llama_checkpoint)
    tp = runtime.from_pretrained(llama_checkpoint, tp_plan="auto")
    assert tp.load_report["tensor_parallel"] == {"rank": 0, "ranks": 1, "split": 14}
    assert torch.equal(tp(ids).logits, plain(ids).logits)
    assert tp.generate(ids, max_new_tokens=5).tolist() == plain.generate(ids, max_new_tokens=5).tolist()
