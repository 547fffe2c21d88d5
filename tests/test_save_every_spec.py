"""save_pretrained for every shipped spec and head: Transformers' from_pretrained reads what we write
and computes exactly the logits of the model the checkpoint came from; config.json keeps every key
of the source; generation_config.json and tokenizer files come along; sharding through
huggingface_hub."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

import runtime
from tests.hf_checkpoints import randomize, save
from tests.tiny_configs import WHISPER

transformers = pytest.importorskip("transformers")

DECODER = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
BERT_LIKE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=40)
ENCODERS = {
    "bert": ("Bert", "BertConfig", dict(BERT_LIKE, pad_token_id=0)),
    "roberta": ("Roberta", "RobertaConfig", dict(BERT_LIKE, type_vocab_size=1, pad_token_id=1)),
    "distilbert": ("DistilBert", "DistilBertConfig", dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                                          max_position_embeddings=40, pad_token_id=0)),
}
HEADS = {"Model": {}, "ForMaskedLM": {}, "ForSequenceClassification": dict(num_labels=3),
         "ForTokenClassification": dict(num_labels=5), "ForQuestionAnswering": {}}
T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          relative_attention_max_distance=20, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=16,
           patch_size=4, num_channels=3)
CLIP = dict(text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, eos_token_id=98),
            vision_config=VIT, projection_dim=24)

# spec -> [(Transformers model class, config class, config kwargs)], every head of the spec once
CASES = {
    "llama": [("LlamaForCausalLM", "LlamaConfig", DECODER)],
    "mistral": [("MistralForCausalLM", "MistralConfig", dict(DECODER, sliding_window=4))],
    "qwen2": [("Qwen2ForCausalLM", "Qwen2Config", DECODER)],
    "qwen3": [("Qwen3ForCausalLM", "Qwen3Config", dict(DECODER, head_dim=16))],
    "phi3": [("Phi3ForCausalLM", "Phi3Config", dict(DECODER, original_max_position_embeddings=128))],
    "gemma": [("GemmaForCausalLM", "GemmaConfig", dict(DECODER, head_dim=16))],
    "gemma2": [("Gemma2ForCausalLM", "Gemma2Config", dict(DECODER, head_dim=16, query_pre_attn_scalar=24,
                                                         sliding_window=4, num_hidden_layers=3))],
    "gpt2": [("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64))],
    **{spec: [(f"{prefix}{head}", config, dict(kwargs, **extra)) for head, extra in HEADS.items()]
       for spec, (prefix, config, kwargs) in ENCODERS.items()},
    "vit": [("ViTModel", "ViTConfig", VIT), ("ViTForImageClassification", "ViTConfig", dict(VIT, num_labels=3))],
    "t5": [("T5ForConditionalGeneration", "T5Config", dict(T5, feed_forward_proj="relu"))],
    "t5_v1_1": [("T5ForConditionalGeneration", "T5Config", dict(T5, feed_forward_proj="gated-gelu",
                                                                tie_word_embeddings=False))],
    "gpt_neox": [("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             max_position_embeddings=64, rotary_pct=0.5))],
    "bloom": [("BloomForCausalLM", "BloomConfig", dict(vocab_size=97, hidden_size=32, n_layer=2, n_head=4))],
    "mixtral": [("MixtralForCausalLM", "MixtralConfig", dict(DECODER, num_local_experts=4, num_experts_per_tok=2))],
    "qwen2_moe": [("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(DECODER, num_experts=4, num_experts_per_tok=2,
                                                                moe_intermediate_size=32,
                                                                shared_expert_intermediate_size=48))],
    "whisper": [("WhisperForConditionalGeneration", "WhisperConfig", WHISPER)],
    "clip": [("CLIPModel", "CLIPConfig", CLIP)],
}
ALL = [(spec, cls, config, kwargs) for spec, cases in CASES.items() for cls, config, kwargs in cases]


def test_every_shipped_spec_has_a_save_case():
    assert sorted(CASES) == sorted(p.stem for p in Path("specs").glob("*.yaml"))


def inputs(ref) -> dict:
    gen = torch.Generator().manual_seed(0)
    config = ref.config
    if ref.main_input_name == "pixel_values":
        return dict(pixel_values=torch.randn(2, 3, 16, 16, generator=gen))
    if ref.main_input_name == "input_features":
        return dict(input_features=torch.randn(2, config.num_mel_bins, 2 * config.max_source_positions, generator=gen),
                    decoder_input_ids=torch.randint(3, config.vocab_size, (2, 5), generator=gen))
    text = getattr(config, "text_config", config)
    out = dict(input_ids=torch.randint(3, text.vocab_size - 1, (2, 9), generator=gen))
    if hasattr(config, "vision_config"):
        out["pixel_values"] = torch.randn(2, 3, 16, 16, generator=gen)
    if config.is_encoder_decoder:
        out["decoder_input_ids"] = torch.randint(3, config.vocab_size, (2, 5), generator=gen)
    return out


def outputs(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("spec,cls,config,kwargs", ALL, ids=[f"{s}-{c}" for s, c, _, _ in ALL])
def test_transformers_reads_what_we_save_and_computes_the_same_outputs(tmp_path, spec, cls, config, kwargs):
    ref = randomize(getattr(transformers, cls)(getattr(transformers, config)(**kwargs)))
    source = save(ref, tmp_path / "source")
    (source / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7, "do_sample": False}))
    # a real (tiny) tokenizer: loading a checkpoint folder reads its tokenizer.json
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(source / "tokenizer.json"))
    ours = runtime.from_pretrained(source)
    assert ours.spec.name == spec
    folder = ours.save_pretrained(tmp_path / "saved")
    again = getattr(transformers, cls).from_pretrained(folder).eval()
    batch = inputs(ref)
    want, got = outputs(ref, batch), outputs(again, batch)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    saved = json.loads((folder / "config.json").read_text())
    source_config = json.loads((source / "config.json").read_text())
    assert set(source_config) - {"torch_dtype"} <= set(saved)
    # written again from model.generation_config by a model that generates, copied otherwise: same content
    assert json.loads((folder / "generation_config.json").read_text()) == {"max_new_tokens": 7, "do_sample": False}
    assert (folder / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()


def test_a_model_made_without_a_checkpoint_saves_its_generation_config_for_transformers(tmp_path):
    """generation_config.json comes from model.generation_config (the config's special tokens, the
    caller's changes), and Transformers reads it."""
    ours = runtime.from_config(transformers.LlamaConfig(**DECODER))
    ours.generation_config.update(max_new_tokens=5, do_sample=True, top_k=3)
    folder = ours.save_pretrained(tmp_path / "saved")
    theirs = transformers.GenerationConfig.from_pretrained(folder)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 2, 0)
    assert (theirs.max_new_tokens, theirs.do_sample, theirs.top_k) == (5, True, 3)
    assert runtime.GenerationConfig.from_checkpoint(folder) == ours.generation_config


def test_a_model_that_does_not_generate_carries_the_source_file_as_is(tmp_path):
    ref = randomize(transformers.BertModel(transformers.BertConfig(**BERT_LIKE)))
    source = save(ref, tmp_path / "source")
    text = '{"foo": 1}'
    (source / "generation_config.json").write_text(text)
    folder = runtime.from_pretrained(source).save_pretrained(tmp_path / "saved")
    assert (folder / "generation_config.json").read_text() == text
