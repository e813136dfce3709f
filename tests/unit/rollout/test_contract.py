"""Pure checks of the rollout contract: sampling options, output layout, weight buckets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from prime_mcore.config import RolloutConfig
from prime_mcore.rollout import RolloutOutput, Sample, SamplingParams, iter_buckets
from prime_mcore.rollout.base import prompt_seed, validate_prompts
from prime_mcore.rollout.vllm_backend import _check_checksums
from prime_mcore.rollout.weight_sync import (
    bucket_checksum,
    bucket_from_bytes,
    bucket_to_bytes,
    combine_checksums,
    tensor_checksum,
)


def _sample(i: int, n_tokens: int, reason: str = "length") -> Sample:
    return Sample(prompt_index=i, token_ids=list(range(n_tokens)),
                  logprobs=[-0.5] * n_tokens, finish_reason=reason)  # type: ignore[arg-type]


def test_sampling_params_from_config_and_validation():
    cfg = RolloutConfig(temperature=0.7, top_p=0.9, top_k=20, max_response_length=33,
                        stop=["</answer>"], seed=5)
    sp = SamplingParams.from_config(cfg, seed=9)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens, sp.stop, sp.seed) == (
        0.7, 0.9, 20, 33, ("</answer>",), 9)
    assert sp.top_k_enabled and not sp.greedy
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(top_k=-1).top_k_enabled
    assert hash(SamplingParams(stop=["a"])) == hash(SamplingParams(stop=("a",)))
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2),
                dict(max_new_tokens=0), dict(stop=("",))):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_output_groups_must_be_contiguous_and_counts():
    out = RolloutOutput(samples=[_sample(0, 3, "stop"), _sample(0, 2), _sample(1, 4),
                                 _sample(1, 1, "stop")], n=2)
    assert out.num_prompts == 2 and out.num_tokens == 10
    assert [s.token_ids for s in out.group(1)] == [[0, 1, 2, 3], [0]]
    assert out.finish_counts == {"stop": 2, "length": 2} and out.num_truncated == 2
    ids, logprobs, mask = out.padded(pad_token_id=-1)
    assert ids.shape == logprobs.shape == mask.shape == (4, 4)
    assert mask.sum(1).tolist() == [3, 2, 4, 1]
    assert ids[1].tolist() == [0, 1, -1, -1] and logprobs[1].tolist() == [-0.5, -0.5, 0, 0]
    with pytest.raises(ValueError, match="contiguous"):
        RolloutOutput(samples=[_sample(0, 1), _sample(1, 1), _sample(0, 1), _sample(1, 1)], n=2)
    with pytest.raises(ValueError, match="multiple"):
        RolloutOutput(samples=[_sample(0, 1)] * 3, n=2)
    with pytest.raises(ValueError):
        Sample(prompt_index=0, token_ids=[1, 2], logprobs=[0.0], finish_reason="stop")
    with pytest.raises(ValueError):
        Sample(prompt_index=0, token_ids=[1], logprobs=[0.0], finish_reason="abort")  # type: ignore[arg-type]


def test_prompt_validation_and_seeds():
    assert validate_prompts([(1, 2), [3]], 2) == [[1, 2], [3]]
    with pytest.raises(ValueError, match="empty"):
        validate_prompts([[1], []], 1)
    with pytest.raises(ValueError):
        validate_prompts([[1]], 0)
    assert prompt_seed(None, 3, 4) is None
    # Every (prompt, sample) of a call gets its own seed (sample j uses prompt seed + j).
    n = 4
    seeds = {prompt_seed(7, i, n) + j for i in range(50) for j in range(n)}  # type: ignore[operator]
    assert len(seeds) == 50 * n
    assert prompt_seed(7, 0, n) != prompt_seed(8, 0, n)


def test_iter_buckets_respects_size_and_order():
    tensors = [(f"w{i}", torch.zeros(10 * (i + 1))) for i in range(6)]  # 40..240 bytes
    buckets = list(iter_buckets(tensors, bucket_bytes=250))
    assert [name for b in buckets for name, _ in b] == [f"w{i}" for i in range(6)]
    for b in buckets:
        size = sum(t.numel() * 4 for _, t in b)
        assert size <= 250 or len(b) == 1
    assert [len(b) for b in buckets] == [3, 1, 1, 1]  # 40+80+120, 160, 200, 240
    assert [len(b) for b in iter_buckets(tensors, bucket_bytes=1)] == [1] * 6
    with pytest.raises(ValueError, match="twice"):
        list(iter_buckets([("a", torch.zeros(1)), ("a", torch.zeros(1))]))
    with pytest.raises(ValueError):
        list(iter_buckets(tensors, bucket_bytes=0))


def test_bucket_bytes_roundtrip_with_tied_and_viewed_tensors():
    from safetensors.torch import load, save

    emb = torch.randn(5, 3)
    base = torch.randn(4, 4)
    # An odd-sized bf16 tensor ahead of float32 ones leaves their offsets unaligned.
    bucket = [("half", torch.randn(3).to(torch.bfloat16)),
              ("embed.weight", emb), ("lm_head.weight", emb),  # tied: shared storage
              ("row", base[1]), ("col", base[:, 2]), ("scalar", torch.tensor(2.5)),
              ("empty", torch.zeros(0, 4)), ("ids", torch.arange(7))]
    blob = bucket_to_bytes(bucket)
    for back in (dict(bucket_from_bytes(blob)), dict(bucket_from_bytes(bytes(blob))),
                 load(bytes(blob))):  # a valid safetensors file, readable by the library
        assert sorted(back) == sorted(name for name, _ in bucket)  # the library sorts keys
        for name, t in bucket:
            assert back[name].dtype == t.dtype and back[name].shape == t.shape
            assert torch.equal(back[name], t), name
        assert bucket_checksum(list(back.items())) == bucket_checksum(bucket)
    # ...and the reader takes the library's own blobs (sorted keys, its own header).
    theirs = dict(bucket_from_bytes(save({"a": torch.randn(2, 3), "b": torch.ones(5)})))
    assert theirs["a"].shape == (2, 3) and torch.equal(theirs["b"], torch.ones(5))
    with pytest.raises(ValueError, match="dtype"):
        bucket_to_bytes([("c", torch.zeros(2, dtype=torch.complex64))])


def test_checksum_is_exact_bitwise_and_name_aware():
    t = torch.randn(1001)  # odd byte tails are covered by the bf16 case below
    words = t.view(torch.int32).to(torch.int64)
    assert tensor_checksum(t) == int(words.sum()) % 2**32
    flipped = t.clone()
    flipped.view(torch.int32)[500] ^= 1  # lowest mantissa bit of one element
    assert tensor_checksum(flipped) != tensor_checksum(t)
    # Layout and dtype corner cases: non-contiguous, unaligned views, odd bf16 sizes.
    m = torch.randn(6, 7)
    assert tensor_checksum(m.t()) == tensor_checksum(m.t().contiguous())
    h = torch.randn(11).to(torch.bfloat16)
    assert tensor_checksum(h[1:]) == tensor_checksum(h[1:].clone())
    assert tensor_checksum(h) != tensor_checksum(h[1:])
    # Buckets combine additively, so the total does not depend on how they were cut...
    named = [(f"w{i}", torch.randn(5 + i)) for i in range(6)]
    whole = bucket_checksum(named)
    assert combine_checksums(bucket_checksum(b) for b in iter_buckets(named, 40)) == whole
    # ...but it does depend on which name holds which tensor.
    swapped = [("w1", named[0][1]), ("w0", named[1][1])] + named[2:]
    assert bucket_checksum(swapped) != whole
    assert 0 <= whole < 2**52 and float(whole) == whole


def test_transport_checksum_mismatch_raises():
    _check_checksums(7, [7, 7])
    with pytest.raises(RuntimeError, match="mismatch"):
        _check_checksums(7, [7, 8])


def test_import_without_vllm_or_megatron():
    """The package imports with vllm absent, and never imports megatron."""
    code = ("import sys; sys.modules['vllm'] = None\n"
            "import prime_mcore.rollout as r\n"
            "assert 'megatron' not in sys.modules and 'megatron.core' not in sys.modules\n"
            "print(r.VLLMBackend.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "VLLMBackend"
