"""HFBackend on one GPU (skipped without CUDA): the static KV cache (rollout.hf_cache=static)
gives the dynamic cache's tokens and never triggers transformers' auto torch.compile, which
on CUDA would otherwise compile the forward on the first generate call (minutes)."""

from __future__ import annotations

import pytest
import torch

from prime_mcore.rollout import HFBackend, SamplingParams
from tests.unit.rollout.tiny_model import build_tiny_checkpoint, load_hf, make_prompts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_static_cache_on_cuda_matches_dynamic_and_does_not_compile(tmp_path):
    from torch._dynamo.utils import counters

    model, tok = load_hf(build_tiny_checkpoint(tmp_path / "tiny"))
    model = model.to("cuda")
    dynamic = HFBackend(model, tok, max_batch_size=16)
    static = HFBackend(model, tok, max_batch_size=16, cache="static")
    prompts = make_prompts(tok, 4, min_len=3, max_len=20, seed=0)
    torch._dynamo.reset()
    counters.clear()
    for sp in (SamplingParams(temperature=0.0, max_new_tokens=8),
               SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)):
        a, b = dynamic.generate(prompts, 2, sp), static.generate(prompts, 2, sp)
        assert [s.token_ids for s in b.samples] == [s.token_ids for s in a.samples]
        gap = max(abs(x - y) for sa, sb in zip(a.samples, b.samples, strict=True)
                  for x, y in zip(sa.logprobs, sb.logprobs, strict=True))
        assert gap < 1e-3
    assert counters["stats"]["unique_graphs"] == 0
