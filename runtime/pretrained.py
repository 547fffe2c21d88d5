"""`from_pretrained`: a checkpoint folder (or hub id) alone -> a model. It picks the spec that recognises
config.json among the shipped ones and compiles it (cached), so unlike `runtime.load` it imports the
compiler, inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path

from runtime.config import read_config_json, resolve_config
from runtime.errors import CheckpointError, ConfigError
from runtime.hf_config import apply_labels

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

_MATCHES: dict[tuple, dict] = {}


def _matches(path: Path) -> dict:
    """A spec's `matches` (with its heads' architectures), parsed once per file version; a broken
    spec matches nothing."""
    from compiler.errors import SpecError
    from compiler.spec import load_spec
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
        # variants of one family (specs matching the same architectures): the one whose checks pass
        fitting = [p for p in found if _fits(p, hf)]
        found = fitting or found
    if not found:
        raise ConfigError(f"no spec in {specs_dir} recognises model_type={hf.get('model_type')!r}, "
                          f"architectures={sorted(archs)}")
    return found[0]


def _fits(path: Path, hf: dict) -> bool:
    from compiler.errors import SpecError
    from compiler.pipeline import compile_spec
    from runtime.interface import read_interface
    try:
        resolve_config(read_interface(compile_spec(path).directory), hf)
    except (ConfigError, SpecError):
        return False
    return True


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                       token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """A local folder as is; an `org/name` hub id through huggingface_hub (its cache first, then the
    hub unless local_files_only), at `revision` (a branch, tag or commit)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path).count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                          local_files_only=local_files_only, allow_patterns=FETCHED))
        except Exception as err:  # network or cache miss: say which
            where = "its cache" if local_files_only else "the Hugging Face hub or its cache"
            raise CheckpointError(f"'{name_or_path}'{f' at revision {revision!r}' if revision else ''} is not a "
                                  f"local folder and could not be fetched from {where}: {err}") from None
    raise CheckpointError(f"{path}: no such checkpoint folder")


# what a hub checkpoint needs: configs, safetensors weights, tokenizer and processor files (never pickles)
FETCHED = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def _config_dict(config) -> dict:
    """A config given to from_pretrained / from_config: a dict like config.json, our model.config, or
    an object with to_dict() (Transformers' PretrainedConfig)."""
    if hasattr(config, "to_dict"):
        data = config.to_dict()
        if getattr(config, "architectures", None) and "architectures" not in data:
            data["architectures"] = list(config.architectures)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError(f"config must be a dict or have to_dict() (a Transformers config), got {type(config).__name__}")
    if "auto_map" in data:
        raise ConfigError("the given config asks for remote code (auto_map); graphspec never runs code from a "
                          "checkpoint. Write a spec for this architecture instead.")
    return data


def _resolve_dtype(dtype, torch_dtype):
    if torch_dtype is not None:
        if dtype not in ("auto", None) and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; torch_dtype is an alias, give one")
        return torch_dtype
    return dtype


