"""Rank 0's side of the loop: the rollout backend, the verifier, weight sync and eval.

The backend starts from an HF export of the policy engine (``<run>/rollout_init``), so any
starting point (random, HF, SFT dist checkpoint) reaches vLLM/HF the same way. Every sync
streams the policy's canonical weights through the HF mapping; on non-zero ranks the
stream is consumed only to keep the collective gathers in step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prime_mcore.convert.engine_io import engine_hf_tensors, export_engine_to_hf
from prime_mcore.data.schema import RLExample
from prime_mcore.trainers.common import (
    PromptTokenizer,
    barrier,
    broadcast,
    hf_special_ids,
    is_rank0,
)


class RolloutSide:
    """Backend + verifier on rank 0; ``sync`` and ``evaluate`` are collective."""

    def __init__(self, cfg: Any, policy_engine: Any, tokenizer: Any, tokenizer_dir: Path,
                 run_dir: Path, *, verifier_workers: int = 2) -> None:
        from prime_mcore.rewards import VerifierPool
        from prime_mcore.rollout import make_backend

        self.model_cfg, self.engine, self.rollout_cfg = cfg.model, policy_engine, cfg.rollout
        init_dir = run_dir / "rollout_init"
        export_engine_to_hf(policy_engine, cfg.model, init_dir, writer=is_rank0(),
                            tokenizer_dir=tokenizer_dir, base_config=hf_special_ids(tokenizer),
                            force=True)
        barrier()
        self.backend = (make_backend(cfg.rollout, init_dir, params_dtype=cfg.model.params_dtype)
                        if is_rank0() else None)
        self.pool = VerifierPool(verifier_workers) if is_rank0() else None

    def verify(self, items: list[tuple[str, str, str]]) -> list:
        return self.pool.score(items)

    def sync(self) -> dict[str, float]:
        """Stream the policy's weights into the backend (prefix cache reset included)."""
        start = time.perf_counter()
        named = engine_hf_tensors(self.engine, self.model_cfg)
        if self.backend is None:
            for _ in named:
                pass
            return broadcast(None)
        res = self.backend.update_weights(named)
        return broadcast({"rollout/sync_seconds": time.perf_counter() - start,
                          "rollout/weights_checksum": res.checksum,
                          "rollout/sync_bytes": float(res.num_bytes)})

    def evaluate(self, examples: Sequence[RLExample], prompts: PromptTokenizer) -> dict[str, float]:
        """Greedy pass@1 on ``examples`` (the held-out split), from rank 0."""
        if not examples:
            return {}
        result = None
        if self.backend is not None:
            from prime_mcore.rollout import SamplingParams

            sampling = SamplingParams(temperature=0.0,
                                      max_new_tokens=self.rollout_cfg.max_response_length)
            out = self.backend.generate([prompts.ids(ex.prompt) for ex in examples], 1, sampling)
            items = [(ex.ability, prompts.decode(s.token_ids), ex.ground_truth)
                     for ex, s in zip(examples, out.samples)]
            scores = [r.score for r in self.verify(items)]
            result = {"eval/accuracy": sum(scores) / len(scores),
                      "eval/truncation_rate": out.num_truncated / len(scores)}
        return broadcast(result)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        if self.pool is not None:
            self.pool.close()
