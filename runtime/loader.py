"""`load` (an artifact + a checkpoint folder) and `from_pretrained` (a checkpoint folder alone)."""
from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch

from compiler import __version__
from compiler.artifact import MANIFEST, is_complete, read_manifest
from compiler.errors import SpecError
from compiler.spec import load_spec, spec_from_data
from runtime.config import read_config_json, resolve_config
from runtime.errors import ArtifactError, CheckpointError, ConfigError
from runtime.model import SUPPLIED_INPUTS, CompiledModel
from runtime.safetensors_io import open_checkpoint
from runtime.weights import check_no_meta, load_into, plan_load

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
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


def _import_model(directory: Path, manifest: dict):
    name = f"graphspec_artifact_{manifest['key'][:16]}_{manifest['name']}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def open_artifact(directory: str | Path):
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ArtifactError(f"{directory}: no readable {MANIFEST}; is this a graphspec artifact? (graphspec compile SPEC -o DIR)")
    if not is_complete(directory):
        raise ArtifactError(f"{directory}: files do not match {MANIFEST} (edited or half-written); compile again")
    built_by = manifest.get("versions", {}).get("graphspec")
    if built_by != __version__ or manifest.get("versions", {}).get("torch") != torch.__version__:
        raise ArtifactError(f"{directory}: compiled by graphspec {built_by} for torch "
                            f"{manifest.get('versions', {}).get('torch')}; this is graphspec {__version__} with torch "
                            f"{torch.__version__}: compile again")
    spec = spec_from_data(json.loads((directory / "spec.json").read_text())["spec"])
    return manifest, spec, _import_model(directory, manifest)


def load(artifact: str | Path, checkpoint: str | Path, dtype=None, device="cpu",
         strict: bool = True, config_overrides: dict | None = None, triton: bool | None = None) -> CompiledModel:
    """Build the artifact's model from `checkpoint`'s config.json and load its weights.

    triton=True forces the fused groups' Triton kernels even on CPU tensors (through Triton's
    interpreter when there is no GPU; also GRAPHSPEC_TRITON=1); False keeps CPU on PyTorch code.
    The setting belongs to the artifact's module, so it holds for every model loaded from it.

    strict=False reports unexpected tensors as a warning instead of an error; missing and
    mis-shaped tensors are always errors.
    """
    manifest, spec, module = open_artifact(artifact)
    folder = Path(checkpoint)
    hf = read_config_json(folder)
    config = resolve_config(spec, hf, source=str(folder / "config.json"), overrides=config_overrides)
    unknown = [n for n in spec.model.inputs if n not in SUPPLIED_INPUTS]
    if unknown:
        raise ArtifactError(f"model inputs {unknown} cannot be supplied by the runtime (it knows {SUPPLIED_INPUTS})")
    torch_dtype = _dtype(dtype, hf)
    if triton is not None and hasattr(module, "kernels"):
        module.kernels.force = bool(triton)
    with torch.device("meta"):
        net = module.MODEL(module.Config(**config))
    with open_checkpoint(folder) as ckpt:
        plan = plan_load(spec, config, net, ckpt.tensors, str(folder))
        if not strict and plan.unexpected:
            warnings.warn(f"{folder}: {len(plan.unexpected)} unexpected tensor(s) ignored: {', '.join(plan.unexpected[:12])}")
            plan.unexpected = []
        problems = plan.problems()
        if problems:
            raise CheckpointError(f"{folder}: the checkpoint does not fit spec '{spec.name}':\n" + "\n".join(problems))
        load_into(net, plan, ckpt, config, torch_dtype, device)
    check_no_meta(net)
    net.eval()
    report = {"ignored": plan.ignored, "tensors": sum(len(a.sources) for a in plan.assignments)}
    return CompiledModel(net, config, spec, manifest, torch_dtype, device, report)


def find_spec(hf: dict, specs_dir: Path = SPECS_DIR) -> Path:
    """The spec whose `matches` recognises this config.json (architectures first, then model_type)."""
    by_arch, by_type = [], []
    archs = set(hf.get("architectures") or [])
    for path in sorted(specs_dir.glob("*.yaml")):
        try:
            spec = load_spec(path)
        except SpecError:
            continue
        if archs & set(spec.matches.get("architectures", [])):
            by_arch.append(path)
        if hf.get("model_type") in spec.matches.get("model_type", []):
            by_type.append(path)
    found = by_arch or by_type
    if not found:
        raise ConfigError(f"no spec in {specs_dir} recognises model_type={hf.get('model_type')!r}, "
                          f"architectures={sorted(archs)}")
    return found[0]


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path).count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
        except Exception as err:  # network or cache miss: say which
            raise CheckpointError(f"'{name_or_path}' is not a local folder and could not be fetched "
                                  f"from the Hugging Face hub or its cache: {err}") from None
    raise CheckpointError(f"{path}: no such checkpoint folder")


def from_pretrained(name_or_path: str | Path, dtype=None, device="cpu", spec: str | Path | None = None,
                    strict: bool = True) -> CompiledModel:
    """Read config.json, pick the spec that recognises it, compile it (cached) and load the weights."""
    from compiler.pipeline import compile_spec
    folder = resolve_checkpoint(name_or_path)
    hf = read_config_json(folder)
    spec_path = Path(spec) if spec else find_spec(hf)
    artifact = compile_spec(spec_path).directory
    return load(artifact, folder, dtype=dtype, device=device, strict=strict)
