"""The tokenizer of a checkpoint folder, as Transformers loads a fast tokenizer from it.

tokenizer.json (through the `tokenizers` package) does the encoding and decoding; tokenizer_config.json
names the special tokens (bos_token, eos_token, ...; special_tokens_map.json for older folders) and
carries the chat template, unless chat_template.jinja (and additional_chat_templates/*.jinja) does.
"""
from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import CheckpointError, GenerationError
from runtime.generation.chat_template import render as render_chat
from runtime.generation.config import read_json

NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# What a tokenizer returns when no model says otherwise: Transformers' tokenizer keys. A tokenizer
# attached to a model (`model.tokenizer`) names them after the model's contract instead (its token
# input and that sequence's mask), so `model.generate(**model.tokenizer(text))` fits any spec.
DEFAULT_KEYS = ("input_ids", "attention_mask")


def _token_text(value, path: Path, key: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise CheckpointError(f"{path}: {key} must be a string or an object with 'content', got {value!r}")


def _special_tokens(folder: Path, config: dict) -> dict[str, str]:
    """Named special tokens: the standard seven and any other `*_token` entry (Transformers 5 keeps
    model-specific ones such as image_token beside them)."""
    values = dict(config)
    legacy = folder / "special_tokens_map.json"
    if "added_tokens_decoder" not in config and legacy.is_file():
        values.update(read_json(legacy))
    source = folder / "tokenizer_config.json"
    out = {}
    for key, value in values.items():
        if key in NAMED or (key.endswith("_token") and isinstance(value, (str, dict))):
            text = _token_text(value, source, key)
            if text is not None:
                out[key] = text
    return out


def _chat_templates(folder: Path, config: dict):
    """A template string, a dict of named templates, or None; the .jinja files win over the config."""
    found = {}
    main = folder / "chat_template.jinja"
    if main.is_file():
        found["default"] = main.read_text(encoding="utf-8")
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            found[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if found:
        return found["default"] if list(found) == ["default"] else found
    template = config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template if isinstance(t, dict) and "name" in t}
    return template if isinstance(template, (str, dict)) else None


def _backend_from(path: Path):
    """tokenizer.json through the tokenizers package, read as a bounded regular file."""
    from tokenizers import Tokenizer as Backend

    from runtime.files import JSON_LIMIT, read_regular
    try:
        text = read_regular(path, JSON_LIMIT).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:       # a FIFO, a device, a directory, too large: refused before any read
        raise CheckpointError(f"{path}: {err.strerror or err}") from None
    try:
        return Backend.from_str(text)
    except BaseException as err:  # the tokenizers library raises its own types, and panics on some files
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a tokenizer the tokenizers library can load ({first})") from None


class Tokenizer:
    """Encode, decode and chat-format text for a checkpoint; `backend_tokenizer` is the `tokenizers`
    object. Decoding follows Transformers: `decode(ids, skip_special_tokens=False)`, with
    clean_up_tokenization_spaces from tokenizer_config.json (never for BPE models)."""

    def __init__(self, backend, config: dict | None = None, special_tokens: dict | None = None,
                 chat_template=None, name: str = "tokenizer", keys: tuple[str, str | None] = DEFAULT_KEYS):
        """`backend`: a tokenizers.Tokenizer, or the path of its tokenizer.json (read on first use).
        `keys`: the names of the ids and of the mask in what a call returns (None: no mask)."""
        self._backend = backend
        self.config = config or {}
        self.special_tokens_map = dict(special_tokens or {})
        self.chat_template = chat_template
        self.name = name
        self.keys = tuple(keys)

    @property
    def backend_tokenizer(self):
        if isinstance(self._backend, Path):
            self._backend = _backend_from(self._backend)
        return self._backend

    @classmethod
    def from_folder(cls, folder: str | Path, keys: tuple[str, str | None] = DEFAULT_KEYS) -> "Tokenizer":
        """The folder's tokenizer; tokenizer.json itself is parsed on first use."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not os.path.lexists(path):
            raise CheckpointError(f"{folder}: no tokenizer.json (graphspec reads fast tokenizers only)")
        config_path = folder / "tokenizer_config.json"
        config = read_json(config_path) if os.path.lexists(config_path) else {}
        # parsed now: a broken file is reported when the tokenizer is loaded, not at its first use
        return cls(_backend_from(path), config, _special_tokens(folder, config), _chat_templates(folder, config),
                   str(folder), keys)

    def __getattr__(self, name: str):
        # bos_token, eos_token_id, ... as Transformers' tokenizers expose them (None when absent)
        base = name.removesuffix("_id")
        if base in NAMED or base in self.__dict__.get("special_tokens_map", {}):
            text = self.special_tokens_map.get(base)
            return text if name == base or text is None else self.backend_tokenizer.token_to_id(text)
        raise AttributeError(name)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name}, vocab {len(self)}, special {self.special_tokens_map})"

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise GenerationError(f"{self.name}: can only encode a string, got {type(text).__name__}")
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, return_tensors: str | None = None):
        """{ids key: ids, mask key: mask} (self.keys); a list of texts is padded on the left (for
        generation) with the pad token (else the end token, else 0). return_tensors="pt" gives
        [rows, length] tensors."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t, add_special_tokens) for t in texts]
        longest = max(len(i) for i in ids)
        pad = next((v for v in (self.pad_token_id, self.eos_token_id) if v is not None), 0)
        masks = [[0] * (longest - len(i)) + [1] * len(i) for i in ids]
        ids = [[pad] * (longest - len(i)) + i for i in ids]
        if return_tensors is None:
            out = {self.keys[0]: ids[0] if isinstance(text, str) else ids,
                   self.keys[1]: masks[0] if isinstance(text, str) else masks}
        elif return_tensors == "pt":
            import torch
            out = {self.keys[0]: torch.tensor(ids), self.keys[1]: torch.tensor(masks)}
        else:
            raise GenerationError(f"{self.name}: return_tensors must be 'pt' or None, got {return_tensors!r}")
        out.pop(None, None)      # a model without a mask for this sequence
        return out

    def decode(self, token_ids, skip_special_tokens: bool = False, **_ignored) -> str:
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        backend = self.backend_tokenizer
        text = backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        if self.config.get("clean_up_tokenization_spaces") and type(backend.model).__name__ != "BPE":
            text = _clean_up(text)
        return text

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        if hasattr(rows, "tolist"):
            rows = rows.tolist()
        return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in templates:
                    return templates["tool_use"]
                if "default" in templates:
                    return templates["default"]
                raise GenerationError(f"{self.name}: several chat templates and none is the default; name one of "
                                      f"{sorted(templates)}")
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise GenerationError(f"{self.name}: this tokenizer has no chat template (tokenizer_config.json "
                                  "chat_template or chat_template.jinja)")
        return templates

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = True, chat_template: str | None = None, tools=None, documents=None,
                            **kwargs):
        """The conversation rendered with the chat template (the special tokens are template variables,
        kwargs add or override), then token ids without added special tokens (the template has them)."""
        source = self.get_chat_template(chat_template, tools)
        text = render_chat(source, conversation, add_generation_prompt=add_generation_prompt,
                                    tools=tools, documents=documents, **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _clean_up(text: str) -> str:
    """Transformers' clean_up_tokenization: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def load_tokenizer(folder: str | Path, keys: tuple[str, str | None] = DEFAULT_KEYS) -> Tokenizer:
    """The tokenizer of a checkpoint folder (tokenizer.json, tokenizer_config.json)."""
    return Tokenizer.from_folder(folder, keys)
