"""from_pretrained with Transformers' arguments (hub cache, revision, token, config, overrides, labels,
dtype, device, device_map) and from_config with each architecture's initialiser."""
from __future__ import annotations

import shutil

import pytest
import torch

import runtime
from runtime.errors import CheckpointError, ConfigError
from tests.family_parity import random_ids
from tests.hf_checkpoints import randomize, save
from tests.tiny_configs import BERT, LLAMA

transformers = pytest.importorskip("transformers")

TOL = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def llama(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    return ref, save(ref, tmp_path / "ckpt")


def hub_cache(tmp_path, folder, repo="org/tiny") -> str:
    """A Hugging Face cache holding `folder` as repo's snapshot at COMMIT, with refs/main pointing at it."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return str(tmp_path / "hub")


def test_a_hub_id_loads_from_a_cache_dir_offline_at_a_revision(tmp_path, llama):
    ref, folder = llama
    cache = hub_cache(tmp_path, folder)
    ids = random_ids(LLAMA["vocab_size"])
    with torch.no_grad():
        want = ref(ids).logits
    for revision in (None, "main", COMMIT):
        ours = runtime.from_pretrained("org/tiny", cache_dir=cache, local_files_only=True, revision=revision)
        assert (ours(ids).logits - want).abs().max().item() <= TOL
    with pytest.raises(CheckpointError, match="revision 'v9'"):
        runtime.from_pretrained("org/tiny", cache_dir=cache, local_files_only=True, revision="v9")


def test_token_and_revision_reach_the_hub_download(tmp_path, llama, monkeypatch):
    _, folder = llama
    seen = {}

    def download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(folder)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    runtime.from_pretrained("org/private", token="hf_secret", revision="v1", cache_dir=tmp_path / "c")
    assert seen["repo_id"] == "org/private" and seen["token"] == "hf_secret" and seen["revision"] == "v1"
    assert seen["local_files_only"] is False and str(seen["cache_dir"]) == str(tmp_path / "c")
    assert not any(p.endswith((".bin", ".pt")) for p in seen["allow_patterns"])


def test_config_overrides_by_transformers_key_and_config_objects_agree_with_transformers(llama):
    ref, folder = llama
    ids = random_ids(LLAMA["vocab_size"])
    want_ref = transformers.LlamaForCausalLM.from_pretrained(folder, rms_norm_eps=0.5).eval()
    with torch.no_grad():
        want = want_ref(ids).logits
    by_key = runtime.from_pretrained(folder, rms_norm_eps=0.5)
    assert by_key.config.rms_norm_eps == 0.5
    assert (by_key(ids).logits - want).abs().max().item() <= TOL
    config = transformers.AutoConfig.from_pretrained(folder)
    config.rms_norm_eps = 0.5
    by_object = runtime.from_pretrained(folder, config=config)
    assert (by_object(ids).logits - want).abs().max().item() <= TOL
    by_spec_name = runtime.from_pretrained(folder, num_kv_heads=2)
    assert by_spec_name.config.num_key_value_heads == 2


def test_an_unknown_config_key_is_an_error_naming_it(llama):
    _, folder = llama
    with pytest.raises(ConfigError, match="'rms_norm_epsilon'.*did you mean 'rms_norm_eps'"):
        runtime.from_pretrained(folder, rms_norm_epsilon=0.5)


def test_num_labels_and_label_maps_as_transformers_sets_them(tmp_path):
    folder = save(randomize(transformers.BertModel(transformers.BertConfig(**BERT))), tmp_path / "bert")
    ours = runtime.from_pretrained(folder, head="sequence_classification", init_new_head=True, num_labels=4)
    ref = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=4)
    assert ours.config.num_labels == ref.config.num_labels == 4
    assert ours.config.id2label == ref.config.id2label and ours.id2label == ref.config.id2label
    assert ours(random_ids(BERT["vocab_size"])).logits.shape == (2, 4)
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    named = runtime.from_pretrained(folder, head="sequence_classification", init_new_head=True, id2label=labels)
    ref_named = transformers.BertForSequenceClassification.from_pretrained(folder, id2label=labels)
    assert named.config.id2label == ref_named.config.id2label
    # Transformers keeps config.json's default label2id beside the new id2label; ours is their inverse
    assert named.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert named.config.num_labels == ref_named.config.num_labels == 3


def test_dtype_defaults_to_the_checkpoints_like_transformers_and_torch_dtype_is_its_alias(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))).to(torch.bfloat16)
    folder = save(ref, tmp_path / "bf16")
    assert runtime.from_pretrained(folder).dtype == transformers.LlamaForCausalLM.from_pretrained(folder).dtype
    assert runtime.from_pretrained(folder).dtype == torch.bfloat16
    assert runtime.from_pretrained(folder, torch_dtype=torch.float32).dtype == torch.float32
    assert runtime.from_pretrained(folder, dtype="float32").dtype == torch.float32
    with pytest.raises(ValueError, match="alias"):
        runtime.from_pretrained(folder, dtype=torch.float16, torch_dtype=torch.float32)


def test_device_and_device_map_place_the_params(llama):
    ref, folder = llama
    ids = random_ids(LLAMA["vocab_size"])
    with torch.no_grad():
        want = ref(ids).logits
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for kwargs in (dict(device="cpu"), dict(device_map="cpu"), dict(device_map={"": "cpu"}),
                   dict(device_map={"embed": "cpu", "layers": "cpu", "": "cpu"})):
        ours = runtime.from_pretrained(folder, **kwargs)
        assert ours.device.type == "cpu"
        assert (ours(ids).logits - want).abs().max().item() <= TOL
    assert runtime.from_pretrained(folder, device_map="auto").device.type == expected
    with pytest.raises(ValueError, match="names no module.*no_such"):
        runtime.from_pretrained(folder, device_map={"no_such": "cpu", "": "cpu"})
    with pytest.raises(ValueError, match="places no device"):
        runtime.from_pretrained(folder, device_map={"embed": "cpu", "layers": "cpu"})
    with pytest.raises(ValueError, match="not both"):
        runtime.from_pretrained(folder, device="cpu", device_map="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="splitting a model across devices needs a GPU")
def test_a_device_map_splits_a_model_across_devices(llama):
    ref, folder = llama
    ids = random_ids(LLAMA["vocab_size"])
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ours = runtime.from_pretrained(folder, device_map={"embed": "cpu", "layers.0": "cpu", "": "cuda"})
    assert ours.net.layers[1].mlp.down_proj.weight.is_cuda and not ours.net.embed.weight.is_cuda
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    got = ours(ids, attention_mask=mask).logits
    assert (got.cpu() - want)[mask.bool()].abs().max().item() <= TOL
    assert ours.generate(ids[:1], max_new_tokens=4).shape == (1, ids.shape[1] + 4)


def _stds(state: dict) -> dict[str, float]:
    return {k: v.float().std().item() for k, v in state.items() if v.dim() > 1 or k.endswith("weight")}


@pytest.mark.parametrize("cls,head,config", [
    ("BertForSequenceClassification", "sequence_classification",
     lambda: transformers.BertConfig(**{**BERT, "hidden_size": 64}, num_labels=3)),
    ("BertForQuestionAnswering", "question_answering", lambda: transformers.BertConfig(**{**BERT, "hidden_size": 64})),
    ("GPT2LMHeadModel", None,
     lambda: transformers.GPT2Config(vocab_size=97, n_embd=64, n_layer=3, n_head=4, n_positions=64)),
    ("T5ForConditionalGeneration", None, lambda: transformers.T5Config(
        vocab_size=99, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, initializer_factor=0.5)),
    ("GemmaForCausalLM", None, lambda: transformers.GemmaConfig(**{**LLAMA, "hidden_size": 64}, head_dim=16)),
    ("GPTNeoXForCausalLM", None, lambda: transformers.GPTNeoXConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        initializer_range=0.05)),
    ("BloomForCausalLM", None, lambda: transformers.BloomConfig(vocab_size=97, hidden_size=64, n_layer=2, n_head=4,
                                                                initializer_range=0.05)),
])
def test_from_config_initialises_every_tensor_as_the_transformers_class_does(tmp_path, cls, head, config):
    """Each tensor's spread (std, or the constant of a norm or bias) equals the reference initialiser's,
    tensor by tensor under the checkpoint's names (saving maps ours onto them)."""
    cfg = config()
    torch.manual_seed(0)
    ref = getattr(transformers, cls)(cfg)
    ours = runtime.from_config(cfg, head=head, seed=0)
    assert ours.num_parameters() == ref.num_parameters()
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    from runtime.safetensors_io import open_checkpoint
    with open_checkpoint(tmp_path / "ours") as ckpt:
        mine = {name: ckpt.get(name).clone() for name in ckpt.tensors}
    # the checkpoint's names, not the module's (GPT-NeoX's head is lm_head in memory, embed_out on disk)
    with open_checkpoint(tmp_path / "ref") as ckpt:
        state = {name: ckpt.get(name).clone() for name in ckpt.tensors}
    # a trunk's tensor may be saved without the base prefix (GPT-2's OpenAI layout), which Transformers
    # adds back when it loads
    prefix = ours.interface.base_prefix
    theirs = {k: state[k] if k in state else state[prefix + k] for k in mine if k in state or prefix + k in state}
    assert theirs.keys() == mine.keys()
    for name, value in mine.items():
        want = theirs[name].float()
        if want.std().item() == 0:
            assert torch.equal(value, torch.full_like(value, want.flatten()[0].item())), name
        else:
            spread = value.float().std().item() / want.std().item()
            assert 0.85 < spread < 1.15, (name, spread)


def test_from_config_builds_any_head(tmp_path):
    config = transformers.BertConfig(**BERT)
    for head in ("base", "masked_lm", "sequence_classification", "token_classification", "question_answering"):
        model = runtime.from_config(config, head=head)
        assert model.head == head
        assert all(p.requires_grad for p in model.parameters())



def test_from_config_initialises_clip_as_transformers_does():
    """CLIP's initialiser: each tower's stds from its width, depth and own factor, the projections from
    the top-level factor, logit_scale's configured value. Compared by name: a from_config CLIP cannot be
    saved yet (its logit_scale rule reshapes a scalar whose shape only a loaded checkpoint records)."""
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=98, initializer_factor=2.0),
        vision_config=dict(hidden_size=80, intermediate_size=112, num_hidden_layers=3, num_attention_heads=5,
                           image_size=32, patch_size=4, initializer_range=0.03),
        projection_dim=48, initializer_factor=0.5, logit_scale_init_value=2.0)
    torch.manual_seed(0)
    ref = dict(transformers.CLIPModel(cfg).named_parameters())
    model = runtime.from_config(cfg, seed=0)
    from runtime.fused_params import member_slices
    members = {m: model.net.get_parameter(n)[s:s + shape[0]] for m, (n, s, shape) in member_slices(model.net).items()}
    ours = {**dict(model.net.named_parameters()), **members}
    pairs = {"token_embed": "text_model.embeddings.token_embedding", "text_pos": "text_model.embeddings.position_embedding",
             "text_proj": "text_projection", "vision_proj": "visual_projection",
             "patch_embed": "vision_model.embeddings.patch_embedding",
             "vision_pos": "vision_model.embeddings.position_embedding"}
    for tower in ("text", "vision"):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            pairs[f"{tower}_layers.1.{p}"] = f"{tower}_model.encoder.layers.1.self_attn.{p}"
        for p in ("fc1", "fc2"):
            pairs[f"{tower}_layers.1.{p}"] = f"{tower}_model.encoder.layers.1.mlp.{p}"
    for mine, theirs in pairs.items():
        spread = ours[f"{mine}.weight"].float().std().item() / ref[f"{theirs}.weight"].float().std().item()
        assert 0.85 < spread < 1.15, (mine, spread)
    spread = ours["class_embed.weight"].std().item() / ref["vision_model.embeddings.class_embedding"].std().item()
    assert 0.7 < spread < 1.3, spread          # 80 values only
    assert ours["logit_scale.weight"].item() == ref["logit_scale"].item() == 2.0
