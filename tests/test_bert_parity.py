"""specs/bert.yaml: choosing heads, new-head reporting, labels and tied decoders, against the
transformers Bert classes on tiny random checkpoints (per-head parity: test_encoder_heads_parity)."""
from __future__ import annotations

import warnings

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError, GenerationError
from tests.encoder_cases import TOL, token_batch
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/bert.yaml", tmp_path_factory.mktemp("art") / "bert").directory


def make(tmp_path, cls_name, seed=0, **extra):
    config = transformers.BertConfig(**{**BASE, **extra})
    model = randomize(getattr(transformers, cls_name)(config), seed)
    return model, save(model, tmp_path / cls_name)


def test_untied_decoder_and_default_token_types(tmp_path, artifact):
    ref, folder = make(tmp_path, "BertForMaskedLM", tie_word_embeddings=False)
    ours = runtime.load(artifact, folder)
    assert ours.net.decoder.weight.data_ptr() != ours.net.word_embed.weight.data_ptr()
    ids, _, _ = token_batch(BASE["vocab_size"])
    with torch.no_grad():
        expected = ref(ids).logits
    assert (ours(ids).logits - expected).abs().max().item() <= TOL


def test_labels_come_from_config_json(tmp_path, artifact):
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    _, folder = make(tmp_path, "BertForSequenceClassification", id2label=labels, label2id={v: k for k, v in labels.items()})
    ours = runtime.from_pretrained(folder)
    assert ours.config["num_labels"] == 3 and ours.id2label == labels
    assert ours(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3)


def test_a_head_is_chosen_by_name_and_other_heads_weights_are_ignored_by_name(tmp_path, artifact):
    ref, folder = make(tmp_path, "BertForQuestionAnswering")
    with pytest.warns(UserWarning, match=r"'base' head is newly initialised.*pooler\.weight"):
        base = runtime.load(artifact, folder, head="base", init_new_head=True)
    # the QA checkpoint has no pooler: it is the base head's own param, so it is new, and said so
    assert base.load_report["newly_initialized"] == ["pooler.weight", "pooler.bias"]
    assert base.load_report["ignored"]["qa_outputs.weight"].startswith("weights of the question_answering head")
    ids, mask, types = token_batch(BASE["vocab_size"])
    with torch.no_grad():
        trunk = ref.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    got = base(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert (got - trunk)[mask.bool()].abs().max().item() <= TOL


def test_a_head_without_weights_is_refused_unless_new_init_is_allowed(tmp_path, artifact):
    _, folder = make(tmp_path, "BertModel")
    with pytest.raises(CheckpointError, match=r"no weights for the 'sequence_classification' head.*classifier\.weight"):
        runtime.load(artifact, folder, head="sequence_classification")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = runtime.from_pretrained(folder, head="sequence_classification", init_new_head=True)
    assert ours.load_report["newly_initialized"] == ["classifier.weight", "classifier.bias"]
    assert any("classifier.weight" in str(w.message) and "newly initialised" in str(w.message) for w in caught)
    assert ours(torch.tensor([[5, 6, 7]])).logits.shape == (1, 2)


def test_unknown_head_names_the_heads_the_spec_has(tmp_path, artifact):
    _, folder = make(tmp_path, "BertModel")
    with pytest.raises(Exception, match="no head 'causal_lm'.*masked_lm"):
        runtime.load(artifact, folder, head="causal_lm")


def test_an_encoder_refuses_to_generate_and_to_take_positions(tmp_path, artifact):
    _, folder = make(tmp_path, "BertForMaskedLM")
    ours = runtime.load(artifact, folder)
    with pytest.raises(GenerationError, match="bidirectional encoder"):
        ours.generate(torch.tensor([[5, 6, 7]]))
    with pytest.raises(TypeError, match="takes no position_ids"):
        ours(torch.tensor([[5, 6, 7]]), position_ids=torch.tensor([[0, 1, 2]]))


def test_bfloat16_encoder_tracks_the_fp32_reference(tmp_path, artifact):
    ref, folder = make(tmp_path, "BertModel")
    ours = runtime.load(artifact, folder, dtype=torch.bfloat16)
    ids, mask, types = token_batch(BASE["vocab_size"])
    got = ours(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert got.dtype == torch.bfloat16
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert (got.float() - want)[mask.bool()].abs().max().item() < 0.1


def test_tensorflow_era_checkpoint_names_load_the_same_model(tmp_path, artifact):
    """Old BertForPreTraining checkpoints: gamma/beta LayerNorms, the position_ids buffer, the
    next-sentence head and the decoder bias alias are all accepted, and reported as ignored."""
    from safetensors.torch import load_file, save_file
    ref, folder = make(tmp_path, "BertForMaskedLM")
    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    renamed["bert.embeddings.position_ids"] = torch.arange(BASE["max_position_embeddings"])[None]
    renamed["cls.seq_relationship.weight"] = torch.zeros(2, BASE["hidden_size"])
    renamed["cls.seq_relationship.bias"] = torch.zeros(2)
    renamed["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"].clone()
    save_file(renamed, path, metadata={"format": "pt"})
    ours = runtime.load(artifact, folder)
    assert set(ours.load_report["ignored"]) == {"bert.embeddings.position_ids", "cls.seq_relationship.weight",
                                                "cls.seq_relationship.bias", "cls.predictions.decoder.bias"}
    ids, mask, types = token_batch(BASE["vocab_size"])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    got = ours(ids, attention_mask=mask, token_type_ids=types).logits
    assert (got - want)[mask.bool()].abs().max().item() <= TOL
