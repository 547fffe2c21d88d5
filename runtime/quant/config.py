"""What to quantize and how: `QuantConfig`, and its Transformers-style `quantization_config` dict.

    QuantConfig.parse("int8")                  # per output channel, symmetric
    QuantConfig.parse("int4")                  # groups of 32, symmetric (the q4_0 layout of values)
    QuantConfig.parse({"bits": 4, "group_size": 128, "sym": False, "modules_to_not_convert": ["layers.0.*"]})

The dict form is what `to_dict()` writes (and a saved quantized checkpoint carries):
    {"quant_method": "graphspec", "bits": 4, "group_size": 32, "sym": true,
     "quantize_lm_head": true, "quantize_embedding": false, "modules_to_not_convert": []}
`modules_to_not_convert` holds module paths of the network (fnmatch patterns, `layers.*.attn.qkv_proj`).
The LM head is the linear shaped like the largest embedding table (the output embedding, tied or not).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.quant.schemes import INT4_GROUPS, Scheme

QUANT_METHOD = "graphspec"
SHORTHANDS = {"int8": Scheme("int8"), "int4": Scheme("int4", 32, True)}
KEYS = ("quant_method", "bits", "group_size", "sym", "quantize_lm_head", "quantize_embedding",
        "modules_to_not_convert")


@dataclass(frozen=True)
class QuantConfig:
    scheme: Scheme
    lm_head: bool = True                  # the output embedding: ~a fifth of a small model's weight bytes
    embedding: bool = False               # the input embedding: a lookup, so memory rather than speed
    skip: tuple[str, ...] = field(default=())   # module path patterns left in float

    @classmethod
    def parse(cls, value) -> "QuantConfig":
        """A QuantConfig from itself, a shorthand ("int8", "int4") or a quantization_config dict."""
        if isinstance(value, QuantConfig):
            return value
        if isinstance(value, str):
            if value not in SHORTHANDS:
                raise ValueError(f"quantization: unknown scheme {value!r}; use one of {', '.join(SHORTHANDS)} "
                                 "or a quantization_config dict")
            return cls(SHORTHANDS[value])
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise TypeError(f"quantization must be 'int8', 'int4', a dict or a QuantConfig, got {type(value).__name__}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "quantization_config") -> "QuantConfig":
        unknown = [k for k in data if k not in KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})")
        method = data.get("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"{where}: quant_method {method!r} is not {QUANT_METHOD!r}; graphspec reads only its "
                             "own weight-only formats")
        bits = data.get("bits")
        if bits not in (8, 4) or isinstance(bits, bool):
            raise ValueError(f"{where}: 'bits' must be 8 or 4, got {bits!r}")
        group = data.get("group_size", None if bits == 8 else 32)
        sym = _bool(data, "sym", True, where)
        if bits == 8:
            if group not in (None, -1):
                raise ValueError(f"{where}: 'group_size' must be null for 8 bits (one scale per output channel), "
                                 f"got {group!r}")
            if not sym:
                raise ValueError(f"{where}: 8 bits is symmetric only ('sym': true)")
            scheme = Scheme("int8")
        else:
            if group not in INT4_GROUPS or isinstance(group, bool):
                raise ValueError(f"{where}: 'group_size' must be one of {INT4_GROUPS} for 4 bits, got {group!r}")
            scheme = Scheme("int4", group, sym)
        skip = data.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise ValueError(f"{where}: 'modules_to_not_convert' must be a list of module path patterns, got {skip!r}")
        return cls(scheme, _bool(data, "quantize_lm_head", True, where), _bool(data, "quantize_embedding", False, where),
                   tuple(skip))

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, "bits": self.scheme.bits, "group_size": self.scheme.group,
                "sym": self.scheme.symmetric, "quantize_lm_head": self.lm_head,
                "quantize_embedding": self.embedding, "modules_to_not_convert": list(self.skip)}


def _bool(data: dict, key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value
