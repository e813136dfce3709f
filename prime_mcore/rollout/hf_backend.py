"""transformers ``generate`` rollouts: the always-available CPU fallback and logprob reference.

Batched generation with the KV cache and left padding. Semantics follow ``VLLMBackend``
(base.py): EOS/stop tokens are kept at the end of a response, a stop string ends the
response at the token whose text completes it, EOS/stop take precedence over the length
limit, and logprobs are those of the processed (temperature/top-k/top-p) distribution.
Every sampling option is set explicitly, because ``generate`` fills unset (``None``)
options from the checkpoint's generation_config (e.g. a top_k=50 or repetition penalty).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from prime_mcore.config import HF_CACHES
from prime_mcore.rollout.base import (
    FinishReason,
    RolloutOutput,
    Sample,
    SamplingParams,
    SyncResult,
    validate_prompts,
)
from prime_mcore.rollout.weight_sync import (
    DEFAULT_BUCKET_BYTES,
    bucket_checksum,
    combine_checksums,
    iter_buckets,
)


class _StopStrings:
    """Stopping criterion: a row stops once its decoded response contains a stop string.

    Only the last few tokens are decoded: an occurrence completed by the newest token lies
    within the last ``bytes(stop) + 1`` tokens (every token is at least one byte), and
    earlier occurrences would have stopped the row already. Records, per row, the response
    length at the first hit.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prompt_len = prompt_len
        self.window = max(len(s.encode()) for s in self.stop) + 1
        self.hit_length: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_len:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        length = generated.shape[1]
        for row, text in enumerate(self.tokenizer.batch_decode(
                generated[:, -self.window:].tolist(), skip_special_tokens=True)):
            if row in self.hit_length or any(s in text for s in self.stop):
                self.hit_length.setdefault(row, length)
                done[row] = True
        return done


