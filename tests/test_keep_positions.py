"""The keep_positions pass: the model's per-position tail runs on the last positions when asked
(`logits_to_keep`, generate's prefill), with the logits Transformers gives for the same request."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.passes import run_pipeline
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from runtime.context import ForwardContext
from runtime.artifact import import_model
from tests.family_parity import TOL
from tests.hf_checkpoints import randomize, save
from tests.test_gemma2_parity import GEMMA2
from tests.test_gpt2_parity import GPT2
from tests.test_llama_parity import BASE as LLAMA_BASE

transformers = pytest.importorskip("transformers")

TAIL = """
spec: 1
name: tail
config:
  d: {hf: d, type: int}
  v: {hf: v, type: int}
blocks: {}
model:
  inputs: {ids: {shape: [B, S], dtype: int}, shift: [d]}
  params:
    embed: {embedding: [v, d]}
    mix: {linear: [d, d]}
    norm: {norm: [d]}
    head: {linear: [d, v]}
  graph:
    - x: {op: embedding, ids: ids, w: embed}
    - x: {op: transpose, x: x, dim0: 1, dim1: 2}
    - x: {op: transpose, x: x, dim0: 1, dim1: 2}
    - h: {op: linear, x: x, w: mix}
    - h: {op: add, a: h, b: shift}
    - h: {op: rms_norm, x: h, w: norm, eps: 1e-6}
    - logits: {op: linear, x: h, w: head}
  outputs: [x, logits]
weights:
  - {from: "{p}.weight", to: "{p}.weight"}
"""


def tail_spec(tmp_path):
    path = tmp_path / "tail.yaml"
    path.write_text(TAIL)
    return path


def test_tail_starts_after_the_last_op_that_moves_positions_and_broadcasts_stay_whole(tmp_path):
    before = run_pipeline(load_spec(tail_spec(tmp_path)), until="fold_constants")
    ir = run_pipeline(load_spec(tail_spec(tmp_path)), until="keep_positions")
    assert before.keep_positions == [] and ir.keep_positions == ["x"]
    block = ir.blocks["model"]
    assert [n.op for n in before.model.order()] == ["embedding", "transpose", "transpose", "linear", "add", "rms_norm",
                                                    "linear"]
    ops = [n.op for n in block.order()]
    assert ops == ["embedding", "transpose", "transpose", "keep_positions", "linear", "add", "rms_norm", "linear"]
    kept = next(n for n in block.order() if n.op == "keep_positions")
    new = block.values[kept.outputs[0]]
    # `x` is also a model output: the cut gets its own name so the output stays whole
    assert new.name == "x_kept"
    assert block.outputs[0] == kept.inputs["x"]


@pytest.mark.parametrize("dim,in_tail", [(-1, True), (2, True), (1, False)])
def test_an_op_along_a_dim_joins_the_tail_only_when_that_dim_is_past_the_positions(tmp_path, dim, in_tail):
    path = tmp_path / "tail.yaml"
    path.write_text(TAIL.replace("    - logits: {op: linear, x: h, w: head}",
                                 "    - logits: {op: linear, x: h, w: head}\n"
                                 f"    - logits: {{op: log_softmax, x: logits, dim: {dim}}}"))
    ir = run_pipeline(load_spec(path), until="keep_positions")
    kept = [n for n in ir.model.order() if n.op == "keep_positions"]
    order = [n.op for n in ir.model.order()]
    assert ir.keep_positions == ["x"] if in_tail else ir.keep_positions == []
    assert bool(kept) == in_tail and (not in_tail or order.index("keep_positions") < order.index("log_softmax"))


def test_emitted_tail_computes_the_last_positions_only_and_the_other_output_whole(tmp_path):
    result = compile_spec(tail_spec(tmp_path), tmp_path / "art")
    assert result.manifest["keep_positions"] == ["x"]
    module = import_model(result.directory, result.manifest)
    torch.manual_seed(0)
    net = module.MODEL(module.Config(d=8, v=11))
    ids, shift = torch.randint(0, 11, (2, 5)), torch.randn(8)
    with torch.no_grad():
        full = net(ids, shift, ForwardContext(torch.float32, "cpu"))
        last = net(ids, shift, ForwardContext(torch.float32, "cpu", keep_positions=2))
    assert last["logits"].shape == (2, 2, 11)
    torch.testing.assert_close(last["logits"], full["logits"][:, -2:], rtol=0, atol=1e-6)
    torch.testing.assert_close(last["x"], net.embed(ids))


def test_encoders_without_logits_get_no_cut():
    assert compile_spec("specs/bert.yaml").manifest["keep_positions"] == []


@pytest.mark.parametrize("family", [GPT2, GEMMA2], ids=["gpt2", "gemma2_final_softcap"])
@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_equals_transformers_on_a_padded_batch(tmp_path, family, keep):
    ref, _, ours = family.make(tmp_path, {})
    assert ours.manifest["keep_positions"]
    x = family.ids(batch=2, length=9)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        want = ref(x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   logits_to_keep=keep).logits
    got = ours(x, attention_mask=mask, logits_to_keep=keep).logits
    assert got.shape == want.shape == (2, keep, family.base["vocab_size"])
    assert (got - want).abs().max().item() <= TOL
    torch.testing.assert_close(got, ours(x, attention_mask=mask).logits[:, -keep:], rtol=0, atol=1e-5)


def test_llama_generate_runs_its_head_on_the_last_prompt_position_only(tmp_path, monkeypatch):
    config = transformers.LlamaConfig(**LLAMA_BASE)
    ref = randomize(transformers.LlamaForCausalLM(config))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    rows = []
    head = ours.net.lm_head
    real = head.forward
    monkeypatch.setattr(head, "forward", lambda x: rows.append(x.shape[1]) or real(x))
    prompt = torch.randint(3, LLAMA_BASE["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(0))
    got = ours.generate(prompt, max_new_tokens=4, eos_token_id=None)
    assert rows == [1, 1, 1, 1]
    want = ref.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_logits_to_keep_must_be_a_count(tmp_path, bad):
    _, _, ours = GPT2.make(tmp_path, {})
    with pytest.raises(ValueError, match="logits_to_keep"):
        ours(GPT2.ids(batch=1, length=4), logits_to_keep=bad)
