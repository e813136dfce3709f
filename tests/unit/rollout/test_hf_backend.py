"""HFBackend (transformers generate): layout, seeds, logprobs, finish reasons, weight update."""

from __future__ import annotations

import pytest
import torch

from prime_mcore.config import RolloutConfig
from prime_mcore.rollout import HFBackend, RolloutBackend, SamplingParams, make_backend
from prime_mcore.rollout.weight_sync import bucket_checksum

from .tiny_model import hf_forward_logprobs, load_hf, make_prompts, swapped_rows


@pytest.fixture(scope="module")
def hf(tiny_ckpt):
    model, tok = load_hf(tiny_ckpt)
    return HFBackend(model, tok, max_batch_size=8), tok


def test_is_a_rollout_backend(hf):
    backend, _ = hf
    assert isinstance(backend, RolloutBackend) and backend.supports_sleep is False


def test_n_samples_grouped_and_contiguous(hf):
    backend, tok = hf
    prompts = make_prompts(tok, 5)
    out = backend.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=0))
    assert [s.prompt_index for s in out.samples] == [i for i in range(5) for _ in range(3)]
    # Samples of a group differ (sampling), and chunking (max_batch_size=8 < 15 rows)
    # did not reorder them: each group continues its own prompt (checked via logprobs).
    assert len({tuple(s.token_ids) for s in out.group(0)}) > 1
    ref = hf_forward_logprobs(backend.model, prompts, out, 1.0)
    _, lp, mask = out.padded()
    assert (ref - lp)[mask].abs().max() < 1e-4


def test_fixed_seed_reproduces_and_leaves_global_rng_alone(hf):
    backend, tok = hf
    prompts = make_prompts(tok, 3)
    sp = SamplingParams(max_new_tokens=8, seed=123)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = backend.generate(prompts, 2, sp)
    assert torch.equal(torch.get_rng_state(), state)
    b = backend.generate(prompts, 2, sp)
    c = backend.generate(prompts, 2, sp.replace(seed=124))
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_teacher_forced_forward(hf, temperature):
    """Left-padded batched generation reports log_softmax(logits / T) of sampled tokens."""
    backend, tok = hf
    prompts = make_prompts(tok, 4, min_len=3, max_len=30, seed=1)
    out = backend.generate(prompts, 2, SamplingParams(temperature=temperature,
                                                      max_new_tokens=12, seed=5))
    ref = hf_forward_logprobs(backend.model, prompts, out, temperature)
    _, lp, mask = out.padded()
    assert (ref - lp)[mask].abs().max() < 1e-4


def test_finish_reasons_stop_ids_strings_and_length(hf):
    backend, tok = hf
    prompts = make_prompts(tok, 3, seed=2)
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    free = backend.generate(prompts, 1, greedy)
    assert free.finish_counts == {"stop": 0, "length": 3} and free.num_truncated == 3
    assert all(len(s.token_ids) == 16 for s in free.samples)

    # A stop token id: the response ends at its first occurrence, the token kept.
    first = free.samples[0].token_ids
    stop_id = first[5]
    cut = first.index(stop_id) + 1
    out = backend.generate(prompts[:1], 1, greedy.replace(stop_token_ids=(stop_id,)))
    assert out.samples[0].token_ids == first[:cut] and out.samples[0].finish_reason == "stop"

    # A stop string: ends at the token whose text completes it (token kept).
    text = tok.decode(first)
    stop = text[6:9]
    expected = next(k for k in range(1, 17) if stop in tok.decode(first[:k]))
    out = backend.generate(prompts[:1], 1, greedy.replace(stop=(stop,)))
    assert out.samples[0].token_ids == first[:expected]
    assert out.samples[0].finish_reason == "stop" and out.num_truncated == 0



