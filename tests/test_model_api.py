"""The PreTrainedModel API a Transformers user reaches for, against Transformers' own numbers: parameter
counts, memory footprint, input embeddings (get, set, resize, inputs_embeds), base_model, the config
object, hidden states and attentions, tuple outputs, dtype and device moves."""
from __future__ import annotations

import pytest
import torch

import runtime
from tests.family_parity import random_ids
from tests.hf_checkpoints import randomize, save
from tests.tiny_configs import BERT, LLAMA, T5

transformers = pytest.importorskip("transformers")

TOL = 1e-4
MODELS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)),
    "llama_tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, tie_word_embeddings=True)),
    "bert_classifier": lambda: transformers.BertForSequenceClassification(transformers.BertConfig(**BERT, num_labels=3)),
    "bert_mlm": lambda: transformers.BertForMaskedLM(transformers.BertConfig(**BERT)),
    "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)),
}


def pair(tmp_path, name):
    ref = randomize(MODELS[name]())
    return ref, runtime.from_pretrained(save(ref, tmp_path / name))


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_and_footprint_equal_transformers(tmp_path, name):
    ref, ours = pair(tmp_path, name)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            assert ours.num_parameters(only_trainable, exclude_embeddings) == \
                ref.num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
    assert ours.get_memory_footprint(return_buffers=False) == ref.get_memory_footprint(return_buffers=False)


def test_config_reads_transformers_keys_and_spec_names(tmp_path):
    ref, ours = pair(tmp_path, "llama")
    assert ours.config.num_hidden_layers == ref.config.num_hidden_layers == ours.config.num_layers
    assert ours.config.num_key_value_heads == ref.config.num_key_value_heads == ours.config["num_kv_heads"]
    assert ours.config.rope_parameters == ref.config.rope_parameters
    assert ours.config.pad_token_id == ref.config.pad_token_id
    with pytest.raises(AttributeError, match="no_such_key"):
        ours.config.no_such_key
    _, classifier = pair(tmp_path, "bert_classifier")
    assert classifier.config.num_labels == 3 and classifier.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert classifier.config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}


def test_input_embeddings_get_set_and_inputs_embeds_equal_transformers(tmp_path):
    ref, ours = pair(tmp_path, "llama_tied")
    assert torch.equal(ours.get_input_embeddings().weight, ref.get_input_embeddings().weight)
    ids = random_ids(LLAMA["vocab_size"], batch=2, length=7)
    embeds = ref.get_input_embeddings()(ids).detach() * 1.5
    with torch.no_grad():
        want = ref(inputs_embeds=embeds).logits
        got = ours(inputs_embeds=embeds).logits
    assert (got - want).abs().max().item() <= TOL
    table = torch.nn.Embedding(LLAMA["vocab_size"], LLAMA["hidden_size"])
    ours.set_input_embeddings(table)
    assert ours.get_input_embeddings() is table
    assert ours.net.lm_head.weight is table.weight          # the tied head follows
    with pytest.raises(TypeError, match="not both"):
        ours(ids, inputs_embeds=embeds)


def test_bert_inputs_embeds_keep_positions_and_token_types(tmp_path):
    ref, ours = pair(tmp_path, "bert_mlm")
    ids = random_ids(BERT["vocab_size"], batch=2, length=6)
    embeds = torch.randn(2, 6, BERT["hidden_size"], generator=torch.Generator().manual_seed(3))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    with torch.no_grad():
        want = ref(inputs_embeds=embeds, token_type_ids=types).logits
        got = ours(inputs_embeds=embeds, token_type_ids=types).logits
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["llama", "bert_mlm"])
def test_resize_token_embeddings_matches_transformers_shapes_and_keeps_old_rows(tmp_path, name):
    ref, ours = pair(tmp_path, name)
    old = ours.get_input_embeddings().weight.detach().clone()
    ref.resize_token_embeddings(120, pad_to_multiple_of=8)
    ours.resize_token_embeddings(120, pad_to_multiple_of=8)
    assert ours.num_parameters() == ref.num_parameters()
    assert ours.config.vocab_size == ref.config.vocab_size == 120
    table = ours.get_input_embeddings()
    assert table.weight.shape == (120, old.shape[1]) and torch.equal(table.weight[:old.shape[0]], old)
    new_rows = table.weight[old.shape[0]:]
    assert (new_rows - old.mean(0)).abs().max().item() < 1e-3      # mean_resizing, as Transformers
    ids = torch.tensor([[3, 110, 119]])
    with torch.no_grad():
        assert ours(ids).logits.shape[-1] == 120
    folder = ours.save_pretrained(tmp_path / "resized")
    again = type(ref).from_pretrained(folder).eval()
    with torch.no_grad():
        assert (again(ids).logits - ours(ids).logits).abs().max().item() <= TOL


