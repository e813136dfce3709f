"""From a global padded batch to this rank's micro-batches of model inputs.

Batch layout (the trainer's): ``input_ids``/``attention_mask`` [B, P+R] hold a left-padded
prompt followed by a right-padded response; ``response_mask`` [B, R] marks the response
tokens that count in the loss (its width defines R). Every other tensor with B rows rides
along and is sliced like the rows.

Model inputs: each row is shifted left by its number of pad tokens so that its real tokens
occupy columns [0, n) and a plain causal mask is exact (no padding mask, which Transformer
Engine's fused kernels would need). RoPE then sees positions 0..n-1, the same positions HF
and vLLM derive from the attention mask. ``position_ids`` in the batch are therefore unused.
The log-prob of response token t (column P+t) comes from the logits at shifted position
P - pad + t - 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MicroBatch", "ModelInputs", "make_micro_batches", "pad_rows"]


@dataclass(frozen=True)
class ModelInputs:
    """Inputs of one micro-batch (b rows), already on the compute device."""

    tokens: Tensor
    """[b, L] input ids, real tokens left-aligned."""
    index: Tensor
    """[b, R] position whose logits predict response token t (clamped into [0, L))."""
    targets: Tensor
    """[b, R] the response token ids."""
    valid: Tensor
    """[b, R] bool: response position t holds a real token (from ``attention_mask``)."""


@dataclass(frozen=True)
class MicroBatch:
    """Model inputs plus the micro-batch's slice of every tensor of the batch."""

    inputs: ModelInputs
    data: dict[str, Tensor]


def pad_rows(batch: Mapping[str, Tensor], multiple: int) -> tuple[dict[str, Tensor], int]:
    """Repeat the last row until B is a multiple of ``multiple``; returns (batch, original B)."""
    rows = batch["input_ids"].shape[0]
    extra = -rows % multiple
    if extra == 0:
        return dict(batch), rows
    return {k: torch.cat([v, v[-1:].expand(extra, *v.shape[1:])]) for k, v in batch.items()}, rows


def _check(batch: Mapping[str, Tensor]) -> tuple[int, int]:
    for key in ("input_ids", "attention_mask", "response_mask"):
        if key not in batch:
            raise ValueError(f"batch is missing {key!r} (has {sorted(batch)})")
    rows, width = batch["input_ids"].shape
    response = batch["response_mask"].shape[1]
    if batch["attention_mask"].shape != (rows, width) or response >= width:
        raise ValueError(f"batch shapes disagree: input_ids {tuple(batch['input_ids'].shape)}, "
                         f"attention_mask {tuple(batch['attention_mask'].shape)}, "
                         f"response_mask {tuple(batch['response_mask'].shape)}")
    for key, value in batch.items():
        if not isinstance(value, Tensor) or value.shape[:1] != (rows,):
            raise ValueError(f"batch[{key!r}] must be a tensor with {rows} rows")
    mask = batch["attention_mask"].bool().int()
    runs = (mask[:, 1:] - mask[:, :-1] == 1).sum(1) + mask[:, 0]
    if (runs > 1).any():
        bad = (runs > 1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {bad[:8]} have padding between real tokens; "
                         "expected a left-padded prompt followed by a right-padded response")
    return width - response, response


def _model_inputs(input_ids: Tensor, attention_mask: Tensor, prompt: int, length: int,
                  device: torch.device) -> ModelInputs:
    mask = attention_mask.bool()
    rows, width = input_ids.shape
    pad = mask.long().argmax(1)  # leading pad tokens: the first maximum (0 for an empty row)
    # aranges on the batch's device: a batch already on the GPU stays there
    cols = torch.arange(length, device=input_ids.device).unsqueeze(0) + pad.unsqueeze(1)
    tokens = input_ids.gather(1, cols.clamp(max=width - 1))
    tokens = torch.where(cols < width, tokens, torch.zeros_like(tokens))
    steps = torch.arange(width - prompt, device=input_ids.device).unsqueeze(0)
    index = (prompt - pad).unsqueeze(1) - 1 + steps
    return ModelInputs(
        tokens=tokens.to(device),
        index=index.clamp(0, length - 1).to(device),
        targets=input_ids[:, prompt:].to(device),
        valid=(mask[:, prompt:] & (index >= 0)).to(device),
    )


def make_micro_batches(batch: Mapping[str, Tensor], *, dp: int, dp_rank: int,
                       micro_batch_size: int, length_multiple: int,
                       device: torch.device) -> tuple[list[MicroBatch], int]:
    """Split the global batch into this DP rank's micro-batches.

    Rows are dealt to DP ranks in contiguous blocks (rank d gets rows [d B/dp, (d+1) B/dp)),
    then cut into micro-batches of ``micro_batch_size // dp`` rows (``micro_batch_size`` is
    global). Returns the micro-batches and the common sequence length L: the longest real
    sequence of the whole batch rounded up to ``length_multiple`` (equal on every rank, as
    pipeline communication needs).
    """
    prompt, _ = _check(batch)
    rows = batch["input_ids"].shape[0]
    if micro_batch_size % dp or rows % micro_batch_size:
        raise ValueError(f"batch of {rows} rows, micro_batch_size={micro_batch_size}, dp={dp}: "
                         "need rows % micro_batch_size == 0 and micro_batch_size % dp == 0")
    longest = int(batch["attention_mask"].sum(1).max())
    length = max(2, math.ceil(longest / length_multiple) * length_multiple)
    per_rank, per_micro = rows // dp, micro_batch_size // dp
    micro_batches = []
    for start in range(dp_rank * per_rank, (dp_rank + 1) * per_rank, per_micro):
        data = {k: v[start:start + per_micro].to(device) for k, v in batch.items()}
        inputs = _model_inputs(batch["input_ids"][start:start + per_micro],
                               batch["attention_mask"][start:start + per_micro],
                               prompt, length, device)
        micro_batches.append(MicroBatch(inputs=inputs, data=data))
    return micro_batches, length
