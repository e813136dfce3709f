"""Rollout batches for the RL loop: padding, masks and group layout (pure torch).

Layout (veRL's): each row is a left-padded prompt followed by a right-padded response, so
every response starts at column ``prompt_len`` and per-token tensors over the response
(log-probs, rewards, advantages) share one [B, R] shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RolloutBatch", "pad_rollouts", "make_group_ids", "assert_groups_contiguous"]


@dataclass(frozen=True)
class RolloutBatch:
    """B rollouts, each ``prompt_len`` (P) prompt columns then R response columns.

    input_ids:      [B, P+R] long; left pad, prompt, response, right pad (pad id).
    attention_mask: [B, P+R] long; 1 on prompt tokens and on response tokens up to and
                    including the first EOS; 0 on padding and on anything after EOS.
    position_ids:   [B, P+R] long; 0 at the first real token, counting real tokens only.
    response_mask:  [B, R] long; attention_mask's response part (the tokens losses use).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int

    @property
    def prompts(self) -> torch.Tensor:
        """[B, P] left-padded prompt ids."""
        return self.input_ids[:, : self.prompt_len]

    @property
    def responses(self) -> torch.Tensor:
        """[B, R] right-padded response ids."""
        return self.input_ids[:, self.prompt_len:]

    @property
    def response_lengths(self) -> torch.Tensor:
        """[B] number of response tokens counted by losses (EOS included)."""
        return self.response_mask.sum(-1)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The tensors by name (prompts and responses included)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "response_mask": self.response_mask,
                "prompts": self.prompts, "responses": self.responses}


def _response_mask(responses: torch.Tensor, lengths: torch.Tensor, eos_id: int | None
                   ) -> torch.Tensor:
    cols = torch.arange(responses.shape[1])
    mask = cols[None, :] < lengths[:, None]
    if eos_id is not None:
        is_eos = (responses == eos_id) & mask
        # columns strictly after the first EOS: an EOS occurred at an earlier column
        after = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
        mask &= ~after
    return mask.long()


def pad_rollouts(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
    *, eos_id: int | None = None, prompt_len: int | None = None,
    response_len: int | None = None,
) -> RolloutBatch:
    """Pad B prompt/response token lists into a RolloutBatch.

    Prompts are left-padded to ``prompt_len`` (default: the longest), responses
    right-padded to ``response_len`` (default: the longest). With ``eos_id``, response
    tokens after the first EOS are masked out (the EOS itself counts: the policy is
    trained to stop); a response without EOS (truncated) keeps all its tokens.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("empty rollout batch")
    p_len = max(map(len, prompt_ids)) if prompt_len is None else prompt_len
    r_len = max(map(len, response_ids)) if response_len is None else response_len
    if max(map(len, prompt_ids)) > p_len or max(map(len, response_ids)) > r_len:
        raise ValueError(f"a prompt or response is longer than prompt_len={p_len} / "
                         f"response_len={r_len}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt has no tokens")
    b = len(prompt_ids)
    prompts = torch.full((b, p_len), pad_id, dtype=torch.long)
    responses = torch.full((b, r_len), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        prompts[i, p_len - len(p):] = torch.tensor(list(p), dtype=torch.long)
        responses[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    p_lens = torch.tensor([len(p) for p in prompt_ids])
    r_lens = torch.tensor([len(r) for r in response_ids])
    prompt_mask = (torch.arange(p_len)[None, :] >= (p_len - p_lens)[:, None]).long()
    response_mask = _response_mask(responses, r_lens, eos_id)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)
    return RolloutBatch(
        input_ids=torch.cat([prompts, responses], dim=1), attention_mask=attention_mask,
        position_ids=position_ids, response_mask=response_mask, prompt_len=p_len)


def make_group_ids(num_prompts: int, group_size: int) -> torch.Tensor:
    """[num_prompts * group_size] prompt index of each rollout, K samples contiguous."""
    return torch.arange(num_prompts).repeat_interleave(group_size)


def assert_groups_contiguous(group_ids: Sequence[int] | torch.Tensor, group_size: int) -> None:
    """Check that rollouts come in contiguous blocks of ``group_size`` sharing one id, with
    a different id in every block (RLOO/leave-one-out baselines rely on it, and so does
    sharding a batch over data-parallel ranks at group boundaries). Raises ValueError."""
    ids = torch.as_tensor(group_ids).reshape(-1)
    if group_size <= 0 or ids.numel() % group_size:
        raise ValueError(f"{ids.numel()} rollouts do not split into groups of {group_size}")
    blocks = ids.reshape(-1, group_size)
    mixed = (blocks != blocks[:, :1]).any(dim=1).nonzero().flatten()
    if mixed.numel():
        g = int(mixed[0])
        raise ValueError(f"group {g} (rollouts {g * group_size}..{(g + 1) * group_size - 1}) "
                         f"mixes ids {blocks[g].tolist()}")
    heads = blocks[:, 0].tolist()
    if len(set(heads)) != len(heads):
        dup = next(h for h in heads if heads.count(h) > 1)
        raise ValueError(f"group id {dup} appears in more than one block of {group_size}")
