"""The loss kinds of runtime/loss_kinds.py, computed as Transformers computes them.

A model's loss comes from its interface (`loss:` on the spec's model or head): which kind, which
outputs it reads, its options over config values. `compute_loss` takes the outputs and the targets
passed to the forward call under their Transformers names (`labels`, `start_positions`, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100      # the label Transformers' losses skip


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    return F.cross_entropy(logits, labels.to(logits.device), ignore_index=ignore_index)


def causal_lm(logits, labels, options):
    # each position predicts the next token: labels move left by one, the last position predicts nothing
    shifted = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    return _cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1))


def per_position(logits, labels, options):
    return _cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def seq2seq(logits, labels, options):
    return _cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def sequence_classification(logits, labels, options):
    n = logits.shape[-1]
    labels = labels.to(logits.device)
    problem = options.get("problem_type") or problem_type(n, labels)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if n == 1 else F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return _cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"problem_type must be regression, single_label_classification or "
                     f"multi_label_classification, got {problem!r}")


def problem_type(num_labels: int, labels: torch.Tensor) -> str:
    """Transformers' choice when the config names none: one output regresses, int labels pick one
    class, float labels mark several."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def question_answering(first, last, first_positions, last_positions, options):
    """The span's first and last token: one cross-entropy over the positions each."""
    ignored = first.shape[1]     # a position past the sequence (clamped to its length) counts for nothing
    losses = []
    for logits, positions in ((first, first_positions), (last, last_positions)):
        if positions.dim() > 1:
            positions = positions.squeeze(-1)
        losses.append(_cross_entropy(logits, positions.clamp(0, ignored), ignore_index=ignored))
    return (losses[0] + losses[1]) / 2


KINDS = {"causal_lm": causal_lm, "masked_lm": per_position, "token_classification": per_position,
         "seq2seq": seq2seq, "sequence_classification": sequence_classification,
         "question_answering": question_answering}


def compute_loss(loss, outputs: dict, targets: list, options: dict) -> torch.Tensor:
    """`loss` (runtime/interface.py Loss) over the outputs it names and the targets its kind takes."""
    return KINDS[loss.kind](*(outputs[name] for name in loss.outputs), *targets, options)


def shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then the labels but the last, -100 -> pad."""
    shifted = labels.new_full(labels.shape, start)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == IGNORE, pad)
