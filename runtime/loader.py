"""`load`: an artifact + a checkpoint folder -> a model; `init_random` for tests and demos.

Reads the artifact only (manifest, interface.json, model.py): never the spec, never the compiler.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import os
import warnings
from pathlib import Path

import torch

from runtime.artifact import open_artifact
from runtime.config import read_config_json, resolve_config
from runtime.errors import CheckpointError, ConfigError
from runtime.generation.config import GenerationConfig
from runtime.generation.tokenizer import Tokenizer
from runtime.hf_config import LABEL_KEYS, ModelConfig, set_key
from runtime.init import initialise
from runtime.kernels import env_forced
from runtime.memory import check_model_size
from runtime.model import CompiledModel
from runtime.safetensors_io import open_checkpoint
from runtime.weights import check_no_meta, load_into, plan_load

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _dtype(dtype, hf: dict) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # 5.x writes `dtype`, 4.x wrote `torch_dtype`
        name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        if name not in DTYPES:
            raise ConfigError(f"config.json: dtype '{name}' is not one of {', '.join(DTYPES)}")
        return DTYPES[name]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
                 "kaiming_normal_", "xavier_uniform_", "xavier_normal_")


@contextlib.contextmanager
def _no_init():
    """Skip torch's param initialisers while a model is built on the meta device: the checkpoint
    overwrites every value, and initialising meta tensors routes through torch's reference ops,
    whose first use imports the compiler stack (~75 MB, a third of a second)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def choose_head(interface, hf: dict, head: str | None) -> str | None:
    """The head asked for, else the one config.json's architectures names, else the spec's first."""
    if not interface.heads:
        if head is not None:
            raise ConfigError(f"spec '{interface.name}' declares no task heads; its model outputs "
                              f"{', '.join(interface.contract.outputs)} (asked for head '{head}')")
        return None
    if head is not None:
        if head not in interface.heads:
            raise ConfigError(f"spec '{interface.name}' has no head '{head}' (it has: {', '.join(interface.heads)})")
        return head
    return interface.head_for(hf.get("architectures")) or next(iter(interface.heads))


