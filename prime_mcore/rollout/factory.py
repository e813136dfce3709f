"""Build the configured rollout backend from ``RolloutConfig``."""

from __future__ import annotations

import os
from typing import Any

from prime_mcore.config import RolloutConfig
from prime_mcore.rollout.base import RolloutBackend


def make_backend(cfg: RolloutConfig, model_path: str | os.PathLike[str],
                 **kwargs: Any) -> RolloutBackend:
    """``cfg.backend`` "vllm" -> ``VLLMBackend.from_config``; "hf" -> ``HFBackend`` loaded
    from the same checkpoint directory. ``kwargs`` go to the backend's constructor."""
    if cfg.backend == "vllm":
        from prime_mcore.rollout.vllm_backend import VLLMBackend

        return VLLMBackend.from_config(model_path, cfg, **kwargs)
    if cfg.backend == "hf":
        from prime_mcore.rollout.hf_backend import HFBackend

        return HFBackend.from_pretrained(model_path, **kwargs)
    raise ValueError(f"rollout.backend={cfg.backend!r} must be 'vllm' or 'hf'")
