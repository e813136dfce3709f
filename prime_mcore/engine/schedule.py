"""One pass of Megatron's pipeline schedule over this rank's micro-batches.

The same forward step serves log-probs (forward only) and training: the first stage embeds
``ModelInputs.tokens``, the last stage turns its vocab-parallel logits into per-token
log-probs of the response (and, when asked, the entropy of each position's next-token
distribution) and hands them to a per-micro-batch ``head``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch import Tensor

from prime_mcore.engine.batching import MicroBatch
from prime_mcore.engine.logprobs import ResponsePositions, token_entropy, token_logprobs

__all__ = ["Head", "run_schedule"]

# (logp [b, R], micro-batch, entropy [b, R] or None) -> (loss to backpropagate, denominator
# count, values to keep)
Head = Callable[[Tensor, MicroBatch, Tensor | None], tuple[Tensor, Tensor, dict[str, Tensor]]]


def run_schedule(modules: list[torch.nn.Module], micro_batches: list[MicroBatch], *,
                 positions: ResponsePositions | None, seq_length: int, head: Head,
                 temperature: float, vocab_size: int,
                 forward_only: bool, entropy: bool = False) -> list[dict[str, Tensor]]:
    """Run forward (and backward) over all micro-batches; returns the heads' dicts on the last
    pipeline stage (an empty list elsewhere). ``positions`` is the last stage's
    ``ResponsePositions`` (None on other stages).

    With ``calculate_per_token_loss`` set in the model config, the schedule neither divides
    the loss by the number of micro-batches nor lets DDP average over DP; instead
    ``finalize_model_grads`` divides all gradients by the sum of the heads' counts over
    micro-batches and DP ranks (see ``train_step.py``). ``entropy`` hands the heads the
    per-token entropy too (None otherwise: it costs a pass over the vocabulary).
    """

    def forward_step(data_iterator, model):  # type: ignore[no-untyped-def]
        micro_batch: MicroBatch = next(data_iterator)
        if positions is not None:  # last stage: project only the response positions
            positions.index = micro_batch.inputs.index
        output = model(micro_batch.inputs.tokens, None, None)
        return output, partial(_loss, micro_batch)

    def _loss(micro_batch: MicroBatch, logits: Tensor):  # type: ignore[no-untyped-def]
        # entropy first: the log-probs' cross-entropy overwrites ``logits`` in place
        ent = (token_entropy(logits, micro_batch.inputs, temperature=temperature,
                             vocab_size=vocab_size) if entropy else None)
        logp = token_logprobs(logits, micro_batch.inputs, temperature=temperature,
                              vocab_size=vocab_size)
        return head(logp, micro_batch, ent)

    iterators = [iter(micro_batches) for _ in modules]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(modules) > 1 else iterators[0],
        model=modules,
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batches[0].inputs.tokens.shape[0],
        forward_only=forward_only,
    )
