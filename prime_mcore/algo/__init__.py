"""PRIME maths: pure functions on tensors (spec sections 2-6). Imports only torch.

Rows are responses; the ``group_size`` responses of a prompt are consecutive rows;
``response_mask`` marks valid response tokens, EOS included; ``scores`` are the verifier's
per-response outcome scores in [0, 1]. ``convention`` is "orig" (PRIME-RL/PRIME, the
paper's run; default) or "verl" (the veRL port).
"""

from prime_mcore.algo.advantages import masked_rloo, rloo_advantages
from prime_mcore.algo.filtering import accuracy_filter, expand_group_mask, group_accuracy
from prime_mcore.algo.implicit_prm import (
    batch_norm_denominator,
    dpo_accuracy,
    dpo_accuracy_abs,
    prm_ce_loss,
    process_rewards,
)
from prime_mcore.algo.masking import masked_mean, masked_sum, masked_whiten, reverse_cumsum
from prime_mcore.algo.policy_loss import aggregate, kl_k3, ppo_policy_loss

__all__ = [
    "accuracy_filter",
    "aggregate",
    "batch_norm_denominator",
    "dpo_accuracy",
    "dpo_accuracy_abs",
    "expand_group_mask",
    "group_accuracy",
    "kl_k3",
    "masked_mean",
    "masked_rloo",
    "masked_sum",
    "masked_whiten",
    "ppo_policy_loss",
    "prm_ce_loss",
    "process_rewards",
    "reverse_cumsum",
    "rloo_advantages",
]
