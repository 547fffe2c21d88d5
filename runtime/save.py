"""Saving a model back in its checkpoint's layout: the weight rules run backwards.

A model loaded from a checkpoint remembers which checkpoint tensors fed which params through which
rule, with their shapes (`checkpoint_layout`), so every transform is undone exactly (a concat split
back at the source sizes, a reshape back to the source shape) and every tensor gets its source name.
Params without a recorded source (a new head, a model made by from_config) take the most specific
rule whose target matches them (fewest placeholders, then rule order; `legacy` rules never), which
needs no source shapes for transpose, permute and split. Tied params are written once, as
Transformers does. A spec whose heads map different checkpoint names onto one param (a
classification head's dense layer onto the parent spec's pooler) saves such a model under the
first rule's names.

config.json keeps every key of the source config with this model's values merged
(runtime/hf_config.py); a model that generates writes its generation_config.json
(`model.generation_config`), and the tokenizer files of the source folder are copied. Weights go
through huggingface_hub's save_torch_state_dict (sharded past max_shard_size),
written beside the folder and moved in, so a model whose params map the old files can save over them.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from runtime.errors import CheckpointError
from runtime.fused_params import member_slices
from runtime.rules import fill, invert_transforms, placeholders, stacking, template_regex, transform_name
from runtime.weights import _active, tied_params

NEEDS_SOURCE_SHAPES = ("concat", "reshape")
# Files of a checkpoint folder that are not weights or config.json, carried over by save_pretrained.
GENERATION_CONFIG = "generation_config.json"
CARRIED_FILES = (GENERATION_CONFIG, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model",
                 "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _member_params(net) -> dict[str, torch.Tensor]:
    """Params by the spec's names: a fused projection (q/k/v as one matrix) is cut back into its members."""
    slices = member_slices(net)
    fused = {f for f, _, _ in slices.values()}
    params = {n: p for n, p in net.named_parameters() if n not in fused}
    for member, (fused_name, start, shape) in slices.items():
        params[member] = net.get_parameter(fused_name)[start:start + shape[0]]
    return params


def _specificity(template: str) -> tuple[int, int]:
    """Rules whose target spells more of the name win: fewer placeholders, more literal text."""
    names = placeholders(template)
    return len(names), -len(template)


def _prefixing(model) -> tuple[str, bool]:
    """(the base prefix, whether the saved architecture wants it on the trunk's tensors): a head's
    checkpoint (BertForSequenceClassification) nests the trunk under it, the trunk's own does not."""
    prefix = model.interface.base_prefix
    base = model.interface.matches.get("architectures", [])
    archs = saved_architectures(model)
    return prefix, bool(prefix) and not any(a in base for a in archs)


def saved_architectures(model) -> list[str]:
    source = model.config.hf.get("architectures") if hasattr(model.config, "hf") else None
    if model.head is not None:
        head = model.interface.heads[model.head]
        if source and any(a in head.architectures for a in source):
            return list(source)
        return list(head.architectures[:1])
    if source:
        return list(source)
    return list(model.interface.matches.get("architectures", [])[:1])


