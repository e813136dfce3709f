"""The rollout contract: sampling options, per-sample outputs and the backend protocol.

Prompts are lists of token ids (the trainer applies the chat template). ``generate`` returns
one ``Sample`` per response, prompt-major: the ``n`` samples of prompt ``i`` are
``samples[i * n:(i + 1) * n]``.

Logprob convention (both backends): ``Sample.logprobs[t]`` is the log-probability of the
sampled token under the distribution it was actually drawn from, i.e.
``log_softmax(logits / T)`` after top-k/top-p truncation and renormalisation (vLLM's
``processed_logprobs``). With ``top_p=1`` and top-k off this is exactly what a trainer
computing ``log_softmax(logits / T)`` gets. Greedy decoding (``T == 0``) reports
``log_softmax(logits)``, i.e. T is taken as 1 for the logprobs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from prime_mcore.config import RolloutConfig

FinishReason = Literal["stop", "length"]
"""``"stop"``: EOS, a stop token id or a stop string ended it; ``"length"``: it reached
max_new_tokens (or, in vLLM, the end of the context window, max_model_len)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample responses; backend independent."""

    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = -1
    """-1 (or 0) disables top-k."""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Stop strings, matched on the detokenized response; the token completing one is kept."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra stop tokens besides the model's EOS; kept at the end of the response like EOS."""
    seed: int | None = None
    """Base seed of the call: a fixed seed reproduces the samples of the same call."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks: equal lengths). Stop ids/strings still apply."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k} must be -1 (off), 0 (off) or positive")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        # Lists from YAML configs become tuples so the dataclass stays hashable.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if any(not s for s in self.stop):
            raise ValueError("empty stop string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def top_k_enabled(self) -> bool:
        return self.top_k > 0

    def replace(self, **changes: object) -> SamplingParams:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: RolloutConfig, **overrides: object) -> SamplingParams:
        """Sampling of an RL step from ``RolloutConfig`` (max_new_tokens = max_response_length)."""
        values: dict[str, object] = dict(
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            max_new_tokens=cfg.max_response_length, stop=tuple(cfg.stop), seed=cfg.seed)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sample:
    """One response: its tokens (EOS / stop token included when it stopped on one)."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    """Sampled-token logprobs, one per token (see the module docstring)."""
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"{len(self.token_ids)} tokens but {len(self.logprobs)} logprobs")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"finish_reason={self.finish_reason!r}")


@dataclass(frozen=True)
class RolloutOutput:
    """All samples of a ``generate`` call, prompt-major (a prompt's n samples contiguous)."""

    samples: list[Sample]
    n: int

    def __post_init__(self) -> None:
        if self.n < 1 or len(self.samples) % self.n:
            raise ValueError(f"{len(self.samples)} samples is not a multiple of n={self.n}")
        for k, s in enumerate(self.samples):
            if s.prompt_index != k // self.n:
                raise ValueError(f"sample {k} has prompt_index {s.prompt_index}, "
                                 f"expected {k // self.n}: groups must be contiguous")

    @property
    def num_prompts(self) -> int:
        return len(self.samples) // self.n

    def group(self, prompt_index: int) -> list[Sample]:
        return self.samples[prompt_index * self.n:(prompt_index + 1) * self.n]

    @property
    def finish_counts(self) -> dict[str, int]:
        counts = Counter(s.finish_reason for s in self.samples)
        return {"stop": counts["stop"], "length": counts["length"]}

    @property
    def num_truncated(self) -> int:
        """Responses cut at max_new_tokens (finish_reason ``"length"``)."""
        return self.finish_counts["length"]

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    def padded(self, pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``(token_ids [B, L] long, logprobs [B, L] float32, mask [B, L] bool)``."""
        length = max((len(s.token_ids) for s in self.samples), default=0)
        ids = torch.full((len(self.samples), length), pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(len(self.samples), length, dtype=torch.float32)
        mask = torch.zeros(len(self.samples), length, dtype=torch.bool)
        for row, s in enumerate(self.samples):
            k = len(s.token_ids)
            ids[row, :k] = torch.tensor(s.token_ids, dtype=torch.long)
            logprobs[row, :k] = torch.tensor(s.logprobs, dtype=torch.float32)
            mask[row, :k] = True
        return ids, logprobs, mask


@dataclass(frozen=True)
class SyncResult:
    """What a weight update moved; ``checksum`` feeds the logprob-gap monitor."""

    num_tensors: int
    num_bytes: int
    num_buckets: int
    checksum: int
    """Name-aware sum of the synced tensors' raw bits (weight_sync.bucket_checksum): equal
    iff (up to hash collisions) the same weights were sent."""
    seconds: float
    prefix_cache_reset: bool


@runtime_checkable
class RolloutBackend(Protocol):
    """A generation engine the RL loop samples from and syncs policy weights into."""

    supports_sleep: bool
    """True where ``sleep`` really frees accelerator memory (vLLM on GPUs)."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> RolloutOutput:
        """Sample ``n`` responses per prompt; see the module docstring for the layout."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncResult:
        """Load full (TP-gathered) tensors with HF parameter names, in place."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory while training runs (no-op without ``supports_sleep``)."""
        ...

    def wake_up(self) -> None:
        """Undo ``sleep`` (no-op without ``supports_sleep``)."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...


def validate_prompts(prompt_ids: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Shared argument checks; returns plain int lists."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    prompts = [[int(t) for t in p] for p in prompt_ids]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"empty prompts at indices {empty[:10]}")
    return prompts


def prompt_seed(seed: int | None, prompt_index: int, n: int) -> int | None:
    """Seed of prompt ``i``'s first sample; sample ``j`` uses ``+ j`` (vLLM's child seeds).

    Distinct per (prompt, sample) inside a call: with one seed for every prompt, vLLM draws
    the same noise for all prompts, which correlates their samples.
    """
    if seed is None:
        return None
    return (seed * 1_000_003 + prompt_index * n) % 2**62
