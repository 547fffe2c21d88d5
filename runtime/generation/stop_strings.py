"""Stop strings: a row is done when the text of its last tokens contains a stop string that ends
inside the last token (the token may run past it), as Transformers' StopStringCriteria decides.

Each token's text is what it contributes in the middle of a text: for byte-level tokenizers (the
byte alphabet) and byte-fallback tokens (`<0x0A>`) its bytes, otherwise the tokenizer's decoder
output for the token after a fixed prefix, with the prefix cut off — so a SentencePiece `▁word`
counts as " word". Like Transformers, only the last as many tokens as the longest stop string has
characters (bytes) are looked at, and an id the tokenizer does not know ends the text there.
Token texts are worked out on first sight and kept, so no pass over the vocabulary is needed.
"""
from __future__ import annotations

import json

import torch

_PREFIX = "abcdef"


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet's printable stand-in for each byte, inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in stand_in.items()}


def backend_of(tokenizer):
    """The `tokenizers.Tokenizer` behind ours or a Transformers fast tokenizer (or the object itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def _types_in(state) -> set[str]:
    found = set()
    if isinstance(state, dict):
        if isinstance(state.get("type"), str):
            found.add(state["type"])
        for value in state.values():
            found |= _types_in(value)
    elif isinstance(state, list):
        for value in state:
            found |= _types_in(value)
    return found


def matching_mode(backend) -> str | None:
    """"byte_level", "byte_fallback" or None (plain text), from the tokenizer's decoder."""
    decoder = backend.decoder
    if decoder is None:
        return None
    if type(decoder).__name__ == "ByteLevel":
        return "byte_level"
    try:
        state = decoder.__getstate__()
        types = _types_in(json.loads(state.decode() if isinstance(state, bytes) else state))
    except (TypeError, ValueError, AttributeError):
        return None
    if "ByteFallback" in types:
        return "byte_fallback"
    return "byte_level" if "ByteLevel" in types else None


class TokenTexts:
    """Token id -> its text in the middle of a text (bytes in the byte modes), or None if unknown."""

    def __init__(self, tokenizer):
        self.backend = backend_of(tokenizer)
        self.mode = matching_mode(self.backend)
        self.alphabet = _byte_alphabet() if self.mode == "byte_level" else None
        self.prefix_tokens = [self.backend.id_to_token(i)
                              for i in self.backend.encode(_PREFIX, add_special_tokens=False).ids]
        self.known: dict[int, str | bytes | None] = {}

    def __call__(self, token_id: int):
        if token_id not in self.known:
            self.known[token_id] = self._text(token_id)
        return self.known[token_id]

    def _text(self, token_id: int):
        token = self.backend.id_to_token(token_id)
        if token is None:
            return None
        if self.mode == "byte_level" and all(c in self.alphabet for c in token):
            return bytes(self.alphabet[c] for c in token)
        if (self.mode == "byte_fallback" and len(token) == 6 and token.startswith("<0x") and token.endswith(">")
                and all(c in "0123456789abcdefABCDEF" for c in token[3:5])):
            return bytes([int(token[3:5], 16)])
        pieces = [*self.prefix_tokens, token]
        text = self.backend.decoder.decode(pieces) if self.backend.decoder is not None else " ".join(pieces)
        text = text[text.index(_PREFIX) + len(_PREFIX):]
        return text if self.mode is None else text.encode("utf-8")


class StopStrings:
    """Stopping criterion: True for rows whose text ends (inside the last token) with a stop string."""

    def __init__(self, tokenizer, stop_strings: str | list[str]):
        self.texts = TokenTexts(tokenizer)
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        self.targets = [s if self.texts.mode is None else s.encode("utf-8") for s in strings]
        self.window = max(len(t) for t in self.targets)

    def _row_done(self, ids: list[int]) -> bool:
        pieces = []
        for token_id in reversed(ids):
            text = self.texts(token_id)
            if text is None:
                break
            pieces.append(text)
        if not pieces:
            return False
        last = len(pieces[0])
        joined = pieces[0][:0].join(reversed(pieces))
        # an occurrence ending inside the last token starts after len(joined) - last - len(target)
        return any(t in joined[max(0, len(joined) - last - len(t) + 1):] for t in self.targets)

    def __call__(self, ids, scores=None):
        rows = ids[:, -self.window:].tolist()
        return torch.tensor([self._row_done(r) for r in rows], dtype=torch.bool, device=ids.device)
