"""Build the configured rollout backend from ``RolloutConfig``."""

from __future__ import annotations

import os
from typing import Any

from prime_mcore.config import RolloutConfig
from prime_mcore.rollout.base import RolloutBackend

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}  # model.params_dtype -> torch/vLLM name


def make_backend(cfg: RolloutConfig, model_path: str | os.PathLike[str], *,
                 params_dtype: str | None = None, **kwargs: Any) -> RolloutBackend:
    """``cfg.backend`` "vllm" -> ``VLLMBackend.from_config``; "hf" -> ``HFBackend`` loaded
    from the same checkpoint directory. ``kwargs`` go to the backend's constructor.

    ``params_dtype`` ("fp32"/"bf16", the trainer's ``model.params_dtype``) makes vLLM generate
    in the trainer's precision: left to itself vLLM downcasts an fp32 checkpoint to bf16,
    which widens the rollout/trainer log-prob gap and, on CPUs without bf16 units, is
    several times slower than fp32. The HF backend likewise loads in that precision, and on
    the current CUDA device when there is one (rollouts on the trainer's GPU, not its CPU)."""
    if cfg.backend == "vllm":
        from prime_mcore.rollout.vllm_backend import VLLMBackend

        if params_dtype is not None:
            kwargs.setdefault("dtype", DTYPE_NAMES[params_dtype])
        return VLLMBackend.from_config(model_path, cfg, **kwargs)
    if cfg.backend == "hf":
        import torch

        from prime_mcore.rollout.hf_backend import HFBackend

        kwargs.setdefault("dtype", getattr(torch, DTYPE_NAMES[params_dtype or "fp32"]))
        kwargs.setdefault("device", torch.device("cuda", torch.cuda.current_device())
                          if torch.cuda.is_available() else "cpu")
        kwargs.setdefault("max_batch_size", cfg.hf_max_batch_size)
        kwargs.setdefault("cache", cfg.hf_cache)
        return HFBackend.from_pretrained(model_path, **kwargs)
    raise ValueError(f"rollout.backend={cfg.backend!r} must be 'vllm' or 'hf'")
