"""Quantized models saved and reloaded as safetensors, without quantizing again.

`save_quantized(model, folder)` writes `model.safetensors` (whole or not at all): every tensor of the
network under its module path (`layers.0.attn.qkv_proj.qweight`, `...scales`, `...zeros`, float
params as they are), tensors shared by several modules (a tied embedding and LM head) once, and
metadata naming the scheme. Beside it, `config.json` (the Hugging Face config with
`quantization_config`, for people and tools), generation_config.json and the source folder's
tokenizer files, as save_pretrained writes them. `load_quantized(folder, artifact)` rebuilds the
network from the artifact and the saved config values and assigns the stored tensors; every name,
shape and dtype is checked first.

Metadata keys (all JSON text): format ("graphspec-quantized"), format_version ("1"),
quantization_config, modules (path -> its role, runtime.quant.config.ROLES), spec, spec_sha256, config
(the resolved config values), head, dtype, tied (alias name -> stored name).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from runtime.errors import CheckpointError, ConfigError
from runtime.artifact import open_artifact
from runtime.memory import check_model_size
from runtime.model import CompiledModel
from runtime.quant.config import LINEAR_ROLES, QuantConfig
from runtime.quant.linear import QuantEmbedding, QuantGroupedLinear, QuantLinear
from runtime.safetensors_io import DTYPES, SafetensorsFile
from runtime.config import read_config_json
from runtime.hf_config import ModelConfig
from runtime.loader import read_folder_files
from runtime.save import config_json, write_json, write_side_files

FORMAT = "graphspec-quantized"
FORMAT_VERSION = "1"
FILE = "model.safetensors"
REQUIRED = ("format", "format_version", "quantization_config", "modules", "spec", "config", "dtype", "tied")


def save_quantized(model, folder: str | Path) -> Path:
    """Write a model quantized by `quantize_model` to `folder` (model.safetensors, config.json)."""
    if getattr(model, "quantization", None) is None:
        raise ValueError("save_quantized: the model is not quantized (runtime.quant.quantize_model first); "
                         "save a float model with runtime.save_pretrained")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, tied, seen = {}, {}, {}
    for name, t in model.net.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        full = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        tensors[name] = t.detach().contiguous() if full else t.detach().clone()
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "quantization_config": json.dumps(model.quantization_config),
        "modules": json.dumps(model.load_report["quantized"]),
        "spec": model.interface.name, "spec_sha256": str(model.manifest.get("spec_sha256", "")),
        "config": json.dumps(model.config), "head": json.dumps(model.load_report.get("head")),
        "dtype": str(model.dtype).removeprefix("torch."), "tied": json.dumps(tied),
    }
    # written whole or not at all: a temporary file renamed over the old one
    partial = folder / f".{FILE}.partial"
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, folder / FILE)
    config = config_json(model)
    config["quantization_config"] = model.quantization_config
    write_json(folder / "config.json", config)
    write_side_files(model, folder)      # generation_config.json, the tokenizer's files
    return folder


def _meta(file: SafetensorsFile, key: str, where: str):
    try:
        return json.loads(file.metadata[key])
    except ValueError:
        raise CheckpointError(f"{where}: metadata '{key}' is not valid JSON") from None


def load_quantized(folder: str | Path, artifact: str | Path, device="cpu") -> CompiledModel:
    """The quantized model saved in `folder`, built from `artifact` (the compiled spec it was saved
    from); nothing is quantized again."""
    path = Path(folder) / FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such file (a folder written by runtime.quant.save_quantized)")
    file = SafetensorsFile(path)
    where = str(path)
    md = file.metadata
    missing = [k for k in REQUIRED if k not in md]
    if md.get("format") != FORMAT or missing:
        raise CheckpointError(f"{where}: not a graphspec quantized checkpoint (metadata 'format' must be "
                              f"{FORMAT!r}; missing keys: {', '.join(missing) or 'none'})")
    if md["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {md['format_version']!r}, this runtime reads {FORMAT_VERSION!r}")
    try:
        qconfig = QuantConfig.from_dict(_meta(file, "quantization_config", where), f"{where}: quantization_config")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    art = open_artifact(artifact)
    spec, module = art.interface, art.module
    if spec.name != md["spec"]:
        raise CheckpointError(f"{where}: saved from spec '{md['spec']}', but the artifact {artifact} is spec '{spec.name}'")
    config, head, tied = _meta(file, "config", where), _meta(file, "head", where), _meta(file, "tied", where)
    modules = _meta(file, "modules", where)
    dtype = getattr(torch, md["dtype"], None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{where}: metadata 'dtype' {md['dtype']!r} is not a float dtype")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: metadata 'config' must be a JSON object, got {type(config).__name__}")
    try:
        check_model_size(spec, config, dtype, device, head, f"{where}: metadata 'config'")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    try:
        with torch.device("meta"):
            net = (module.HEADS[head] if head is not None else module.MODEL)(module.Config(**config))
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{where}: metadata 'config'/'head' do not build spec '{spec.name}': {err}") from None
    _swap_shells(net, modules, qconfig, dtype, where, artifact)
    _assign(net, file, tied, dtype, device, where)
    # the model as runtime.load leaves one: the config with the folder's config.json (labels ...),
    # what else the folder holds, dropout off (the wrapper's flag, not only the net's)
    folder = Path(folder)
    hf = read_config_json(folder) if (folder / "config.json").exists() else {}
    model = CompiledModel(net, ModelConfig(config, hf, spec.config), spec, art.manifest, dtype, device,
                          {"head": head, "quantized": dict(modules), "checkpoint": where}, head=head, source=folder)
    read_folder_files(model, folder, hf)
    model.eval()
    model.quantization = qconfig
    model.quantization_config = qconfig.to_dict()
    return model


def _swap_shells(net: nn.Module, modules: dict, qconfig: QuantConfig, dtype: torch.dtype, where: str,
                 artifact) -> None:
    if not isinstance(modules, dict):
        raise CheckpointError(f"{where}: metadata 'modules' must map module paths to kinds")
    for path, kind in modules.items():
        try:
            old = net.get_submodule(path)
        except AttributeError:
            # the fusion pass keeps linears of different formats apart, so the modules depend on the config
            raise CheckpointError(
                f"{where}: metadata 'modules' names '{path}', which the network built from {artifact} does not "
                f"have; compile the spec with this checkpoint's quantization_config (graphspec compile --quant "
                f"'{json.dumps(qconfig.to_dict())}'), or load the folder with runtime.from_pretrained") from None
        w = getattr(old, "weight", None)
        if kind == "embedding" and isinstance(old, nn.Embedding):
            new = QuantEmbedding(w.shape[0], w.shape[1], qconfig.scheme_for(kind), dtype=dtype, device="meta")
        elif kind == "experts" and w is not None and w.dim() == 3:
            new = QuantGroupedLinear(w.shape[0], w.shape[2], w.shape[1], qconfig.scheme_for(kind),
                                     bias=getattr(old, "bias", None) is not None, dtype=dtype, device="meta")
        elif kind in LINEAR_ROLES and w is not None and w.dim() == 2 and not isinstance(old, nn.Embedding):
            new = QuantLinear(w.shape[1], w.shape[0], qconfig.scheme_for(kind), bias=getattr(old, "bias", None) is not None,
                              parts=getattr(old, "parts", None), dtype=dtype, device="meta")
        else:
            raise CheckpointError(f"{where}: module '{path}' is a {type(old).__name__}, which cannot hold a "
                                  f"quantized {kind!r}")
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, new)


def _assign(net: nn.Module, file: SafetensorsFile, tied: dict, dtype: torch.dtype, device, where: str) -> None:
    # every name of a shared param (a float LM head tied to the embedding): named_parameters keeps one
    params = dict(net.named_parameters(remove_duplicate=False))
    want = net.state_dict(keep_vars=True)
    names = {n: tied.get(n, n) for n in want}
    stored = set(file.tensors)
    missing = sorted(n for n, s in names.items() if s not in stored)
    unexpected = sorted(stored - set(names.values()))
    problems = []
    for n, s in names.items():
        if s in stored:
            # float params are saved in the model dtype; quantized buffers in their scheme's dtypes
            expected = dtype if n in params else want[n].dtype
            info = file.tensors[s]
            if tuple(info.shape) != tuple(want[n].shape) or DTYPES[info.dtype] != expected:
                problems.append(f"{n}: expected {list(want[n].shape)} {expected}, got {list(info.shape)} {info.dtype}")
    if missing or unexpected or problems:
        lines = [f"{where}: the stored tensors do not fit the network"]
        lines += [f"  missing: {', '.join(missing[:12])}"] if missing else []
        lines += [f"  unexpected: {', '.join(unexpected[:12])}"] if unexpected else []
        lines += [f"  mis-shaped or wrong dtype: {'; '.join(problems[:12])}"] if problems else []
        raise CheckpointError("\n".join(lines))
    loaded: dict[str, torch.Tensor] = {}
    for n, s in names.items():
        if s not in loaded:
            loaded[s] = file.get(s).to(device)
        owner, _, leaf = n.rpartition(".")
        module = net.get_submodule(owner) if owner else net
        if n in params:
            # trainable as in the network built for it (a norm's weight), as from_pretrained leaves it;
            # a quantized linear's bias is not
            value = nn.Parameter(loaded[s], requires_grad=getattr(module, leaf).requires_grad)
        else:
            value = loaded[s]
        setattr(module, leaf, value)
