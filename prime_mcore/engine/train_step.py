"""One optimizer step over a global mini-batch, with an explicit loss normalizer.

Contract of ``loss_fn(logp, micro_batch) -> (loss_sum, metrics)``:

- ``logp`` [b, R]: differentiable log-probs (at the given temperature) of the response tokens
  of one micro-batch, 0 at padded response positions; ``micro_batch`` holds the
  micro-batch's rows of every tensor of the batch (``response_mask``, advantages, ...).
  A step with ``entropy=True`` calls ``loss_fn(logp, micro_batch, entropy=ent)`` with the
  differentiable entropy [b, R] of each response position's next-token distribution (at
  the same temperature, 0 at padded positions), e.g. for an entropy bonus.
- ``loss_sum`` is a SUM, never a mean, and the engine divides it by a global count D:

  - ``normalizer="token"``: D = number of response tokens (``response_mask.sum()``) in the
    whole global mini-batch, over all micro-batches and DP ranks. ``loss_fn`` returns the
    masked sum over tokens, e.g. ``(per_token_loss * response_mask).sum()``. The step
    minimises the global token mean.
  - ``normalizer="sequence"``: D = number of sequences (rows) in the global mini-batch,
    rows with an empty response included. ``loss_fn`` returns a sum over sequences of
    per-sequence values, e.g. ``masked_token_mean(per_token_loss, response_mask, 1).sum()``.
    The step minimises the global sequence mean.

  So the gradient is that of sum(loss_sum) / D over the global batch: the same for any
  micro-batch size and any TP/PP/DP layout.
- ``metrics``: sums too, with the same keys for every micro-batch (e.g. the masked count of
  clipped tokens); the step reports each divided by the same D, i.e. its global token or
  sequence mean (layout-independent, like the loss).

Mechanics: the model config sets ``calculate_per_token_loss`` so the schedule neither
divides by the number of micro-batches nor does DDP average over DP (both would bake in
per-rank or per-micro-batch counts); each micro-batch reports its count, and Megatron's
``finalize_model_grads`` sums the counts over micro-batches and DP ranks and divides every
gradient by that D before clipping and the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from torch import Tensor

from prime_mcore.engine.batching import MicroBatch

__all__ = ["LossFn", "NORMALIZERS", "make_head", "reduce_metrics"]

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor | float]]]
NORMALIZERS = ("token", "sequence")
RESERVED_METRICS = frozenset({"loss", "denominator", "grad_norm", "lr"})


def make_head(loss_fn: LossFn, normalizer: str, *,  # type: ignore[no-untyped-def]
              keep_logp: bool = False):
    """Per-micro-batch head for ``run_schedule``: loss sum, its count, values to keep
    (with ``keep_logp`` also the detached log-probs, as ``_logp``)."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer={normalizer!r} is not one of {list(NORMALIZERS)}")

    def head(logp: Tensor, micro_batch: MicroBatch,
             entropy: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        extra = {} if entropy is None else {"entropy": entropy}
        loss_sum, metrics = loss_fn(logp, micro_batch.data, **extra)
        if loss_sum.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar sum, got shape {tuple(loss_sum.shape)}")
        if normalizer == "token":
            count = micro_batch.data["response_mask"].sum()
        else:
            count = torch.tensor(logp.shape[0], device=logp.device)
        count = count.to(torch.int)
        reserved = RESERVED_METRICS.intersection(metrics)
        if reserved:
            raise ValueError(f"loss_fn metrics may not be named {sorted(reserved)}")
        # kept on the device: no host sync per micro-batch
        kept = {k: torch.as_tensor(v, dtype=torch.float64, device=logp.device).detach().reshape(())
                for k, v in metrics.items()}
        kept["_loss"] = loss_sum.detach().double()
        kept["_count"] = count.detach().double()
        if keep_logp:
            kept["_logp"] = logp.detach()
        return loss_sum, count, kept

    return head


def reduce_metrics(kept: list[dict[str, Tensor]], *, device: torch.device) -> dict[str, float]:
    """Loss and loss_fn metrics as global sums / D (see the module docstring), identical on
    every rank: computed on the last stage, then broadcast along the pipeline."""
    result: list[dict[str, float] | None] = [None]
    if mpu.is_pipeline_last_stage():
        keys = sorted(k for k in kept[0] if not k.startswith("_"))
        totals = torch.stack([torch.stack([d[k] for d in kept]).sum()
                              for k in ("_count", "_loss", *keys)]).to(device)
        if mpu.get_data_parallel_world_size() > 1:
            dist.all_reduce(totals, group=mpu.get_data_parallel_group(), op=dist.ReduceOp.SUM)
        count, *values = totals.tolist()
        names = ("loss", *keys)
        result[0] = {"denominator": count,
                     **{k: v / max(count, 1.0) for k, v in zip(names, values, strict=True)}}
    if mpu.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast_object_list(result, src=mpu.get_pipeline_model_parallel_last_rank(),
                                   group=mpu.get_pipeline_model_parallel_group())
    assert result[0] is not None
    return result[0]
