"""`load`: an artifact + a checkpoint folder -> a model; `init_random` for tests and demos.

Reads the artifact only (manifest, interface.json, model.py): never the spec, never the compiler.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch

from runtime.artifact import open_artifact
from runtime.config import read_config_json, resolve_config
from runtime.errors import CheckpointError, ConfigError
from runtime.generation.config import GenerationConfig
from runtime.generation.tokenizer import Tokenizer
from runtime.kernels import env_forced
from runtime.memory import check_model_size
from runtime.model import CompiledModel
from runtime.safetensors_io import open_checkpoint
from runtime.weights import check_no_meta, init_new, load_into, plan_load

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


def load(artifact: str | Path, checkpoint: str | Path, dtype=None, device="cpu",
         strict: bool = True, config_overrides: dict | None = None, head: str | None = None,
         init_new_head: bool = False, triton: bool | None = None, tp_plan: str | None = None) -> CompiledModel:
    """Build the artifact's model from `checkpoint`'s config.json and load its weights.

    triton=True forces the fused groups' Triton kernels even on CPU tensors (through Triton's
    interpreter when there is no GPU); False keeps CPU on PyTorch code; None reads GRAPHSPEC_TRITON
    now (=1 forces). The setting belongs to the artifact's module: the latest load decides it for
    every model loaded from that artifact.

    strict=False reports unexpected tensors as a warning instead of an error; missing and
    mis-shaped tensors are always errors. `head` picks one of the spec's task heads (default: the
    one config.json's architectures names). A head the checkpoint has no weights for is an error
    unless `init_new_head=True`: then its params are newly initialised, listed by name in
    `model.load_report["newly_initialized"]`, and a warning says so.

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
        config_overrides = {**(config_overrides or {}), **parallel.overrides}
    interface, module = art.interface, art.module
    folder = Path(checkpoint)
    hf = read_config_json(folder)
    head = choose_head(interface, hf, head)
    config = resolve_config(interface, hf, source=str(folder / "config.json"), overrides=config_overrides)
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
        load_into(net, plan, ckpt, config, torch_dtype, device, shard=shard)
    if plan.head_missing:
        init_new(net, plan.head_missing, torch_dtype, device, float(hf.get("initializer_range", 0.02)))
        warnings.warn(f"{folder}: the '{head}' head is newly initialised (the checkpoint has no weights for "
                      f"{', '.join(plan.head_missing)}); its outputs mean nothing until it is trained")
    check_no_meta(net)
    net.eval()
    report = {"head": head, "newly_initialized": list(plan.head_missing), "untied": list(plan.untied),
              "ignored": plan.ignored,
              "tensors": sum(len(a.sources) for a in plan.assignments)}
    model = CompiledModel(net, config, interface, art.manifest, torch_dtype, device, report, head=head)
    model.generation_config = GenerationConfig.from_checkpoint(folder)
    if os.path.lexists(folder / "tokenizer.json"):
        model.tokenizer = Tokenizer.from_folder(folder, model.text_keys())
    if parallel is not None:
        model.group = parallel.group
        report["tensor_parallel"] = parallel.report()
    if interface.quantization is not None:
        _quantize(model)
    labels = hf.get("id2label")
    if isinstance(labels, dict):
        model.id2label = {int(k): v for k, v in labels.items()}
    elif isinstance(config.get("num_labels"), int):
        # config.json leaves the labels out when they are Transformers' defaults
        model.id2label = {i: f"LABEL_{i}" for i in range(config["num_labels"])}
    return model


def init_random(artifact: str | Path, hf: dict, dtype=None, seed: int = 0, device="cpu") -> CompiledModel:
    """A model with random weights (torch's default init) for a config.json-style dict: the way to
    make a test or demo checkpoint without any reference library."""
    art = open_artifact(artifact)
    config = resolve_config(art.interface, hf, source="the given config")
    torch_dtype = _dtype(dtype, hf)
    check_model_size(art.interface, config, torch_dtype, device, None, "the given config")
    torch.manual_seed(seed)
    net = art.module.MODEL(art.module.Config(**config)).to(device=device, dtype=torch_dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    model = CompiledModel(net, config, art.interface, art.manifest, torch_dtype, device, {"initialised": "random"})
    model.generation_config = GenerationConfig.from_model_config(hf, source="the given config")
    if art.interface.quantization is not None:
        _quantize(model)
    return model


def _quantize(model: CompiledModel) -> None:
    """The modules the compiler marked (interface.json `quantization`) swapped for quantized ones,
    from the float weights just loaded."""
    from runtime.quant.convert import quantize_model     # the quantized kernels: only where they run
    quantize_model(model)
