"""VLLMBackend with vLLM's default engine-core process: the extension + bytes transport.

The engine-core process re-imports torch and vLLM: 13 s on an idle 2-core machine, 80-110 s
under load, hence the slow marker. The bytes transport itself is also driven in-process by
test_vllm_backend.py::test_sync_through_serialised_buckets.
"""

from __future__ import annotations

import pytest
import torch

from prime_mcore.rollout import LogprobGapMonitor, SamplingParams

from .tiny_model import MAX_POSITIONS, hf_forward_logprobs, load_hf, make_prompts

pytest.importorskip("vllm")


@pytest.mark.slow
def test_sync_across_processes(tiny_ckpt):
    from prime_mcore.rollout import VLLMBackend

    model, tok = load_hf(tiny_ckpt)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
        engine = VLLMBackend(tiny_ckpt, dtype="float32", enforce_eager=True,
                             kv_cache_memory_bytes=64 << 20, max_model_len=MAX_POSITIONS)
    try:
        assert not engine.in_process
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        result = engine.update_weights(model.state_dict().items())
        assert result.num_tensors == len(model.state_dict()) and result.prefix_cache_reset
        prompts = make_prompts(tok, 3)
        out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=10, seed=0))
        _, rollout, mask = out.padded()
        metrics = LogprobGapMonitor(1e-3).check(
            rollout, hf_forward_logprobs(model, prompts, out, 1.0), mask)
        assert metrics["rollout/logprob_gap_max"] < 1e-4
    finally:
        engine.close()
