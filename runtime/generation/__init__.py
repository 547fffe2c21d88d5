"""Generation as Transformers users know it: greedy, sampling and beam search over a KV cache,
generation_config.json defaults, logits processors, stop strings, streamers; and the text side:
the checkpoint's tokenizer and chat template.

`generate` runs on any model with the Decoder protocol (protocol.py); adapter.py gives a CompiledModel
that protocol.
"""
from runtime.generation.config import GenerationConfig
from runtime.generation.generate import generate

__all__ = ["GenerationConfig", "generate"]
