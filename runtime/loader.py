"""`load` (an artifact + a checkpoint folder) and `from_pretrained` (a checkpoint folder alone)."""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from compiler import __version__
from compiler.artifact import MANIFEST, import_file, is_complete, read_manifest
from compiler.errors import SpecError
from compiler.spec import load_spec, spec_from_data
from compiler.triton.dispatch import env_forced
from runtime.config import read_config_json, resolve_config
from runtime.errors import ArtifactError, CheckpointError, ConfigError
from runtime.generation.config import GenerationConfig
from runtime.generation.tokenizer import Tokenizer
from runtime.model import SUPPLIED_INPUTS, CompiledModel
from runtime.safetensors_io import open_checkpoint
from runtime.weights import check_no_meta, init_new, load_into, plan_load

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


def _import_model(directory: Path, manifest: dict):
    return import_file(f"graphspec_artifact_{manifest['key'][:16]}_{manifest['name']}", directory / "model.py")


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


def choose_head(spec, hf: dict, head: str | None) -> str | None:
    """The head asked for, else the one config.json's architectures names, else the spec's first."""
    if not spec.heads:
        if head is not None:
            raise ConfigError(f"spec '{spec.name}' declares no task heads; its model outputs "
                              f"{', '.join(spec.model.outputs)} (asked for head '{head}')")
        return None
    if head is not None:
        if head not in spec.heads:
            raise ConfigError(f"spec '{spec.name}' has no head '{head}' (it has: {', '.join(spec.heads)})")
        return head
    return spec.head_for(hf.get("architectures")) or next(iter(spec.heads))


def load(artifact: str | Path, checkpoint: str | Path, dtype=None, device="cpu",
         strict: bool = True, config_overrides: dict | None = None, head: str | None = None,
         init_new_head: bool = False, triton: bool | None = None) -> CompiledModel:
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
    """
    manifest, spec, module = open_artifact(artifact)
    folder = Path(checkpoint)
    hf = read_config_json(folder)
    head = choose_head(spec, hf, head)
    config = resolve_config(spec, hf, source=str(folder / "config.json"), overrides=config_overrides)
    unknown = [n for n in spec.model.inputs if n not in SUPPLIED_INPUTS]
    if unknown:
        raise ArtifactError(f"model inputs {unknown} cannot be supplied by the runtime (it knows {SUPPLIED_INPUTS})")
    torch_dtype = _dtype(dtype, hf)
    if hasattr(module, "kernels"):
        module.kernels.force = env_forced() if triton is None else bool(triton)
    with torch.device("meta"), _no_init():
        net = (module.HEADS[head] if head is not None else module.MODEL)(module.Config(**config))
    with open_checkpoint(folder) as ckpt:
        plan = plan_load(spec, config, net, ckpt.tensors, str(folder), head=head)
        if not strict and plan.unexpected:
            warnings.warn(f"{folder}: {len(plan.unexpected)} unexpected tensor(s) ignored: {', '.join(plan.unexpected[:12])}")
            plan.unexpected = []
        problems = plan.problems()
        if problems:
            raise CheckpointError(f"{folder}: the checkpoint does not fit spec '{spec.name}':\n" + "\n".join(problems))
        if plan.head_missing and not init_new_head:
            raise CheckpointError(
                f"{folder}: the checkpoint has no weights for the '{head}' head of spec '{spec.name}': "
                f"{', '.join(plan.head_missing)}. Pass init_new_head=True to initialise them randomly "
                "(to fine-tune them), or choose a head the checkpoint has weights for with head=... "
                f"(the spec has: {', '.join(spec.heads)}).")
        load_into(net, plan, ckpt, config, torch_dtype, device)
    if plan.head_missing:
        init_new(net, plan.head_missing, torch_dtype, device, float(hf.get("initializer_range", 0.02)))
        warnings.warn(f"{folder}: the '{head}' head is newly initialised (the checkpoint has no weights for "
                      f"{', '.join(plan.head_missing)}); its outputs mean nothing until it is trained")
    check_no_meta(net)
    net.eval()
    report = {"head": head, "newly_initialized": list(plan.head_missing), "untied": list(plan.untied),
              "ignored": plan.ignored,
              "tensors": sum(len(a.sources) for a in plan.assignments)}
    model = CompiledModel(net, config, spec, manifest, torch_dtype, device, report)
    model.generation_config = GenerationConfig.from_checkpoint(folder)
    if (folder / "tokenizer.json").is_file():
        model.tokenizer = Tokenizer.from_folder(folder)
    labels = hf.get("id2label")
    if isinstance(labels, dict):
        model.id2label = {int(k): v for k, v in labels.items()}
    elif isinstance(config.get("num_labels"), int):
        # config.json leaves the labels out when they are Transformers' defaults
        model.id2label = {i: f"LABEL_{i}" for i in range(config["num_labels"])}
    return model


_MATCHES: dict[tuple, dict] = {}


def _matches(path: Path) -> dict:
    """A spec's `matches` (with its heads' architectures), parsed once per file version; a broken
    spec matches nothing."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _MATCHES:
        try:
            spec = load_spec(path)
        except SpecError:
            _MATCHES[key] = {}
        else:
            heads = [a for h in spec.heads.values() for a in h.architectures]
            _MATCHES[key] = {**spec.matches, "architectures": [*spec.matches.get("architectures", []), *heads]}
    return _MATCHES[key]


