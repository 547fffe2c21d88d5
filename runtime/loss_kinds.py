"""The loss kinds a spec may declare (`loss: causal_lm` on the model or a head): what each reads.

Pure data, shared by the compiler (which checks a declaration against it) and the runtime (whose
runtime/losses.py computes each kind as Transformers does). A kind names how many outputs it reads
(in the block's output order unless the declaration lists them), the keyword arguments that carry
its targets (Transformers' names), and the options a declaration may set (config expressions).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossKind:
    outputs: int                  # outputs it reads
    labels: tuple[str, ...]       # keyword arguments of the forward call carrying the targets
    options: tuple[str, ...] = ()
    doc: str = ""


LOSS_KINDS: dict[str, LossKind] = {
    "causal_lm": LossKind(1, ("labels",), doc="next-token cross-entropy: labels shifted left by one, -100 ignored"),
    "masked_lm": LossKind(1, ("labels",), doc="cross-entropy at every position, -100 ignored"),
    "token_classification": LossKind(1, ("labels",), doc="cross-entropy at every position, -100 ignored"),
    "sequence_classification": LossKind(
        1, ("labels",), ("problem_type",),
        doc="regression (one label: MSE), single-label (int labels: cross-entropy) or multi-label (float "
            "labels: BCE with logits), or as the problem_type option says"),
    "question_answering": LossKind(
        2, ("start_positions", "end_positions"),
        doc="mean of the start and end cross-entropies; positions outside the sequence ignored"),
    "seq2seq": LossKind(
        1, ("labels",), ("pad",),
        doc="cross-entropy at every target position, -100 ignored; without decoder inputs, generation's "
            "token input is made from the labels shifted right after the start token (-100 -> the pad option)"),
}