def test_eos_is_kept_and_ignore_eos_continues(hf):
    backend, tok = hf
    prompts = make_prompts(tok, 1, seed=3)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    first = backend.generate(prompts, 1, greedy).samples[0].token_ids
    eos = backend.eos_token_ids[0]
    k = next(k for k in range(1, 12) if first[k] not in first[:k] and eos not in first[:k + 1])
    with swapped_rows(backend.model.lm_head.weight, first[k], eos):  # EOS becomes argmax at k
        out = backend.generate(prompts, 1, greedy)
        assert out.samples[0].token_ids == first[:k] + [eos]
        assert out.samples[0].finish_reason == "stop"
        cont = backend.generate(prompts, 1, greedy.replace(ignore_eos=True)).samples[0]
        assert cont.token_ids[:k + 1] == first[:k] + [eos]
        assert len(cont.token_ids) == 12 and cont.finish_reason == "length"


def test_update_weights_copies_and_checks_names(hf):
    backend, _ = hf
    model = backend.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = {k: v + 0.01 for k, v in before.items()}
    result = backend.update_weights(iter(new.items()))
    try:
        for k, v in model.state_dict().items():
            assert torch.equal(v, new[k]), k
        assert result.num_tensors == len(new)
        assert result.checksum == bucket_checksum(new.items())
        with pytest.raises(KeyError, match="nonexistent"):
            backend.update_weights([("model.nonexistent.weight", torch.zeros(1))])
    finally:
        backend.update_weights(before.items())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_make_backend_from_config(tiny_ckpt):
    cfg = RolloutConfig(backend="hf", n_samples=2, max_response_length=5, seed=3)
    backend = make_backend(cfg, tiny_ckpt)
    assert isinstance(backend, HFBackend) and backend.tokenizer is not None
    out = backend.generate([[5, 6, 7]], cfg.n_samples, SamplingParams.from_config(cfg))
    assert len(out.samples) == 2 and all(len(s.token_ids) <= 5 for s in out.samples)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_static_cache_samples_the_same_tokens(hf, temperature):
    """cache="static" (the demo's faster setting) is the same computation: same tokens for
    the same seed on ragged left-padded prompts, log-probs equal to the teacher-forced ones."""
    dynamic, tok = hf
    static = HFBackend(dynamic.model, tok, max_batch_size=dynamic.max_batch_size, cache="static")
    prompts = make_prompts(tok, 5, min_len=3, max_len=30, seed=2)
    sp = SamplingParams(temperature=temperature, max_new_tokens=10, seed=7)
    a, b = dynamic.generate(prompts, 3, sp), static.generate(prompts, 3, sp)
    assert [s.token_ids for s in b.samples] == [s.token_ids for s in a.samples]
    assert [s.finish_reason for s in b.samples] == [s.finish_reason for s in a.samples]
    ref = hf_forward_logprobs(static.model, prompts, b, temperature)
    _, lp, mask = b.padded()
    assert (ref - lp)[mask].abs().max() < 1e-4
    assert static._generation_config(sp, []).cache_implementation == "static"
    assert dynamic._generation_config(sp, []).cache_implementation is None
    assert static._generation_config(sp, []).disable_compile  # no surprise compile on CUDA
    with pytest.raises(ValueError, match="cache='paged'"):
        HFBackend(dynamic.model, tok, cache="paged")


def test_make_backend_passes_the_hf_options(tiny_ckpt):
    cfg = RolloutConfig(backend="hf", hf_max_batch_size=96, hf_cache="static")
    backend = make_backend(cfg, tiny_ckpt)
    assert (backend.max_batch_size, backend.cache) == (96, "static")
    assert backend.model.dtype == torch.float32
    # the trainer's precision, on its device (the GPU when there is one)
    bf16 = make_backend(cfg, tiny_ckpt, params_dtype="bf16")
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="hf_cache"):
        RolloutConfig(backend="hf", hf_cache="paged")
    with pytest.raises(ValueError, match="hf_max_batch_size"):
        RolloutConfig(backend="hf", hf_max_batch_size=0)