def find_spec(hf: dict, specs_dir: Path = SPECS_DIR) -> Path:
    """The spec whose `matches` recognises this config.json (architectures first, then model_type)."""
    by_arch, by_type = [], []
    archs = set(hf.get("architectures") or [])
    for path in sorted(specs_dir.glob("*.yaml")):
        matches = _matches(path)
        if archs & set(matches.get("architectures", [])):
            by_arch.append(path)
        if hf.get("model_type") in matches.get("model_type", []):
            by_type.append(path)
    found = by_arch or by_type
    if len(found) > 1:
        # variants of one family (T5's ReLU and gated-GELU specs): the one whose checks pass
        fitting = [p for p in found if _fits(p, hf)]
        found = fitting or found
    if not found:
        raise ConfigError(f"no spec in {specs_dir} recognises model_type={hf.get('model_type')!r}, "
                          f"architectures={sorted(archs)}")
    return found[0]


def _fits(path: Path, hf: dict) -> bool:
    try:
        resolve_config(load_spec(path), hf)
    except (ConfigError, SpecError):
        return False
    return True


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
                    strict: bool = True, head: str | None = None, init_new_head: bool = False) -> CompiledModel:
    """Read config.json, pick the spec that recognises it, compile it (cached) and load the weights
    (with `head`, or the head config.json's architectures names; see `load`)."""
    from compiler.pipeline import compile_spec
    folder = resolve_checkpoint(name_or_path)
    hf = read_config_json(folder)
    spec_path = Path(spec) if spec else find_spec(hf)
    artifact = compile_spec(spec_path).directory
    return load(artifact, folder, dtype=dtype, device=device, strict=strict, head=head, init_new_head=init_new_head)


def init_random(artifact: str | Path, hf: dict, dtype=None, seed: int = 0, device="cpu") -> CompiledModel:
    """A model with random weights (torch's default init) for a config.json-style dict: the way to
    make a test or demo checkpoint without any reference library."""
    manifest, spec, module = open_artifact(artifact)
    config = resolve_config(spec, hf, source="the given config")
    torch_dtype = _dtype(dtype, hf)
    torch.manual_seed(seed)
    net = module.MODEL(module.Config(**config)).to(device=device, dtype=torch_dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    model = CompiledModel(net, config, spec, manifest, torch_dtype, device, {"initialised": "random"})
    model.generation_config = GenerationConfig.from_model_config(hf, source="the given config")
    return model
