"""The parts of Transformers' PreTrainedModel API a loaded model offers besides forward and generate.

Counting params and bytes, the input embeddings (get, set, resize), the model without its head,
saving, gradient checkpointing of repeated layers and torch.compile of the network. A mixin of
`CompiledModel` (runtime/model.py), which holds `net`, `interface`, `config` and `head`.
"""
from __future__ import annotations

import functools

import torch
from torch import nn


class TransformersAPI:
    network_compiled = False       # model.compile() ran

    # -- counting --------------------------------------------------------------------------------
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Elements of the unique params (a tied weight once), as Transformers counts: trainable only
        (requires_grad), and/or without the embedding tables."""
        skip = set()
        if exclude_embeddings:
            skip = {f"{name}.weight" for name, m in self.net.named_modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for name, p in self.net.named_parameters()
                   if name not in skip and (p.requires_grad or not only_trainable))

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the params (and buffers), as Transformers' get_memory_footprint."""
        total = sum(p.nelement() * p.element_size() for p in self.net.parameters())
        if return_buffers:
            total += sum(b.nelement() * b.element_size() for b in self.net.buffers())
        return total

    # -- embeddings -------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        from runtime.embeddings import input_embeddings_path
        return self.net.get_submodule(input_embeddings_path(self))

    def set_input_embeddings(self, module: nn.Module) -> None:
        """Replace the embedding table of the first token input; params tied to it follow."""
        from runtime.embeddings import input_embeddings_path, retie, set_module
        set_module(self.net, input_embeddings_path(self), module)
        retie(self.net)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Module:
        from runtime.embeddings import resize_token_embeddings
        return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)

    def _take_embeds(self, args: tuple, kwargs: dict) -> dict:
        from runtime.embeddings import take_embeds
        return take_embeds(self, args, kwargs)

    def _embeds_in_place(self, feeds: dict, embeds: dict | None):
        from runtime.embeddings import embeds_in_place
        return embeds_in_place(self.net, embeds)

    # -- the model without its head ------------------------------------------------------------------
    @property
    def base_model(self):
        """The trunk, sharing this model's params: its outputs are the spec's model outputs (what every
        head reads). A model without a head is its own base model."""
        if self.head is None:
            return self
        import sys
        view = type(self)(self.net, self.config, self.interface, self.manifest, self.dtype, self.device,
                          dict(self.load_report), head=None, source=self.source)
        # the head class subclasses the trunk's: its forward, called on the same modules, gives the trunk's outputs
        view._trunk = functools.partial(sys.modules[type(self.net).__module__].MODEL.forward, self.net)
        view.train(self.training)
        return view

    # -- saving --------------------------------------------------------------------------------------
    def save_pretrained(self, folder, max_shard_size: int | str = "5GB", safe_serialization: bool = True):
        """config.json, the weights (sharded past max_shard_size), generation_config.json and the
        tokenizer files of the source checkpoint: a folder Transformers' from_pretrained reads."""
        from runtime.save import save_pretrained
        if not safe_serialization:
            raise ValueError("graphspec saves safetensors only (pickle checkpoints can run code when read)")
        return save_pretrained(self, folder, max_shard_size=max_shard_size)

    # -- training -----------------------------------------------------------------------------------
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "_graphspec_checkpointed", False) for m in self.net.modules())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Each layer of every repeated block keeps only its inputs while training and recomputes the
        rest during backward (torch.utils.checkpoint, non-reentrant unless the kwargs say otherwise)."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for layers in self.net.modules():
            if not isinstance(layers, nn.ModuleList):
                continue
            for layer in layers:
                if getattr(layer, "_graphspec_checkpointed", False):
                    continue
                layer.forward = functools.partial(_checkpointed, type(layer).forward.__get__(layer), kwargs)
                layer._graphspec_checkpointed = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.net.modules():
            if getattr(m, "_graphspec_checkpointed", False):
                del m.forward
                m._graphspec_checkpointed = False

    # -- torch.compile --------------------------------------------------------------------------------
    def compile(self, *args, **kwargs) -> None:
        """torch.compile the network in place, so forward and every generate step (which call the
        network, not this wrapper) run the compiled code (and are not recorded: step_capture.py)."""
        self.net.compile(*args, **kwargs)
        self.network_compiled = True


def _checkpointed(run, kwargs: dict, *args):
    if torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint
        return checkpoint(run, *args, **kwargs)
    return run(*args)
