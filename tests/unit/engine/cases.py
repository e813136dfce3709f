"""Shared cases of the engine tests (in-process and torchrun): tiny models, batches, losses.

Imports no megatron: the torchrun workers import this at module level, and the checkpoint
writer's spawned helper process re-imports the worker's ``__main__``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prime_mcore.config import ModelConfig, OptimConfig

VOCAB = 250  # not a multiple of 128: the padded rows are exercised

# Qwen2-shaped: QKV bias, tied embeddings, GQA (4 heads, 2 groups), RoPE base 1e6.
TINY_QWEN2 = ModelConfig(arch="qwen2", vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=128,
                         num_layers=2, num_attention_heads=4, num_query_groups=2,
                         max_position_embeddings=128, rope_theta=1e6, norm_eps=1e-6,
                         qkv_bias=True, tie_word_embeddings=True, params_dtype="fp32")
# Llama-shaped: no bias, untied, 4 layers (room for PP=2 x VPP=2), RoPE base 5e5.
TINY_LLAMA = ModelConfig(arch="llama", vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=176,
                         num_layers=4, num_attention_heads=4, num_query_groups=2,
                         max_position_embeddings=128, rope_theta=5e5, norm_eps=1e-5,
                         qkv_bias=False, tie_word_embeddings=False, params_dtype="fp32")
MODELS = {"qwen2": TINY_QWEN2, "llama": TINY_LLAMA}

# Adam's update ~ lr * g / (|g| + eps) amplifies fp32 rounding noise of near-zero gradients
# by up to lr / eps, so layout comparisons use eps=1e-6 (not 1e-8) and lr=1e-4: layouts then
# agree to ~1e-7, while a lost moment or a wrong step count moves weights by ~lr.
OPTIM = OptimConfig(lr=1e-4, min_lr=1e-5, weight_decay=0.01, adam_eps=1e-6, clip_grad=1.0,
                    lr_schedule="cosine", warmup_steps=1)
TOTAL_STEPS = 4


def make_batch(*, rows: int, prompt: int, response: int, vocab: int = VOCAB,
               seed: int) -> dict[str, Tensor]:
    """Random tokens with ragged prompt and response lengths, plus loss inputs.

    Row i has a prompt of 1..prompt tokens (left-padded) and a response of 1..response tokens
    (right-padded), so micro-batches and DP shards see different amounts of padding.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (rows, prompt + response), generator=gen)
    mask = torch.zeros(rows, prompt + response, dtype=torch.long)
    for i in range(rows):
        p = 1 + (i * 5 + seed) % prompt
        r = 1 + (i * 3 + seed) % response
        mask[i, prompt - p: prompt + r] = 1
    ids = ids * mask  # pad id 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
        "response_mask": mask[:, prompt:].clone(),
        "advantages": torch.randn(rows, response, generator=gen),
        # about the tiny model's log-probs (~ -log 250), so some ratios clip and some do not
    "old_logp": -5.5 - 0.5 * torch.randn(rows, response, generator=gen),
    }


def _ppo_terms(logp: Tensor, mb: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Masked per-token PPO-clip loss (plus a small quadratic term that keeps every token's
    gradient non-zero), the masked clip indicator, and the mask."""
    mask = mb["response_mask"].float()
    ratio = torch.exp(logp - mb["old_logp"])
    clipped = torch.clamp(ratio, 0.5, 1.5)
    per_token = -torch.minimum(mb["advantages"] * ratio, mb["advantages"] * clipped)
    per_token = per_token + 0.01 * logp.pow(2)
    was_clipped = (ratio != clipped).float()
    return per_token * mask, was_clipped * mask, mask


def token_loss(logp: Tensor, mb: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-style loss for normalizer="token": masked sums over tokens."""
    per_token, was_clipped, _ = _ppo_terms(logp, mb)
    return per_token.sum(), {"clipfrac": was_clipped.sum()}


def sequence_loss(logp: Tensor, mb: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The same for normalizer="sequence": sums over rows of per-row token means."""
    per_token, was_clipped, mask = _ppo_terms(logp, mb)
    count = mask.sum(1).clamp(min=1)
    return (per_token.sum(1) / count).sum(), {"clipfrac": (was_clipped.sum(1) / count).sum()}


def sequence_entropy_loss(logp: Tensor, mb: dict[str, Tensor],
                          entropy: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """``sequence_loss`` minus an entropy bonus (a step with ``entropy=True``)."""
    loss, metrics = sequence_loss(logp, mb)
    mask = mb["response_mask"].float()
    per_row = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1)
    return loss - ENTROPY_COEF * per_row.sum(), {**metrics, "entropy": per_row.sum()}


ENTROPY_COEF = 0.1
LOSSES = {"token": token_loss, "sequence": sequence_loss}
