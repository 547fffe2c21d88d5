"""`GenerationConfig`: the generation settings of a checkpoint, overridable per call.

Read as Transformers reads them: generation_config.json when the folder has one, otherwise the
generation fields of config.json (top level first, then a nested decoder / generator / text_config).
A field left unset (None) falls back, per call, to the model's value and then to Transformers'
global default (`DEFAULTS`); a keyword argument of `generate` overrides both, None included
(`eos_token_id=None` means: no end token).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

from runtime.errors import ConfigError, GenerationError
from runtime.files import read_json_object

GENERATION_CONFIG = "generation_config.json"

# Transformers' global defaults, applied to fields neither the call nor the checkpoint set.
DEFAULTS = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None,
    "early_stopping": False, "stop_strings": None,
    "do_sample": False, "num_beams": 1, "num_return_sequences": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None, "typical_p": 1.0,
    "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "bad_words_ids": None, "sequence_bias": None, "renormalize_logits": False, "remove_invalid_values": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None,
    "suppress_tokens": None, "begin_suppress_tokens": None,
    "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
    "pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "decoder_start_token_id": None,
}
# A None here after the call's keyword arguments means the default, never "nothing": these steer
# the loop itself and have no "off" value.
NEVER_NONE = ("max_length", "min_length", "early_stopping", "do_sample", "num_beams", "num_return_sequences",
              "length_penalty", "output_scores", "output_logits", "return_dict_in_generate", "renormalize_logits",
              "remove_invalid_values")

# Transformers' fields this runtime has no use for: caching and compilation are its own business.
IGNORED = ("use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
           "disable_compile", "prefill_chunk_size", "transformers_version", "_from_model_config",
           "_commit_hash", "continuous_batching_config")
# Transformers' fields this runtime does not implement, with the values that leave them inert
# (a checkpoint may carry them so; anything else is refused when generating).
INERT = {
    "max_time": (None,), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "top_h": (None,),
    "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "token_healing": (None, False), "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0),
    "penalty_alpha": (None,), "dola_layers": (None,), "constraints": (None,), "force_words_ids": (None,),
    "low_memory": (None, False), "use_mtp": (None, False), "output_attentions": (None, False),
    "output_hidden_states": (None, False), "is_assistant": (None, False), "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,), "max_matching_ngram_size": (None,), "num_assistant_tokens": None,
    "num_assistant_tokens_schedule": None, "assistant_confidence_threshold": None, "assistant_lookbehind": None,
    "target_lookbehind": None, "assistant_ensemble_weight": (None,), "speculation_type": (None,),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_list(v) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_int(t) and t >= 0 for t in v)


def _token_or_tokens(v) -> bool:
    return (_is_int(v) and v >= 0) or (_int_list(v) and len(v) > 0)


def _bias_table(v) -> bool:
    if isinstance(v, dict):
        return len(v) > 0 and all(isinstance(k, tuple) and len(k) > 0 and _int_list(k)
                                  and (_is_number(b) or b == -math.inf) for k, b in v.items())
    return isinstance(v, list) and len(v) > 0 and all(
        isinstance(e, (list, tuple)) and len(e) == 2 and _int_list(e[0]) and len(e[0]) > 0
        and (_is_number(e[1]) or e[1] == -math.inf) for e in v)


# name -> (test, what the value must be)
CHECKS = {
    "max_length": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "max_new_tokens": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "min_length": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "min_new_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "early_stopping": (lambda v: v is True or v is False or v == "never", 'True, False or "never"'),
    "stop_strings": (lambda v: (isinstance(v, str) and v != "") or (
        isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) and s != "" for s in v)),
        "a non-empty string or a list of them"),
    "do_sample": (lambda v: isinstance(v, bool), "True or False"),
    "num_beams": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "num_return_sequences": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: _is_number(v) and v > 0, "a number > 0 (for greedy decoding use do_sample=False)"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 turns it off)"),
    "top_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "typical_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "length_penalty": (_is_number, "a number"),
    "no_repeat_ngram_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "bad_words_ids": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(
        _int_list(w) and len(w) > 0 for w in v), "a non-empty list of non-empty lists of token ids"),
    "sequence_bias": (_bias_table, "a dict {tuple of token ids: bias} or a list of [token ids, bias]"),
    "renormalize_logits": (lambda v: isinstance(v, bool), "True or False"),
    "remove_invalid_values": (lambda v: isinstance(v, bool), "True or False"),
    "forced_bos_token_id": (lambda v: _is_int(v) and v >= 0, "a token id"),
    "forced_eos_token_id": (_token_or_tokens, "a token id or a non-empty list of them"),
    "suppress_tokens": (_int_list, "a list of token ids"),
    "begin_suppress_tokens": (_int_list, "a list of token ids"),
    "output_scores": (lambda v: isinstance(v, bool), "True or False"),
    "output_logits": (lambda v: isinstance(v, bool), "True or False"),
    "return_dict_in_generate": (lambda v: isinstance(v, bool), "True or False"),
    "pad_token_id": (_is_int, "a token id"),
    "bos_token_id": (lambda v: _is_int(v) and v >= 0, "a token id"),
    "eos_token_id": (_token_or_tokens, "a token id or a non-empty list of them"),
    "decoder_start_token_id": (lambda v: (_is_int(v) and v >= 0) or (_int_list(v) and len(v) > 0),
                               "a token id (or one per batch row)"),
}
assert CHECKS.keys() == DEFAULTS.keys()
FLOATS = ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "length_penalty")


def _fix(name: str, value):
    """The value as the loops use it: numbers as floats, id lists as lists."""
    if value is None:
        return None
    if name in FLOATS:
        return float(value)
    if isinstance(value, tuple) and name != "sequence_bias":
        return list(value)
    return value


class GenerationConfig:
    """Generation settings with Transformers' names; every field None (unset) until given.

    `GenerationConfig(do_sample=True, top_p=0.9)`, `GenerationConfig.from_checkpoint(folder)`;
    `update(**kwargs)` changes fields in place. An unknown name is a GenerationError naming it.
    """

    def __init__(self, **kwargs):
        for name in DEFAULTS:
            setattr(self, name, None)
        self.inert: dict = {}     # Transformers-only fields as given (refused when generating unless inert)
        self.extra: dict = {}     # unknown keys of a checkpoint file, kept but unused (Transformers keeps them too)
        # not a generation field: the model's position limit (config.json), which caps the default max_length
        self.max_position_embeddings: int | None = None
        self.update(**kwargs)

    def update(self, _source: str = "GenerationConfig", **kwargs) -> "GenerationConfig":
        for name, value in kwargs.items():
            self._set(name, value, _source, unknown="error")
        return self

    def _set(self, name: str, value, source: str, unknown: str) -> None:
        if name in DEFAULTS:
            test, want = CHECKS[name]
            if value is not None and not test(value):
                raise (ConfigError if unknown == "keep" else GenerationError)(
                    f"{source}: {name} must be {want}, got {value!r}")
            setattr(self, name, _fix(name, value))
        elif name in INERT:
            self.inert[name] = value
        elif name in IGNORED:
            pass
        elif unknown == "keep":
            self.extra[name] = value
        else:
            raise GenerationError(f"{source}: unknown generation argument '{name}' (the generation options are "
                                  f"{', '.join(DEFAULTS)}; see GenerationConfig)")

    @classmethod
    def from_dict(cls, data: dict, source: str = "the given dict") -> "GenerationConfig":
        """The fields of a generation_config.json-style dict; unknown keys are kept in `extra`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        config = cls()
        for name, value in data.items():
            config._set(name, value, source, unknown="keep")
        return config

    @classmethod
    def from_model_config(cls, hf: dict, source: str = "config.json") -> "GenerationConfig":
        """The generation fields of a config.json dict (non-null ones), then those of its decoder part
        for fields still unset, as Transformers derives a generation config from a model config."""
        config = cls()
        for name, value in hf.items():
            if value is not None and (name in DEFAULTS or name in INERT):
                config._set(name, value, source, unknown="keep")
        for part in ("decoder", "generator", "text_config"):
            sub = hf.get(part)
            if isinstance(sub, dict) and sub:
                for name, value in sub.items():
                    if name in DEFAULTS and getattr(config, name) is None and value is not None:
                        config._set(name, value, f"{source} ({part})", unknown="keep")
                break
        config.max_position_embeddings = max_positions(hf)
        return config

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> "GenerationConfig":
        """generation_config.json of the folder, or config.json's generation fields when it has none."""
        folder = Path(folder)
        path = folder / "config.json"
        hf = read_json(path) if path.is_file() else {}
        if not (folder / GENERATION_CONFIG).is_file():
            return cls.from_model_config(hf, str(path))
        config = cls.from_dict(read_json(folder / GENERATION_CONFIG), str(folder / GENERATION_CONFIG))
        config.max_position_embeddings = max_positions(hf)
        return config

    def to_dict(self) -> dict:
        """The fields that are set."""
        return {name: getattr(self, name) for name in DEFAULTS if getattr(self, name) is not None}

    def to_json(self) -> dict:
        """generation_config.json's content: the fields that are set, and the keys read from a file that
        graphspec keeps without using (Transformers-only fields, unknown keys), so a save loses none."""
        return {**self.extra, **self.inert, **self.to_dict()}

    def copy(self) -> "GenerationConfig":
        return copy.deepcopy(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict() and self.inert == other.inert

    def __repr__(self) -> str:
        return f"GenerationConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


def max_positions(hf: dict) -> int | None:
    """config.json's position limit, under Transformers' name or the alias some configs use (a config
    class's attribute map resolves it in Transformers)."""
    for key in ("max_position_embeddings", "n_positions"):
        if _is_int(hf.get(key)):
            return hf[key]
    return None


def read_json(path: Path) -> dict:
    """A JSON object file (a config file of the checkpoint), read bounded; anything else is a
    ConfigError naming it."""
    try:
        return read_json_object(path, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None


def resolve(model_config: GenerationConfig | None, call_config: GenerationConfig | None,
            kwargs: dict) -> tuple[GenerationConfig, bool]:
    """The settings of one generate call: the call's config, its unset fields from the model's, then
    Transformers' defaults, then the keyword arguments. Also whether max_length is Transformers'
    default rather than set by anyone: the default counts new tokens, a set value the whole length."""
    if call_config is not None and not isinstance(call_config, GenerationConfig):
        raise GenerationError(f"generate(): generation_config must be a GenerationConfig, got "
                              f"{type(call_config).__name__}")
    settings = call_config.copy() if call_config is not None else GenerationConfig()
    model_config = model_config or GenerationConfig()
    default_max_length = (kwargs.get("max_length") is None and settings.max_length is None
                          and model_config.max_length is None)
    for name in DEFAULTS:
        if getattr(settings, name) is None:
            setattr(settings, name, copy.deepcopy(getattr(model_config, name)))
    for name, value in model_config.inert.items():
        settings.inert.setdefault(name, value)
    for name, value in DEFAULTS.items():
        if getattr(settings, name) is None:
            setattr(settings, name, copy.deepcopy(value))
    settings.update(_source="generate()", **kwargs)
    for name in NEVER_NONE:
        if getattr(settings, name) is None:
            setattr(settings, name, DEFAULTS[name])
    for name, value in settings.inert.items():
        allowed = INERT[name]
        if allowed is not None and not any(value is None if a is None else value == a for a in allowed):
            raise GenerationError(f"generation option {name}={value!r} is a Transformers feature graphspec does "
                                  f"not implement (set it to {allowed[-1]!r} or leave it out)")
    return settings, default_max_length