class HFBackend:
    """``RolloutBackend`` over a transformers causal LM."""

    supports_sleep = False

    def __init__(self, model: Any, tokenizer: Any | None = None, *,
                 max_batch_size: int = 64, cache: str = "dynamic",
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        """``model``: a transformers causal LM (e.g. the trainer's own module or a copy);
        ``tokenizer`` is needed only for stop strings; ``max_batch_size`` caps the
        sequences (prompts x n) per ``generate`` call; ``cache`` is the KV cache, "dynamic"
        or "static" (preallocated: no per-token concatenation)."""
        if cache not in HF_CACHES:
            raise ValueError(f"cache={cache!r} must be one of {list(HF_CACHES)}")
        self.model = model
        self.cache = cache
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.bucket_bytes = bucket_bytes
        self.eos_token_ids = _eos_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = model.generation_config.pad_token_id
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id: int = pad[0] if isinstance(pad, list) else int(pad)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", **kwargs: Any) -> HFBackend:
        from transformers import AutoModelForCausalLM

        from prime_mcore.data.tokenizer import load_tokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        return cls(model, load_tokenizer(path), **kwargs)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> RolloutOutput:
        prompts = validate_prompts(prompt_ids, n)
        if sampling.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer: HFBackend(model, tokenizer)")
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]  # prompt-major
        samples: list[Sample] = []
        device = self.model.device
        rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):  # leave the caller's RNG alone
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in range(0, len(rows), self.max_batch_size):
                samples.extend(self._generate_batch(rows[start:start + self.max_batch_size],
                                                    sampling))
        return RolloutOutput(samples=samples, n=n)

    def _generate_batch(self, rows: list[tuple[int, list[int]]],
                        sampling: SamplingParams) -> list[Sample]:
        from transformers import StoppingCriteriaList

        width = max(len(p) for _, p in rows)
        device = self.model.device
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (_, p) in enumerate(rows):  # left padding: every response starts at `width`
            input_ids[r, width - len(p):] = torch.tensor(p)
            attention_mask[r, width - len(p):] = 1
        stop_ids = list(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stop_ids += [t for t in self.eos_token_ids if t not in stop_ids]
        criteria = StoppingCriteriaList()
        stop_strings = None
        if sampling.stop:
            stop_strings = _StopStrings(self.tokenizer, sampling.stop, width)
            criteria.append(stop_strings)
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            generation_config=self._generation_config(sampling, stop_ids),
            stopping_criteria=criteria)
        generated = out.sequences[:, width:].cpu()
        # Sampled-token logprobs of the processed scores (the distribution sampled from).
        logprobs = torch.stack([
            torch.log_softmax(step.float(), dim=-1).gather(
                1, generated[:, t:t + 1].to(step.device)).squeeze(1).cpu()
            for t, step in enumerate(out.scores)], dim=1)
        stop_set = set(stop_ids)
        samples = []
        for r, (prompt_index, _) in enumerate(rows):
            tokens = generated[r].tolist()
            length, reason = len(tokens), "length"
            stop_at = next((k + 1 for k, t in enumerate(tokens) if t in stop_set), None)
            if stop_strings is not None and r in stop_strings.hit_length:
                hit = stop_strings.hit_length[r]
                stop_at = hit if stop_at is None else min(stop_at, hit)
            if stop_at is not None:
                length, reason = stop_at, "stop"
            elif length != sampling.max_new_tokens:
                raise RuntimeError(f"row {r} ended after {length} tokens without a stop")
            finish: FinishReason = "stop" if reason == "stop" else "length"
            samples.append(Sample(prompt_index=prompt_index, token_ids=tokens[:length],
                                  logprobs=logprobs[r, :length].tolist(),
                                  finish_reason=finish))
        return samples

    def _generation_config(self, sampling: SamplingParams, stop_ids: list[int]) -> Any:
        from transformers import GenerationConfig

        # Warpers only when sampling (HF warns about, and ignores, them for greedy).
        warpers: dict[str, Any] = {} if sampling.greedy else dict(
            temperature=sampling.temperature,
            top_k=sampling.top_k if sampling.top_k_enabled else 0,  # HF's default top_k is 50
            top_p=sampling.top_p, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
        return GenerationConfig(
            do_sample=not sampling.greedy, **warpers, repetition_penalty=1.0,
            no_repeat_ngram_size=0, min_new_tokens=0, max_new_tokens=sampling.max_new_tokens,
            num_beams=1,
            # An empty list (not None, which generate would fill from the checkpoint)
            # when EOS is ignored and no stop ids are given.
            eos_token_id=stop_ids, pad_token_id=self.pad_token_id,
            output_scores=True, return_dict_in_generate=True, use_cache=True,
            cache_implementation="static" if self.cache == "static" else None,
            # a static cache on CUDA would otherwise torch.compile the forward on first use
            disable_compile=True)

    # ------------------------------------------------------------------ weight sync
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncResult:
        """Copy HF-named tensors into the model; every name must be one of its keys."""
        start = time.perf_counter()
        known = set(self.model.state_dict().keys())
        num_tensors = num_bytes = num_buckets = 0
        checksum = 0
        for bucket in iter_buckets(named_tensors, self.bucket_bytes):
            unknown = [name for name, _ in bucket if name not in known]
            if unknown:
                raise KeyError(f"not parameters of the HF model: {unknown[:5]}")
            self.model.load_state_dict(dict(bucket), strict=False)
            checksum = combine_checksums((checksum, bucket_checksum(bucket)))
            num_buckets += 1
            num_tensors += len(bucket)
            num_bytes += sum(t.numel() * t.element_size() for _, t in bucket)
        return SyncResult(num_tensors=num_tensors, num_bytes=num_bytes, num_buckets=num_buckets,
                          checksum=checksum, seconds=time.perf_counter() - start,
                          prefix_cache_reset=True)  # no cache survives a generate call

    def sleep(self) -> None:
        """No-op: the HF backend holds no memory beyond the model itself."""

    def wake_up(self) -> None:
        """No-op (see ``sleep``)."""

    def close(self) -> None:
        self.model = None


def _eos_ids(model: Any, tokenizer: Any | None) -> list[int]:
    """EOS ids as vLLM collects them: the tokenizer's plus the generation config's."""
    ids: list[int] = []
    candidates = [getattr(tokenizer, "eos_token_id", None),
                  model.generation_config.eos_token_id, model.config.eos_token_id]
    for value in candidates:
        for t in value if isinstance(value, list) else [value]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    return ids
