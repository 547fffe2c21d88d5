"""Exporting a loaded model: outputs are pytrees, torch.export takes a dynamic batch and sequence with a
padding mask, ONNX Runtime runs the ONNX export to PyTorch's numbers, and torch.compile of the model
covers generate's decode step in one graph."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim
from torch.utils import _pytree as pytree

import runtime
from tests.family_parity import random_ids
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

TOL = 1e-4
MODELS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)),
    "bert": lambda: transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=3)),
}
BATCH, SEQ = Dim("batch", min=1, max=64), Dim("seq", min=2, max=60)
DYNAMIC = {"input_ids": {0: BATCH, 1: SEQ}, "attention_mask": {0: BATCH, 1: SEQ}}


def loaded(tmp_path, name):
    return runtime.from_pretrained(save(randomize(MODELS[name]()), tmp_path / name))


def padded(vocab: int, batch: int, length: int, seed: int, pad: int):
    ids = random_ids(vocab, batch=batch, length=length, seed=seed)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask


def test_outputs_are_pytrees(tmp_path):
    model = loaded(tmp_path, "llama")
    with torch.no_grad():
        out = model(random_ids(97), labels=random_ids(97))
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == 2 and torch.equal(leaves[0], out.loss)
    again = pytree.tree_unflatten(leaves, spec)
    assert type(again) is type(out) and list(again) == ["loss", "logits"]


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_export_takes_any_batch_and_sequence_with_a_padding_mask(tmp_path, name):
    model = loaded(tmp_path, name)
    vocab = model.config.vocab_size
    ids, mask = padded(vocab, 2, 8, seed=0, pad=2)
    with torch.no_grad():
        program = torch.export.export(model, (ids,), {"attention_mask": mask}, dynamic_shapes=DYNAMIC)
    for batch, length, pad in ((3, 11, 4), (1, 5, 0), (5, 17, 9)):
        ids, mask = padded(vocab, batch, length, seed=batch, pad=pad)
        with torch.no_grad():
            got = program.module()(ids, attention_mask=mask)["logits"]
            want = model(ids, attention_mask=mask).logits
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_runs_the_onnx_export_to_pytorchs_numbers(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = loaded(tmp_path, name)
    vocab = model.config.vocab_size
    ids, mask = padded(vocab, 2, 8, seed=0, pad=2)
    with torch.no_grad():
        program = torch.onnx.export(model, (ids,), kwargs={"attention_mask": mask}, dynamo=True,
                                    dynamic_shapes=DYNAMIC, output_names=["logits"])
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    for batch, length, pad in ((3, 11, 4), (1, 6, 0)):
        ids, mask = padded(vocab, batch, length, seed=batch, pad=pad)
        got, = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits
        assert abs(got - want.numpy()).max() <= TOL


def test_torch_compile_covers_the_decode_step_in_one_graph(tmp_path):
    model = loaded(tmp_path, "llama")
    prompt = random_ids(97, batch=2, length=7)
    want = model.generate(prompt, max_new_tokens=10)
    with torch.no_grad():
        logits = model(prompt).logits
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    model.compile(backend=backend, fullgraph=True)     # fullgraph: a graph break is an error
    assert model.generate(prompt, max_new_tokens=10).tolist() == want.tolist()
    # the prompt's pass, then every decode step through one graph (the step's position made symbolic)
    assert len(graphs) == 2
    with torch.no_grad():
        assert (model(prompt).logits - logits).abs().max().item() <= TOL
