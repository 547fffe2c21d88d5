"""A streamer that writes text as tokens arrive, with the put() / end() protocol generate calls.

Like Transformers' TextStreamer it decodes everything since the last line break and writes what is
final: up to a line break; a CJK character at once; letters, digits and spaces at once; otherwise up
to the last space, since a symbol may be the first byte of a character or the start of markup.
"""
from __future__ import annotations

import sys
import unicodedata

_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


class TextStreamer:
    """`skip_prompt`: do not write the prompt (the first put). `write`: where text goes (default:
    stdout, flushed). Other keyword arguments go to `tokenizer.decode`."""

    def __init__(self, tokenizer, skip_prompt: bool = False, write=None, **decode_kwargs):
        self.tokenizer, self.skip_prompt, self.decode_kwargs = tokenizer, skip_prompt, decode_kwargs
        self.write = write or self._stdout
        self.pending: list[int] = []
        self.written = 0
        self.prompt_next = True

    @staticmethod
    def _stdout(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def put(self, value) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("TextStreamer follows one sequence; generate a batch of one")
            value = value[0]
        if self.skip_prompt and self.prompt_next:
            self.prompt_next = False
            return
        self.pending.extend(value.tolist())
        text = self.tokenizer.decode(self.pending, **self.decode_kwargs)
        fresh = text[self.written:]
        if text.endswith("\n"):
            # keep the last token as context, so the next line's leading space decodes right
            self.pending = self.pending[-1:]
            self.written = len(self.tokenizer.decode(self.pending, **self.decode_kwargs))
        elif (text and _cjk(text[-1])) or all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in fresh):
            self.written += len(fresh)
        else:
            fresh = text[self.written:text.rfind(" ") + 1]
            self.written += len(fresh)
        self.write(fresh)

    def end(self) -> None:
        text = self.tokenizer.decode(self.pending, **self.decode_kwargs) if self.pending else ""
        self.write(text[self.written:] + "\n")
        self.pending, self.written, self.prompt_next = [], 0, True
