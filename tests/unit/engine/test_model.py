"""Model builders against HF transformers, and their configuration errors (world 1, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prime_mcore.config import ModelConfig, ParallelConfig
from prime_mcore.engine import build_engine
from prime_mcore.engine.model import padded_vocab_size, resolve_impl
from tests.unit.engine.cases import MODELS, VOCAB, make_batch
from tests.unit.engine.hf_reference import hf_logprobs, hf_model, to_mcore


@pytest.fixture(scope="module", params=sorted(MODELS))
def arch_pair(request):
    """(arch, reference engine holding the HF model's weights, the HF model)."""
    cfg = MODELS[request.param]
    hf = hf_model(cfg, seed=11)
    engine = build_engine(cfg, ParallelConfig(), None, role="reference", seed=0)
    engine.load_state(to_mcore(hf, cfg).items())
    return request.param, engine, hf


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_hf(arch_pair, temperature):
    _, engine, hf = arch_pair
    batch = make_batch(rows=6, prompt=7, response=9, seed=4)
    ours = engine.logprobs(batch, micro_batch_size=4, temperature=temperature)  # 6 -> 8 rows
    theirs = hf_logprobs(hf, batch, temperature=temperature)
    assert ours.shape == (6, 9)
    assert torch.all(ours[batch["attention_mask"][:, 7:] == 0] == 0)
    assert (ours - theirs).abs().max() < 1e-5


def test_export_is_the_full_unpadded_model(arch_pair):
    arch, engine, hf = arch_pair
    exported = dict(engine.export_weights())
    expected = to_mcore(hf, MODELS[arch])
    assert exported.keys() == expected.keys()
    assert exported["embedding.word_embeddings.weight"].shape[0] == VOCAB
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_load_state_rejects_unknown_and_missing_names(arch_pair):
    arch, engine, hf = arch_pair
    weights = to_mcore(hf, MODELS[arch])
    with pytest.raises(ValueError, match="unknown parameter 'decoder.layers.99"):
        engine.load_state([("decoder.layers.99.mlp.linear_fc2.weight", torch.zeros(1))])
    weights.pop("decoder.final_layernorm.weight")
    with pytest.raises(ValueError, match="decoder.final_layernorm.weight"):
        engine.load_state(weights.items())


def test_reference_role_is_frozen(arch_pair):
    _, engine, _ = arch_pair
    assert not engine.trainable
    params = [p for m in engine._modules for p in m.parameters()]
    assert params and not any(p.requires_grad for p in params)
    assert all(p.grad is None for p in params)
    with pytest.raises(RuntimeError, match="frozen"):
        engine.train_step(lambda logp, mb: (logp.sum(), {}), make_batch(rows=2, prompt=3,
                          response=3, seed=0), micro_batch_size=2, normalizer="token")


def test_padded_vocab_size():
    assert padded_vocab_size(250, 128, 1) == 256
    assert padded_vocab_size(256, 128, 2) == 256
    assert padded_vocab_size(300, 128, 2) == 512
    assert padded_vocab_size(152064, 128, 4) == 152064


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors")
def test_config_errors_without_cuda():
    cfg = MODELS["qwen2"]
    assert resolve_impl(cfg, ParallelConfig()) == "local"
    with pytest.raises(ValueError, match="fp8='e4m3' needs Transformer Engine on CUDA"):
        resolve_impl(dataclasses.replace(cfg, fp8="e4m3"), ParallelConfig())
    with pytest.raises(ValueError, match="transformer_impl='transformer_engine' needs CUDA"):
        resolve_impl(dataclasses.replace(cfg, transformer_impl="transformer_engine"),
                     ParallelConfig())
    with pytest.raises(ValueError, match="sequence_parallel"):
        resolve_impl(cfg, ParallelConfig(tp=2, sequence_parallel=True))


def test_role_and_optimizer_must_agree():
    cfg: ModelConfig = MODELS["qwen2"]
    with pytest.raises(ValueError, match="role='critic'"):
        build_engine(cfg, ParallelConfig(), None, role="critic", seed=0)
    with pytest.raises(ValueError, match="role='policy'"):
        build_engine(cfg, ParallelConfig(), None, role="policy", seed=0)
