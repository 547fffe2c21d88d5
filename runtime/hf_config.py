"""`model.config`: the spec's config values, readable under Transformers' key names too.

A `ModelConfig` is a dict of the spec's config values (what the emitted model, the weight rules and
the checks read), and it keeps the checkpoint's whole config.json beside them (`.hf`). Attributes
read the config.json key first (`config.num_hidden_layers`, `config.rope_parameters`), then the spec
name (`config.num_layers`), then Transformers' derived label attributes (`num_labels`, `id2label`,
`label2id`). Changing a value through `set` (or an attribute) changes both views, so saving writes
back every key of the source config with our values merged (`to_dict`).
"""
from __future__ import annotations

import copy
import json

from runtime.config import lookup, _MISSING
from runtime.errors import ConfigError

# Attributes of Transformers' PretrainedConfig that config.json often leaves out (their defaults apply).
LABEL_KEYS = ("num_labels", "id2label", "label2id")


def set_key(data: dict, dotted: str, value) -> None:
    """Set `a.b.c` in nested dicts, making the dicts on the way."""
    *path, leaf = dotted.split(".")
    node = data
    for part in path:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def default_labels(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}


def apply_labels(hf: dict, num_labels=None, id2label=None, label2id=None) -> None:
    """from_pretrained's num_labels / id2label / label2id written into a config.json dict, as
    Transformers' PretrainedConfig does (num_labels alone makes LABEL_0..LABEL_{n-1})."""
    if id2label is not None:
        hf["id2label"] = {str(k): v for k, v in dict(id2label).items()}
    elif num_labels is not None:
        current = hf.get("id2label")
        if not isinstance(current, dict) or len(current) != num_labels:
            hf["id2label"] = {str(k): v for k, v in default_labels(num_labels).items()}
    if label2id is not None:
        hf["label2id"] = dict(label2id)
    elif "id2label" in hf and (id2label is not None or num_labels is not None):
        hf["label2id"] = {v: int(k) for k, v in hf["id2label"].items()}
    if num_labels is not None and id2label is not None and len(hf["id2label"]) != num_labels:
        raise ConfigError(f"num_labels={num_labels} but id2label has {len(hf['id2label'])} labels")
    if "id2label" in hf:
        hf["num_labels"] = len(hf["id2label"])


class ModelConfig(dict):
    """Spec config values (the dict) + the checkpoint's config.json (`.hf`) + the interface's entries."""

    def __init__(self, values: dict, hf: dict | None = None, entries: dict | None = None):
        super().__init__(values)
        object.__setattr__(self, "hf", copy.deepcopy(hf or {}))
        object.__setattr__(self, "entries", dict(entries or {}))

    # -- reading ---------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        hf = object.__getattribute__(self, "hf")
        if name in LABEL_KEYS:
            return self._labels(name)
        if name in hf:
            return hf[name]
        if name in self:
            return self[name]
        raise AttributeError(f"config has no '{name}' (config.json keys: {', '.join(sorted(hf))}; "
                             f"spec names: {', '.join(self)})")

    def _labels(self, name: str):
        raw = self.hf.get("id2label")
        if isinstance(raw, dict):
            id2label = {int(k): v for k, v in raw.items()}
        else:
            n = self.hf.get("num_labels", self.get("num_labels") or 2)
            id2label = default_labels(int(n))
        if name == "id2label":
            return id2label
        if name == "label2id":
            given = self.hf.get("label2id")
            return dict(given) if isinstance(given, dict) else {v: k for k, v in id2label.items()}
        return len(id2label)

    def hf_key(self, name: str) -> str | None:
        """The config.json key a spec entry is read from here: the first of its keys present, else its first."""
        entry = self.entries.get(name)
        if entry is None or not entry.hf:
            return None
        for key in entry.hf:
            if lookup(self.hf, key) is not _MISSING:
                return key
        return entry.hf[0]

    # -- changing ---------------------------------------------------------------------------------
    def set(self, name: str, value) -> None:
        """Change a value by spec name or config.json key; both views follow."""
        spec_names = [name] if name in self.entries else [n for n, e in self.entries.items() if name in e.hf]
        for n in spec_names:
            self[n] = value
            key = self.hf_key(n)
            if key is not None:
                set_key(self.hf, key, value)
        if not spec_names:
            set_key(self.hf, name, value)

    def __setattr__(self, name: str, value) -> None:
        self.set(name, value)

    # -- writing ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """config.json as it would be saved: every key of the source, with this model's values (kept in
        sync by `set`); a top-level key the source left out is written with the value the spec gave it,
        so a reader's own default cannot differ from the spec's."""
        out = copy.deepcopy(self.hf)
        for name, value in self.items():
            key = self.hf_key(name)
            if key is not None and "." not in key and key not in out and value is not None:
                out[key] = value
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __deepcopy__(self, memo):
        return ModelConfig(copy.deepcopy(dict(self), memo), copy.deepcopy(self.hf, memo), self.entries)

    def __reduce__(self):
        return (ModelConfig, (dict(self), self.hf, self.entries))
