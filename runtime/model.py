"""The loaded model: the emitted network plus what a Transformers user expects around it —
`model(input_ids, attention_mask)` returning `.logits`, and greedy `generate` with a KV cache."""
from __future__ import annotations

import torch
from torch import nn

from runtime.context import ForwardContext, KVCache

# Model inputs the runtime knows how to supply; a spec's model.inputs must be among them.
SUPPLIED_INPUTS = ("input_ids", "position_ids")


class ModelOutput(dict):
    """Outputs by name, readable as attributes (`out.logits`) like Transformers' ModelOutput."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row, so padding never shifts RoPE."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class CompiledModel(nn.Module):
    def __init__(self, net: nn.Module, config: dict, spec, manifest: dict, dtype: torch.dtype, device,
                 load_report: dict | None = None):
        super().__init__()
        self.net = net
        self.config = config
        self.spec = spec
        self.manifest = manifest
        self.dtype = dtype
        self.device = torch.device(device)
        self.load_report = load_report or {}
        self.input_names = list(spec.model.inputs)

    def __repr__(self) -> str:
        return f"CompiledModel({self.spec.name}, dtype={self.dtype}, device={self.device})\n{self.net!r}"

    def kernel_report(self) -> dict[str, str]:
        """Which path each fused group takes here: triton, triton (interpreter) or torch, and why."""
        from compiler.triton.dispatch import kernel_report
        return kernel_report(self)

    def _run(self, input_ids, position_ids, ctx) -> ModelOutput:
        feeds = {"input_ids": input_ids, "position_ids": position_ids}
        return ModelOutput(self.net(*(feeds[n] for n in self.input_names), ctx))

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> ModelOutput:
        input_ids = self._batch(input_ids)
        padding = None
        if attention_mask is not None:
            attention_mask = self._batch(attention_mask).to(self.device)
            if not bool(attention_mask.all()):
                padding = attention_mask.bool()
        if position_ids is None:
            position_ids = (positions_from_mask(padding) if padding is not None
                            else torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids))
        ctx = ForwardContext(self.dtype, self.device, padding=padding)
        return self._run(input_ids, position_ids.to(self.device), ctx)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, eos_token_id=None,
                 attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding; returns prompt + new tokens like Transformers' generate.

        Rows that produced an end token continue with `pad_token_id` (or the first end token)
        until every row has finished or `max_new_tokens` is reached.
        """
        ids = self._batch(input_ids)
        batch, prompt_len = ids.shape
        total = prompt_len + max_new_tokens
        eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        padded = attention_mask is not None and not bool(attention_mask.all())
        padding = None
        if padded:
            padding = torch.ones(batch, total, dtype=torch.bool, device=self.device)
            padding[:, :prompt_len] = self._batch(attention_mask).bool()
            positions = positions_from_mask(padding[:, :prompt_len])
        else:
            positions = torch.arange(prompt_len, device=self.device).expand(batch, -1)
        cache = KVCache(total)
        out = torch.empty(batch, total, dtype=ids.dtype, device=self.device)
        out[:, :prompt_len] = ids
        eos_t = torch.tensor(eos, device=self.device) if eos else None
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        step_ids, past = ids, 0
        for step in range(max_new_tokens):
            ctx = ForwardContext(self.dtype, self.device,
                                 padding=None if padding is None else padding[:, :past + step_ids.shape[1]],
                                 cache=cache, past_len=past)
            logits = self._run(step_ids, positions, ctx)["logits"][:, -1]
            token = logits.argmax(dim=-1)
            if eos_t is not None:
                token = torch.where(done, torch.full_like(token, pad), token)
                done |= torch.isin(token, eos_t)
            out[:, prompt_len + step] = token
            past += step_ids.shape[1]
            step_ids = token[:, None]
            positions = positions[:, -1:] + 1
            if eos_t is not None and bool(done.all()):
                return out[:, :prompt_len + step + 1]
        return out

    def _batch(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        return t[None] if t.dim() == 1 else t