def load(artifact: str | Path, checkpoint: str | Path, dtype="auto", device="cpu",
         strict: bool = True, config_overrides: dict | None = None, head: str | None = None,
         init_new_head: bool = False, triton: bool | None = None, hf: dict | None = None,
         tp_plan: str | None = None) -> CompiledModel:
    """Build the artifact's model from `checkpoint`'s config.json and load its weights.

    dtype: a torch.dtype or name, or "auto" (the default, as Transformers 5): the checkpoint's dtype
    as config.json records it (float32 when it records none).

    triton=True forces the fused groups' Triton kernels even on CPU tensors (through Triton's
    interpreter when there is no GPU); False keeps CPU on PyTorch code; None reads GRAPHSPEC_TRITON
    now (=1 forces). The setting belongs to the artifact's module: the latest load decides it for
    every model loaded from that artifact.

    strict=False reports unexpected tensors as a warning instead of an error; missing and
    mis-shaped tensors are always errors. `head` picks one of the spec's task heads (default: the
    one config.json's architectures names). A head the checkpoint has no weights for is an error
    unless `init_new_head=True`: then its params are newly initialised (the spec's `init:`), listed
    by name in `model.load_report["newly_initialized"]`, and a warning says so.

    `config_overrides` change config values by spec name or config.json key (an unknown key is an
    error); `hf`, when given, stands in for the checkpoint's config.json. Params are trainable
    (requires_grad) as Transformers' are; the model starts in eval mode.

    An artifact compiled with quantization (`graphspec compile --quant`) comes back with the params
    it marks quantized from the checkpoint's float weights (`model.load_report["quantized"]`).

    tp_plan="auto": tensor parallelism over the process group (torchrun's environment; runtime/parallel)
    by the plan the compiler derived (an artifact compiled with --tp): each rank reads only its slices
    of the checkpoint, a CUDA device becomes the rank's own GPU, and outputs are the whole model's.
    """
    art = open_artifact(artifact)
    parallel = None
    if tp_plan is not None:
        from runtime.parallel import TensorParallel
        parallel = TensorParallel.open(art.directory, tp_plan, device)
        device = parallel.device
    interface, module = art.interface, art.module
    folder = Path(checkpoint)
    hf = read_config_json(folder) if hf is None else copy.deepcopy(hf)
    derived = apply_overrides(interface, hf, config_overrides, str(folder / "config.json"))
    if parallel is not None:
        # the rank's place in the process group: config entries of the compiled split, never config.json keys
        derived.update(parallel.overrides)
    head = choose_head(interface, hf, head)
    config = ModelConfig(resolve_config(interface, hf, source=str(folder / "config.json"), overrides=derived),
                         hf, interface.config)
    torch_dtype = _dtype(dtype, hf)
    check_model_size(interface, config, torch_dtype, device, head, str(folder / "config.json"),
                     shards=parallel.size if parallel is not None else 1)
    if hasattr(module, "kernels"):
        module.kernels.force = env_forced() if triton is None else bool(triton)
    with torch.device("meta"), _no_init():
        net = (module.HEADS[head] if head is not None else module.MODEL)(module.Config(**config))
    shard = parallel.shard(config) if parallel is not None else None
    with open_checkpoint(folder) as ckpt:
        plan = plan_load(interface, config, net, ckpt.tensors, str(folder), head=head, shard=shard)
        if not strict and plan.unexpected:
            warnings.warn(f"{folder}: {len(plan.unexpected)} unexpected tensor(s) ignored: {', '.join(plan.unexpected[:12])}")
            plan.unexpected = []
        problems = plan.problems()
        if problems:
            raise CheckpointError(f"{folder}: the checkpoint does not fit spec '{interface.name}':\n" + "\n".join(problems))
        if plan.head_missing and not init_new_head:
            raise CheckpointError(
                f"{folder}: the checkpoint has no weights for the '{head}' head of spec '{interface.name}': "
                f"{', '.join(plan.head_missing)}. Pass init_new_head=True to initialise them randomly "
                "(to fine-tune them), or choose a head the checkpoint has weights for with head=... "
                f"(the spec has: {', '.join(interface.heads)}).")
        layout = [(a.rule, list(a.sources), list(a.targets), [tuple(ckpt.tensors[s].shape) for s in a.sources])
                  for a in plan.assignments]
        load_into(net, plan, ckpt, config, torch_dtype, device, shard=shard)
    report = {"head": head, "newly_initialized": list(plan.head_missing), "untied": list(plan.untied),
              "ignored": plan.ignored,
              "tensors": sum(len(a.sources) for a in plan.assignments)}
    model = CompiledModel(net, config, interface, art.manifest, torch_dtype, device, report, head=head, source=folder)
    model.checkpoint_layout = layout
    read_folder_files(model, folder, hf)
    if parallel is not None:
        model.group = parallel.group
        model.shard = shard           # what this rank holds of each tensor (quantization reads it)
        report["tensor_parallel"] = parallel.report()
    if plan.head_missing:
        _materialise(net, plan.head_missing, torch_dtype, device)
        initialise(model, plan.head_missing)
        warnings.warn(f"{folder}: the '{head}' head is newly initialised (the checkpoint has no weights for "
                      f"{', '.join(plan.head_missing)}); its outputs mean nothing until it is trained")
    check_no_meta(net)
    model.eval()
    if interface.quantization is not None:
        _quantize(model)
    return model


def read_folder_files(model: CompiledModel, folder: Path, hf: dict) -> None:
    """What a model takes from its checkpoint folder besides weights: the generation defaults
    (generation_config.json, else config.json), the tokenizer, and its labels where config.json
    names them (`hf`, the folder's config.json as read)."""
    model.generation_config = GenerationConfig.from_checkpoint(folder)
    if os.path.lexists(folder / "tokenizer.json"):
        model.tokenizer = Tokenizer.from_folder(folder, model.text_keys())
    config = model.config
    model.id2label = config.id2label if (isinstance(hf.get("id2label"), dict) or "num_labels" in config) else None