def checkpoint_tensors(model) -> dict[str, torch.Tensor]:
    """The model's params under checkpoint names, in the checkpoint's layout."""
    interface, config = model.interface, model.config
    params = _member_params(model.net)
    aliases = tied_params(model.net)
    prefix, wanted = _prefixing(model)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    # a legacy rule's layout is read, never written: its params fall to the rules below
    layout = [entry for entry in (getattr(model, "checkpoint_layout", None) or [])
              if all(t in params for t in entry[2]) and not entry[0].legacy]
    recorded_prefix = any(s.startswith(prefix) for entry in layout for s in entry[1]) if prefix else False
    for rule, sources, targets, shapes in layout:
        if all(t in aliases for t in targets) and any(aliases[t] in done for t in targets):
            continue      # a tie the checkpoint carried twice: written once under its owner
        if prefix and recorded_prefix != wanted:
            # the head changed (a base checkpoint fine-tuned with a new head, or the reverse)
            sources = [prefix + s if wanted else s.removeprefix(prefix) for s in sources]
        tensors = [params[t].detach() for t in targets]
        for s, t in zip(sources, invert_transforms(rule, tensors, config, shapes)):
            out[s] = t
        done.update(targets)
    head_params = interface.head_params(model.head) if model.head is not None else set()
    rules = [r for r in interface.weights if r.ignore is None and not r.legacy and _active(r, config)]
    base_head = interface.head_for(interface.matches.get("architectures"))
    base_params = interface.head_params(base_head) if base_head is not None else set()
    for name in params:
        if name in done or name in aliases:
            continue
        found = [(i, r, t) for i, r in enumerate(rules) for t in r.targets if template_regex(t).match(name)]
        if not found:
            raise CheckpointError(f"{interface.name}: no weight rule writes param {name}")
        _, rule, target = min(found, key=lambda f: (_specificity(f[2]), f[0]))
        binding = template_regex(target).match(name).groupdict()
        st = stacking(rule)
        values = [{}]
        if st is not None and st[0] == "unstack":
            # the params of every value of the placeholder go back into one tensor
            binding = {k: v for k, v in binding.items() if k != st[1]}
            n = 0
            while fill(rule.targets[0], {**binding, st[1]: str(n)}) in params:
                n += 1
            values = [{st[1]: str(p)} for p in range(n)]
        targets = [fill(t, {**binding, **v}) for v in values for t in rule.targets]
        blocked = [transform_name(t)[0] for t in rule.transforms if transform_name(t)[0] in NEEDS_SOURCE_SHAPES]
        if blocked:
            raise CheckpointError(f"{interface.name}: param {name} comes from rule {list(rule.sources)} whose "
                                  f"{blocked[0]} transform needs the checkpoint's source shapes; this model was "
                                  "not loaded from a checkpoint that records them")
        # the trunk's tensors, and a head's that the base model has too (a pooler), sit under the prefix
        top = name.split(".", 1)[0]
        trunk = top not in head_params or top in base_params
        tensors = [params[t].detach() for t in targets]
        back = invert_transforms(rule, tensors, config, [None] * len(rule.sources))
        if st is not None and st[0] == "stack":
            values = [{st[1]: str(p)} for p in range(len(back) // len(rule.sources))]
        sources = [(prefix if wanted and trunk else "") + fill(s, {**binding, **v}) for v in values for s in rule.sources]
        for s, t in zip(sources, back):
            out[s] = t
        done.update(targets)
    return out


def _unique(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied params (one storage) written once, like Transformers' save_pretrained; views copied out."""
    seen, unique = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in seen:
            seen.add(key)
            unique[name] = t.contiguous().clone() if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
    return unique


def save_pretrained(model, folder: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """Write the weights (safetensors; sharded with an index past max_shard_size), config.json,
    generation_config.json and the source folder's tokenizer files: what `runtime.load` and
    Transformers' from_pretrained read. A quantized model is saved quantized (runtime.quant.save_quantized:
    one file, read back by from_pretrained)."""
    from huggingface_hub import save_torch_state_dict
    if model.load_report.get("tensor_parallel", {}).get("ranks", 1) > 1:
        raise CheckpointError("this model is split across ranks (tp_plan): it holds only this rank's share of "
                              "its weights; save from a process that loaded it whole")
    if getattr(model, "quantization", None) is not None:
        # its quantized modules hold no float weight for the checkpoint's names: the quantized format,
        # which from_pretrained reads back (as Transformers saves a quantized model quantized)
        from runtime.quant.io import save_quantized
        return save_quantized(model, folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _unique({n: t.to("cpu") for n, t in checkpoint_tensors(model).items()})
    with tempfile.TemporaryDirectory(dir=folder, prefix=".graphspec-save-") as tmp:
        save_torch_state_dict(tensors, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        written = sorted(os.listdir(tmp))
        for old in folder.iterdir():
            if old.is_file() and (old.name in WEIGHT_FILES or (old.name.startswith("model-") and old.name.endswith(".safetensors"))):
                if old.name not in written:
                    old.unlink()
        for name in written:
            # a rename: the old file stays alive for any params still mapping it
            os.replace(Path(tmp) / name, folder / name)
    write_json(folder / "config.json", config_json(model))
    write_side_files(model, folder)
    return folder


def write_side_files(model, folder: Path) -> None:
    """What a checkpoint folder holds besides weights and config.json: a model that generates writes
    its generation config as it stands (from the checkpoint's file or its config.json, with the
    caller's changes), as Transformers does; the source folder's tokenizer files (and a generation
    config otherwise) are carried."""
    generation = getattr(model, "generation_config", None) if model.contract.generate is not None else None
    if generation is not None:
        write_json(folder / GENERATION_CONFIG, generation.to_json())
    source = Path(model.source) if getattr(model, "source", None) else None
    if source is not None and source.resolve() != folder.resolve():
        for name in CARRIED_FILES:
            if (source / name).is_file() and not (name == GENERATION_CONFIG and generation is not None):
                shutil.copyfile(source / name, folder / name)


def write_json(path: Path, data) -> None:
    """`data` as indented JSON, written whole or not at all (a temporary file renamed over `path`)."""
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def config_json(model) -> dict:
    """The model's config.json: every key of its source config with this model's values, the saved
    architecture and its dtype."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    config["architectures"] = saved_architectures(model)
    if "model_type" not in config and model.interface.matches.get("model_type"):
        config["model_type"] = model.interface.matches["model_type"][0]
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    return config


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
