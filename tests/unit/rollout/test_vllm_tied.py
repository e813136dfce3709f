"""Weight sync into a model with tied input/output embeddings (Qwen2.5-0.5B, SmolLM2 style).

vLLM's loaders route the tied weight to the input embedding only; on CPU the lm_head keeps
its own packed GEMM copy, so a sync must re-derive it (weight_sync._reprocess_stale_embeddings).
"""

from __future__ import annotations

import pytest

from prime_mcore.rollout import HFBackend, LogprobGapMonitor, SamplingParams

from .tiny_model import (
    MAX_POSITIONS,
    build_tiny_checkpoint,
    hf_forward_logprobs,
    load_hf,
    make_prompts,
    train_step,
)

pytest.importorskip("vllm")


def test_sync_tied_embeddings(tmp_path_factory):
    from prime_mcore.rollout import VLLMBackend

    ckpt = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tied"), seed=1, tied=True)
    model, tok = load_hf(ckpt)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine = VLLMBackend(ckpt, dtype="float32", enforce_eager=True,
                             kv_cache_memory_bytes=64 << 20, max_model_len=MAX_POSITIONS)
    try:
        prompts = make_prompts(tok, 4, seed=3)
        sp = SamplingParams(max_new_tokens=12, seed=0)
        greedy = SamplingParams(temperature=0, max_new_tokens=16)
        monitor = LogprobGapMonitor(1e-3)
        # Unique parameters (lm_head omitted, as the converter streams a tied model), then
        # the full state dict (lm_head.weight present: Qwen2's loader skips it).
        for named in (lambda: dict(model.named_parameters()).items(),
                      lambda: model.state_dict().items()):
            train_step(model, prompts)
            engine.update_weights(named())
            out = engine.generate(prompts, 2, sp)
            _, rollout, mask = out.padded()
            metrics = monitor.check(rollout, hf_forward_logprobs(model, prompts, out, 1.0), mask)
            assert metrics["rollout/logprob_gap_max"] < 1e-4
            assert [s.token_ids for s in engine.generate(prompts, 1, greedy).samples] == [
                s.token_ids for s in HFBackend(model, tok).generate(prompts, 1, greedy).samples]
    finally:
        engine.close()