def test_base_model_is_the_trunk_transformers_names_so(tmp_path):
    ref, ours = pair(tmp_path, "bert_classifier")
    ids = random_ids(BERT["vocab_size"], batch=2, length=6)
    with torch.no_grad():
        want = ref.base_model(ids).last_hidden_state
        got = ours.base_model(ids).last_hidden_state
    assert (got - want).abs().max().item() <= TOL
    assert ours.base_model.net is ours.net
    _, llama = pair(tmp_path, "llama")
    assert llama.base_model is llama           # no head: the model is its own trunk


@pytest.mark.parametrize("name", ["llama", "bert_mlm"])
def test_hidden_states_and_attentions_equal_transformers(tmp_path, name):
    ref, ours = pair(tmp_path, name)
    ref.set_attn_implementation("eager")       # sdpa keeps no probabilities
    ids = random_ids(ref.config.vocab_size, batch=2, length=7)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        got = ours(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    assert len(got.hidden_states) == len(want.hidden_states) == ref.config.num_hidden_layers + 1
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert (a[real] - b[real]).abs().max().item() <= TOL
    assert len(got.attentions) == len(want.attentions) == ref.config.num_hidden_layers
    q = real[1]
    for a, b in zip(got.attentions, want.attentions):
        assert (a[0] - b[0]).abs().max().item() <= TOL                        # the unpadded row
        assert (a[1][:, q][:, :, q] - b[1][:, q][:, :, q]).abs().max().item() <= TOL   # real queries and keys


def test_t5_records_each_stack(tmp_path):
    ref, ours = pair(tmp_path, "t5")
    ref.set_attn_implementation("eager")
    ids = random_ids(T5["vocab_size"], batch=2, length=6)
    dec = random_ids(T5["vocab_size"], batch=2, length=4, seed=1)
    with torch.no_grad():
        want = ref(input_ids=ids, decoder_input_ids=dec, output_hidden_states=True, output_attentions=True)
        got = ours(ids, decoder_input_ids=dec, output_hidden_states=True, output_attentions=True)
    pairs = [("layers_hidden_states", "encoder_hidden_states"), ("dec_layers_hidden_states", "decoder_hidden_states"),
             ("layers_attentions", "encoder_attentions"), ("dec_layers_attentions", "decoder_attentions"),
             ("dec_layers_attentions_s_enc", "cross_attentions")]
    for ours_name, ref_name in pairs:
        assert len(got[ours_name]) == len(getattr(want, ref_name)), ours_name
        for a, b in zip(got[ours_name], getattr(want, ref_name)):
            assert (a - b).abs().max().item() <= TOL, ours_name


def test_return_dict_false_gives_transformers_tuple_order(tmp_path):
    ref, ours = pair(tmp_path, "llama")
    ids = random_ids(LLAMA["vocab_size"], batch=1, length=5)
    with torch.no_grad():
        want = ref(ids, labels=ids, return_dict=False)
        got = ours(ids, labels=ids, return_dict=False)
    assert isinstance(got, tuple)
    assert abs(got[0].item() - want[0].item()) <= TOL          # loss first
    assert (got[1] - want[1]).abs().max().item() <= TOL        # then the logits


@pytest.mark.parametrize("move", ["bfloat16", "half", "to_float16_then_float32"])
def test_dtype_moves_keep_the_model_working(tmp_path, move):
    ref, ours = pair(tmp_path, "llama")
    ids = random_ids(LLAMA["vocab_size"], batch=2, length=6)
    with torch.no_grad():
        fp32 = ours(ids).logits
        if move == "bfloat16":
            ours.to(torch.bfloat16)
            assert ours.dtype == torch.bfloat16 and ours(ids).logits.dtype == torch.bfloat16
            ref.to(torch.bfloat16)
            assert (ours(ids).logits.float() - ref(ids).logits.float()).abs().max().item() <= 0.05
        elif move == "half":
            ours.half()
            assert ours(ids).logits.dtype == torch.float16
            assert (ours(ids).logits.float() - fp32).abs().max().item() <= 0.02
        else:
            ours.to(torch.float16).to(torch.float32).to("cpu")
            assert ours.dtype == torch.float32 and ours.device == torch.device("cpu")
            assert (ours(ids).logits - fp32).abs().max().item() <= 0.02
    assert ours.generate(ids, max_new_tokens=3).shape == (2, 9)
