"""Per-token log-probs from vocab-parallel logits, without gathering the vocabulary.

log p(y | x) = z_y / T - log sum_v exp(z_v / T), where each TP rank holds a slice of v.
Megatron's ``vocab_parallel_cross_entropy`` computes exactly -log p with two all-reduces
over the TP group (max and sum-exp) plus one for the target logit, and its backward is
local (softmax - onehot). Rows of the padded vocabulary are set to -inf first, so the
result equals the unpadded model's.

Only the R positions that predict response tokens reach the output layer
(``ResponsePositions``): prompt positions cost no vocabulary projection, and no
[b, L, V] logits tensor is gathered.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from megatron.core import tensor_parallel
from torch import Tensor

from prime_mcore.engine.batching import ModelInputs

__all__ = ["ResponsePositions", "token_entropy", "token_logprobs", "share_logprobs"]


class ResponsePositions:
    """Feeds the output layer only the hidden states at ``index`` (set per micro-batch).

    A forward pre-hook on the last stage's ``output_layer``: [L, b, h] -> [R, b, h] with
    ``index`` [b, R]. Under sequence parallelism the hook gathers the sequence itself and the
    output layer stops doing so; its input-gradient all-reduce over TP then makes the
    gather's backward a plain split (``tensor_parallel_output_grad=False``).
    """

    def __init__(self, output_layer: torch.nn.Module) -> None:
        self.index: Tensor | None = None
        self._gather_sequence = bool(output_layer.sequence_parallel)
        output_layer.sequence_parallel = False
        output_layer.register_forward_pre_hook(self._select)

    def _select(self, module: torch.nn.Module, args: tuple) -> tuple:
        assert self.index is not None, "ResponsePositions.index must be set before forward"
        hidden = args[0]
        if self._gather_sequence:
            hidden = tensor_parallel.gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=False)
        index = self.index.t().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return (hidden.gather(0, index), *args[1:])


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")


def _vocab_padding(logits: Tensor, vocab_size: int) -> Tensor | None:
    """[V_local] bool: this TP rank's columns at or beyond the true vocabulary (None: none)."""
    local_vocab = logits.shape[-1]
    start = mpu.get_tensor_model_parallel_rank() * local_vocab
    if start + local_vocab <= vocab_size:
        return None
    return torch.arange(start, start + local_vocab, device=logits.device) >= vocab_size


def token_logprobs(logits: Tensor, inputs: ModelInputs, *, temperature: float,
                   vocab_size: int) -> Tensor:
    """Log-probs [b, R] of the response tokens (0 where ``inputs.valid`` is False).

    Args:
        logits: [b, R, V_local] this TP rank's vocab slice of the logits at the positions
            that predict the response tokens (``ResponsePositions``).
        inputs: the micro-batch's model inputs (targets and validity of the response).
        temperature: logits are divided by it before the softmax.
        vocab_size: the true vocabulary; columns at or beyond it are padding.
    """
    _check_temperature(temperature)
    selected = logits.float()
    if temperature != 1.0:
        selected = selected / temperature
    padding = _vocab_padding(logits, vocab_size)
    if padding is not None:
        selected = selected.masked_fill(padding, float("-inf"))
    # The function works in place on its input, as Megatron's own loss does on the logits.
    neg_logp = tensor_parallel.vocab_parallel_cross_entropy(selected, inputs.targets)
    return torch.where(inputs.valid, -neg_logp, torch.zeros_like(neg_logp))


def token_entropy(logits: Tensor, inputs: ModelInputs, *, temperature: float,
                  vocab_size: int) -> Tensor:
    """Entropy [b, R] of the next-token distribution at each response position (0 where
    ``inputs.valid`` is False), differentiable, with the vocabulary split over TP.

    H = log S - sum_v e_v z_v / S with z = logits / T - max and e = exp(z), S = sum_v e_v:
    the max is all-reduced (no gradient: H does not depend on it), S and sum e z are summed
    over TP ranks by an all-reduce whose backward is the identity (each rank's slice owns
    its columns' gradient). Builds new tensors only: ``token_logprobs`` may then overwrite
    ``logits`` in place.
    """
    _check_temperature(temperature)
    z = logits.float() / temperature
    padding = _vocab_padding(logits, vocab_size)
    with torch.no_grad():
        top = z if padding is None else z.masked_fill(padding, float("-inf"))
        top = top.max(-1, keepdim=True).values
        if mpu.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(top, op=dist.ReduceOp.MAX,
                            group=mpu.get_tensor_model_parallel_group())
    z = z - top  # finite everywhere; padded columns only need e = 0
    e = torch.exp(z)
    if padding is not None:
        e = e.masked_fill(padding, 0.0)
    s, ez = e.sum(-1), (e * z).sum(-1)
    if mpu.get_tensor_model_parallel_world_size() > 1:
        s = tensor_parallel.reduce_from_tensor_model_parallel_region(s)
        ez = tensor_parallel.reduce_from_tensor_model_parallel_region(ez)
    entropy = torch.log(s) - ez / s
    return torch.where(inputs.valid, entropy, torch.zeros_like(entropy))


def share_logprobs(local: Tensor | None, *, rows: int, width: int,
                   device: torch.device) -> Tensor:
    """Make the full [rows, width] result identical on every rank.

    ``local`` is this DP rank's block of rows on the last pipeline stage (None elsewhere). The
    last stage broadcasts it along its pipeline group, then DP ranks all-gather their blocks.
    """
    dp = mpu.get_data_parallel_world_size()
    block = torch.empty(rows // dp, width, dtype=torch.float32, device=device)
    if local is not None:
        block.copy_(local)
    if mpu.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(block, src=mpu.get_pipeline_model_parallel_last_rank(),
                       group=mpu.get_pipeline_model_parallel_group())
    if dp == 1:
        return block
    blocks = [torch.empty_like(block) for _ in range(dp)]
    dist.all_gather(blocks, block, group=mpu.get_data_parallel_group())
    return torch.cat(blocks)
