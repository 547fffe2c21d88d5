"""What to quantize and how: `Scheme` (a stored format), `QuantConfig` and its Transformers-style
`quantization_config` dict. Pure Python (no torch): the compiler's quantize pass reads it too.

    QuantConfig.parse("int8")                  # per output channel, symmetric
    QuantConfig.parse("int4")                  # groups of 32, symmetric (the q4_0 layout of values)
    QuantConfig.parse("w8a8"), ("w4a8")        # the same weights; activations quantized to int8 on the fly
    QuantConfig.parse({"bits": 4, "group_size": 128, "sym": False, "modules_to_not_convert": ["layers.0.*"]})

The dict form is what `to_dict()` writes (and a saved quantized checkpoint carries):
    {"quant_method": "graphspec", "bits": 4, "group_size": 32, "sym": true,
     "quantize_embedding": false, "modules_to_not_convert": ["lm_head", "router"]}
`modules_to_not_convert` holds fnmatch patterns of module paths (`layers.*.attn.qkv_proj`,
`layers.0.*`) or a role: `lm_head` names the model's output embedding (a linear whose outputs are
the rows of the token embedding, tied or not) whatever its path, `router` a mixture of experts'
router (a linear with one output per expert). Left out, it is `["lm_head", "router"]`: Transformers'
quantizers keep the output embedding in float, and ggml's quantizer and AWQ/GPTQ keep the router (a few
thousand weights whose error flips which experts run); `[]` quantizes both, the LM head in the
scheme's bits or in `lm_head_bits` (8 for a 4-bit model: ggml's q4_0 files keep their output
matrix at 6 bits, and the LM head's error is what the logits show first). A grouped linear's
experts (`experts`) are quantized like linears.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

INT4_GROUPS = (32, 64, 128)
QUANT_METHOD = "graphspec"
KEYS = ("quant_method", "bits", "group_size", "sym", "act_bits", "lm_head_bits", "quantize_embedding",
        "modules_to_not_convert")
# Activations quantized on the fly are cut into blocks of this many columns, one scale each (q8_0's)
ACT_BLOCK = 32
# What a quantizable param is to the network (the compiler's quantize pass decides it from op capabilities)
ROLES = ("linear", "lm_head", "router", "experts", "embedding")
LINEAR_ROLES = ("linear", "lm_head", "router")       # the roles stored as one linear's [out, in] weight
DEFAULT_SKIP = ("lm_head", "router")


@dataclass(frozen=True)
class Scheme:
    """One weight-only quantization format (runtime/quant/schemes.py): `int8` (per output channel,
    symmetric) or `int4` (group-wise, symmetric or with a zero point)."""

    kind: str                   # "int8" | "int4"
    group: int | None = None    # int4: columns per group
    symmetric: bool = True
    # 8: each activation row is quantized to int8 in blocks of ACT_BLOCK columns before the product
    # (schemes.quantize_activations), as ggml computes its q8_0 / q4_0 products: integer dot
    # products, a little less accurate. None: weight-only, activations stay float.
    act_bits: int | None = None

    def __post_init__(self):
        if self.act_bits not in (None, 8) or isinstance(self.act_bits, bool):
            raise ValueError(f"act_bits must be 8 or null (activations left in float), got {self.act_bits!r}")
        if self.kind == "int8":
            if self.group is not None or not self.symmetric:
                raise ValueError("int8 is per output channel and symmetric: it takes no group_size or zero point "
                                 f"(got group_size={self.group}, symmetric={self.symmetric})")
        elif self.kind == "int4":
            if self.group not in INT4_GROUPS:
                raise ValueError(f"int4 group_size must be one of {INT4_GROUPS}, got {self.group!r}")
        else:
            raise ValueError(f"quantization must be 'int8' or 'int4', got {self.kind!r}")

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4

    @property
    def name(self) -> str:
        act = "-a8" if self.act_bits else ""
        if self.kind == "int8":
            return "int8" + act
        return f"int4-g{self.group}-{'sym' if self.symmetric else 'asym'}{act}"

    def check_shape(self, shape: tuple[int, ...], what: str, pattern: str | None = None) -> None:
        """A weight this scheme can hold: 2-D, and for int4 K a multiple of the group. `pattern`: the
        modules_to_not_convert entry that would leave this weight in float, for the message."""
        if len(shape) != 2:
            raise ValueError(f"{what}: a quantized weight must be 2-D [out, in], got shape {list(shape)}")
        skip = f'modules_to_not_convert: ["{pattern}"]' if pattern else "modules_to_not_convert"
        if self.kind == "int4" and shape[1] % self.group:
            fits = [g for g in INT4_GROUPS if shape[1] % g == 0]
            fix = (f"choose a group size that divides it ({', '.join(map(str, fits))})" if fits else
                   f"no int4 group size ({', '.join(map(str, INT4_GROUPS))}) does: quantize to 8 bits")
            raise ValueError(f"{what}: {shape[1]} input features are not a multiple of the int4 group size "
                             f"{self.group}; {fix}, or leave it in float ({skip})")
        if self.act_bits and shape[1] % ACT_BLOCK:
            raise ValueError(f"{what}: {shape[1]} input features are not a multiple of {ACT_BLOCK}, the block its "
                             f"int8 activations are quantized in; leave it in float ({skip}) "
                             f"or quantize weights only (act_bits null)")

    def packed_shapes(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, torch dtype name) of each stored tensor for an [n, k] weight."""
        if self.kind == "int8":
            return {"qweight": ((n, k), "int8"), "scales": ((n,), "float32")}
        out = {"qweight": ((n, k // 2), "uint8"), "scales": ((n, k // self.group), "float16")}
        if not self.symmetric:
            out["zeros"] = ((n, k // self.group), "uint8")
        return out


SHORTHANDS = {"int8": Scheme("int8"), "int4": Scheme("int4", 32, True),
              "w8a8": Scheme("int8", act_bits=8), "w4a8": Scheme("int4", 32, True, act_bits=8)}


@dataclass(frozen=True)
class QuantConfig:
    scheme: Scheme
    embedding: bool = False               # the input embedding: a lookup, so memory rather than speed
    skip: tuple[str, ...] = field(default=DEFAULT_SKIP)   # module path patterns or roles left in float
    head_bits: int | None = None          # the LM head's bits when it is quantized (None: the scheme's)

    def scheme_for(self, role: str) -> Scheme:
        """The format params of `role` are stored in: the scheme's, or the LM head's own bits (int8 per
        channel; int4 in the scheme's groups, or 32), its activations as the scheme's."""
        if role != "lm_head" or self.head_bits in (None, self.scheme.bits):
            return self.scheme
        if self.head_bits == 8:
            return Scheme("int8", act_bits=self.scheme.act_bits)
        return Scheme("int4", self.scheme.group or 32, self.scheme.symmetric, self.scheme.act_bits)

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
        to_dict = getattr(value, "to_dict", None)     # a Transformers quantization config object
        if callable(to_dict) and isinstance(to_dict(), dict):
            return cls.from_dict(to_dict(), f"quantization_config ({type(value).__name__})")
        raise TypeError(f"quantization must be 'int8', 'int4', a dict or a QuantConfig, got {type(value).__name__}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "quantization_config") -> "QuantConfig":
        foreign = _foreign(data)
        if foreign:
            raise ValueError(f"{where}: {foreign}")
        unknown = [k for k in data if k not in KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})")
        bits = data.get("bits")
        if bits not in (8, 4) or isinstance(bits, bool):
            raise ValueError(f"{where}: 'bits' must be 8 or 4, got {bits!r}")
        group = data.get("group_size", None if bits == 8 else 32)
        sym = _bool(data, "sym", True, where)
        act = data.get("act_bits")
        if act not in (None, 8) or isinstance(act, bool):
            raise ValueError(f"{where}: 'act_bits' must be 8 or null (activations left in float), got {act!r}")
        if bits == 8:
            if group not in (None, -1):
                raise ValueError(f"{where}: 'group_size' must be null for 8 bits (one scale per output channel), "
                                 f"got {group!r}")
            if not sym:
                raise ValueError(f"{where}: 8 bits is symmetric only ('sym': true)")
            scheme = Scheme("int8", act_bits=act)
        else:
            if group not in INT4_GROUPS or isinstance(group, bool):
                raise ValueError(f"{where}: 'group_size' must be one of {INT4_GROUPS} for 4 bits, got {group!r}")
            scheme = Scheme("int4", group, sym, act)
        head = data.get("lm_head_bits")
        if head not in (None, 8, 4) or isinstance(head, bool):
            raise ValueError(f"{where}: 'lm_head_bits' must be 8, 4 or null (the scheme's bits), got {head!r}")
        skip = data.get("modules_to_not_convert")
        skip = DEFAULT_SKIP if skip is None else skip
        if not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) for s in skip):
            raise ValueError(f"{where}: 'modules_to_not_convert' must be a list of module path patterns, got {skip!r}")
        return cls(scheme, _bool(data, "quantize_embedding", False, where), tuple(skip),
                   None if head == scheme.bits else head)

    def to_dict(self) -> dict:
        out = {"quant_method": QUANT_METHOD, "bits": self.scheme.bits, "group_size": self.scheme.group,
               "sym": self.scheme.symmetric, "quantize_embedding": self.embedding,
               "modules_to_not_convert": list(self.skip)}
        if self.scheme.act_bits:
            out["act_bits"] = self.scheme.act_bits
        if self.head_bits:
            out["lm_head_bits"] = self.head_bits
        return out

    def admits(self, role: str) -> bool:
        """Whether params of this role are quantized at all (embeddings only on request)."""
        return role != "embedding" or self.embedding

    def skipped(self, path: str, role: str) -> bool:
        """A module left in float: its path matches a pattern, or its role is named."""
        return any(role == p or fnmatch.fnmatchcase(path, p) for p in self.skip)


def _foreign(data: dict) -> str | None:
    """What to say to a quantization_config written for another library's quantizer, or None."""
    method = data.get("quant_method", QUANT_METHOD)
    if data.get("load_in_8bit") or data.get("load_in_4bit") or method == "bitsandbytes":
        bits = 4 if data.get("load_in_4bit") or data.get("_load_in_4bit") else 8
        near = ("{'bits': 4, 'group_size': 64} (int4 in blocks of 64, the block bitsandbytes uses, with 16 "
                "evenly spaced levels where nf4 spaces them as a normal distribution's quantiles)" if bits == 4 else
                "'int8' (one scale per output channel; bitsandbytes' LLM.int8 also keeps outlier input "
                "features in fp16)")
        return (f"a bitsandbytes config ({bits}-bit) asks for that library's formats, which graphspec does not "
                f"run; its nearest format here is quantization={near}")
    if method != QUANT_METHOD:
        return (f"quant_method {method!r} is another library's format, which graphspec does not read or produce; "
                f"graphspec quantizes float checkpoints itself (round to nearest): pass 'int8', 'int4' or a dict "
                f"of {', '.join(k for k in KEYS if k != 'quant_method')}")
    return None


def _bool(data: dict, key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value