def from_pretrained(name_or_path: str | Path, *, config=None, revision: str | None = None,
                    cache_dir: str | Path | None = None, token: str | bool | None = None,
                    local_files_only: bool = False, dtype="auto", torch_dtype=None, device=None, device_map=None,
                    spec: str | Path | None = None, strict: bool = True, head: str | None = None,
                    init_new_head: bool = False, num_labels: int | None = None, id2label: dict | None = None,
                    label2id: dict | None = None, triton: bool | None = None, tp_plan: str | None = None,
                    quantization=None, quantization_config=None, **config_overrides):
    """Read config.json, pick the spec that recognises it, compile it (cached) and load the weights
    (with `head`, or the head config.json's architectures names; see `runtime.load`).

    Transformers' arguments: revision, cache_dir, token and local_files_only for hub ids; `config`
    (a dict or Transformers config object) instead of the checkpoint's config.json; config overrides
    as keyword arguments under Transformers' key names (or the spec's; an unknown one is an error);
    num_labels / id2label / label2id; dtype (default "auto": the checkpoint's dtype) or its alias
    torch_dtype; device, or device_map ("cpu", "cuda", "auto", or {module path: device}).

    tp_plan="auto" compiles the spec with its tensor-parallel plan for the process group's ranks
    (under torchrun) and loads this rank's share (runtime/parallel).

    quantization: "int8", "int4", a quantization_config dict or a runtime.quant.QuantConfig: the spec
    is compiled with its quantize pass and the marked linears are quantized as they load (the LM
    head stays in float unless `modules_to_not_convert` leaves "lm_head" out; runtime/quant/config.py).
    `quantization_config` is the same argument under Transformers' name (a dict, or a config object
    with `to_dict()`). A folder written by runtime.quant.save_quantized (config.json's
    quantization_config) loads its stored quantized tensors as they are, without quantizing again.
    """
    from compiler.pipeline import compile_spec
    from runtime.loader import load
    from runtime.placement import place, single_device
    from runtime.quant.config import QUANT_METHOD, QuantConfig
    if quantization_config is not None:
        if quantization is not None and QuantConfig.parse(quantization) != QuantConfig.parse(quantization_config):
            raise ValueError("from_pretrained: quantization and quantization_config (its Transformers name) "
                             "disagree; pass one of them")
        quantization = quantization_config
    folder = resolve_checkpoint(name_or_path, revision, cache_dir, token, local_files_only)
    hf = _config_dict(config) if config is not None else read_config_json(folder)
    apply_labels(hf, num_labels, id2label, label2id)
    spec_path = Path(spec) if spec else find_spec(hf)
    target = single_device(device, device_map)
    options = {}
    saved = hf.get("quantization_config")
    if isinstance(saved, dict) and saved.get("quant_method", QUANT_METHOD) != QUANT_METHOD:
        # weights packed by another library (GPTQ, AWQ, bitsandbytes, fp8 ...): their tensors are not the
        # float weights a spec's rules map, and the load would only list them as unexpected
        raise CheckpointError(f"{folder / 'config.json' if config is None else 'config'}: quantization_config.quant_method "
                              f"{saved.get('quant_method')!r}: its weights are stored in another library's quantized "
                              f"format, which graphspec does not read; load the float checkpoint it was made from, "
                              f"with quantization='int8' or 'int4' to quantize it here")
    if isinstance(saved, dict) and saved.get("quant_method") == QUANT_METHOD:
        stored = QuantConfig.from_dict(saved, f"{folder / 'config.json'}: quantization_config")
        if quantization is not None and QuantConfig.parse(quantization) != stored:
            raise ValueError(f"{folder}: the checkpoint is already quantized ({stored.to_dict()}); "
                             f"quantization={quantization!r} asks for another format")
        from runtime.quant.io import load_quantized
        return load_quantized(folder, compile_spec(spec_path, options={"quant": stored.to_dict()}).directory,
                              device=target or "cpu")
    if quantization is not None:
        options["quant"] = QuantConfig.parse(quantization).to_dict()
    if tp_plan is not None:
        from runtime.parallel import process_group
        options["tp"] = process_group(target or "cpu")[2]
    artifact = compile_spec(spec_path, options=options).directory
    model = load(artifact, folder, dtype=_resolve_dtype(dtype, torch_dtype), device=target or "cpu", strict=strict,
                 head=head, init_new_head=init_new_head, triton=triton, hf=hf, config_overrides=config_overrides,
                 tp_plan=tp_plan)
    if isinstance(device_map, dict):
        place(model, device_map)
    return model


def from_config(config, *, head: str | None = None, dtype=None, torch_dtype=None, device="cpu",
                spec: str | Path | None = None, seed: int | None = None, **config_overrides):
    """A model with fresh weights for a config (a config.json dict or a Transformers config object),
    initialised as the spec's `init:` says (the architecture's reference initialiser). Any head of the
    spec (`head`, or the one the config's architectures names). dtype: default float32, like
    Transformers' from_config."""
    from compiler.pipeline import compile_spec
    from runtime.loader import apply_overrides, init_random
    from runtime.interface import read_interface
    hf = _config_dict(config)
    spec_path = Path(spec) if spec else find_spec(hf)
    artifact = compile_spec(spec_path).directory
    derived = apply_overrides(read_interface(artifact), hf, config_overrides, "the given config")
    return init_random(artifact, hf, dtype=_resolve_dtype(dtype, torch_dtype), seed=seed, device=device, head=head,
                       declared_init=True, overrides=derived)
