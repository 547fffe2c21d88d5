"""`from_pretrained`: a checkpoint folder (or hub id) alone -> a model. It picks the spec that recognises
config.json among the shipped ones and compiles it (cached), so unlike `runtime.load` it imports the
compiler, inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path

from runtime.config import read_config_json, resolve_config
from runtime.errors import CheckpointError, ConfigError

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
                    strict: bool = True, head: str | None = None, init_new_head: bool = False,
                    tp_plan: str | None = None, quantization=None):
    """Read config.json, pick the spec that recognises it, compile it (cached) and load the weights
    (with `head`, or the head config.json's architectures names; see `runtime.load`). tp_plan="auto"
    compiles the spec with its tensor-parallel plan for the process group's ranks (under torchrun)
    and loads this rank's share (runtime/parallel).

    quantization: "int8", "int4", a quantization_config dict or a runtime.quant.QuantConfig: the spec
    is compiled with its quantize pass and the marked linears are quantized as they load (the LM
    head stays in float unless `modules_to_not_convert` leaves "lm_head" out; runtime/quant/config.py).
    A folder written by runtime.quant.save_quantized (config.json's quantization_config) loads its
    stored quantized tensors as they are, without quantizing again."""
    from compiler.pipeline import compile_spec
    from runtime.loader import load
    from runtime.quant.config import QUANT_METHOD, QuantConfig
    folder = resolve_checkpoint(name_or_path)
    hf = read_config_json(folder)
    spec_path = Path(spec) if spec else find_spec(hf)
    options = {}
    saved = hf.get("quantization_config")
    if isinstance(saved, dict) and saved.get("quant_method") == QUANT_METHOD:
        stored = QuantConfig.from_dict(saved, f"{folder / 'config.json'}: quantization_config")
        if quantization is not None and QuantConfig.parse(quantization) != stored:
            raise ValueError(f"{folder}: the checkpoint is already quantized ({stored.to_dict()}); "
                             f"quantization={quantization!r} asks for another format")
        from runtime.quant.io import load_quantized
        return load_quantized(folder, compile_spec(spec_path, options={"quant": stored.to_dict()}).directory,
                              device=device)
    if quantization is not None:
        options["quant"] = QuantConfig.parse(quantization).to_dict()
    if tp_plan is not None:
        from runtime.parallel import process_group
        options["tp"] = process_group(device)[2]
    artifact = compile_spec(spec_path, options=options).directory
    return load(artifact, folder, dtype=dtype, device=device, strict=strict, head=head, init_new_head=init_new_head,
                tp_plan=tp_plan)