def _materialise(net, names: list[str], dtype: torch.dtype, device) -> None:
    """Real (uninitialised) storage for params still on the meta device, before they are initialised."""
    for name in names:
        owner_path, _, leaf = name.rpartition(".")
        owner = net.get_submodule(owner_path) if owner_path else net
        setattr(owner, leaf, torch.nn.Parameter(torch.empty(getattr(owner, leaf).shape, dtype=dtype, device=device)))


def apply_overrides(interface, hf: dict, overrides: dict | None, source: str) -> dict:
    """Config overrides written into the config.json dict: by config.json key (Transformers' names, as
    from_pretrained's keyword arguments) or by the spec's name (written under the key it is read from).
    A key that is neither, nor already in config.json, is an error naming it. Returns the overrides of
    derived entries (no config.json key to write them under), by spec name, for resolve_config."""
    derived: dict = {}
    if not overrides:
        return derived
    keys = {k for e in interface.config.values() for k in e.hf}
    known = keys | {k.split(".")[0] for k in keys} | set(hf) | set(LABEL_KEYS)
    unknown = [k for k in overrides if k not in known and k not in interface.config]
    if unknown:
        near = {k: difflib.get_close_matches(k, sorted(known | set(interface.config)), n=1) for k in unknown}
        raise ConfigError(f"{source}: unknown config key(s) " + ", ".join(
            f"'{k}'" + (f" (did you mean '{near[k][0]}'?)" if near[k] else "") for k in unknown)
            + f"; spec '{interface.name}' reads: {', '.join(sorted(keys))}")
    view = ModelConfig({}, hf, interface.config)
    for key, value in overrides.items():
        if key in interface.config and key not in keys:
            spec_key = view.hf_key(key)
            if spec_key is None:
                derived[key] = value
            else:
                set_key(hf, spec_key, value)
        else:
            set_key(hf, key, value)
    return derived


def init_random(artifact: str | Path, hf: dict, dtype=None, seed: int | None = 0, device="cpu",
                head: str | None = None, declared_init: bool = False, overrides: dict | None = None) -> CompiledModel:
    """A model with fresh weights for a config.json-style dict: the way to make a test or demo
    checkpoint without any reference library. torch's default initialisation, or, with
    `declared_init`, the spec's `init:` (the architecture's reference initialiser, as from_config
    uses). `head` picks a task head (default: the one `architectures` names, else none); `overrides`
    set derived config entries by spec name."""
    art = open_artifact(artifact)
    hf = copy.deepcopy(hf)
    head = choose_head(art.interface, hf, head) if head is not None or hf.get("architectures") else None
    config = ModelConfig(resolve_config(art.interface, hf, source="the given config", overrides=overrides), hf,
                         art.interface.config)
    torch_dtype = _dtype(dtype, hf)
    check_model_size(art.interface, config, torch_dtype, device, head, "the given config")
    if seed is not None:
        torch.manual_seed(seed)
    with _no_init() if declared_init else contextlib.nullcontext():
        net = (art.module.HEADS[head] if head is not None else art.module.MODEL)(art.module.Config(**config))
    net = net.to(device=device, dtype=torch_dtype)
    model = CompiledModel(net, config, art.interface, art.manifest, torch_dtype, device, {"initialised": "random"},
                          head=head).eval()
    if declared_init:
        initialise(model)
    model.id2label = config.id2label if head is not None and "num_labels" in config else None
    model.generation_config = GenerationConfig.from_model_config(hf, source="the given config")
    if art.interface.quantization is not None:
        _quantize(model)
    return model


def _quantize(model: CompiledModel) -> None:
    """The modules the compiler marked (interface.json `quantization`) swapped for quantized ones,
    from the float weights just loaded."""
    from runtime.quant.convert import quantize_model     # the quantized kernels: only where they run
    quantize_model(model)
