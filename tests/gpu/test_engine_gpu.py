"""The engine on one GPU (skipped without CUDA): the local (pure torch) spec and the
Transformer Engine spec in bf16, resume, and one FP8 step.

References are HF transformers on the same weights and, for TE, the local spec; bf16
tolerances are loose by nature (about 3 significant digits). Run: pytest tests/gpu -m gpu.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prime_mcore.config import ModelConfig, OptimConfig, ParallelConfig
from tests.unit.engine.cases import make_batch, sequence_entropy_loss, token_loss

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Qwen2-shaped, dimensions multiples of 16 (FP8 GEMMs need them).
CFG = ModelConfig(arch="qwen2", vocab_size=1000, hidden_size=256, ffn_hidden_size=704,
                  num_layers=4, num_attention_heads=8, num_query_groups=2,
                  max_position_embeddings=256, rope_theta=1e6, qkv_bias=True,
                  tie_word_embeddings=True, params_dtype="bf16")
OPTIM = OptimConfig(lr=1e-4, min_lr=1e-5, weight_decay=0.01, clip_grad=1.0)


def _te_or_skip() -> None:
    from prime_mcore.engine.model import te_available

    if not te_available():
        pytest.skip("Transformer Engine is not installed")


def _engine(impl: str, optim: OptimConfig | None = None, **model):
    from prime_mcore.engine import build_engine

    cfg = dataclasses.replace(CFG, transformer_impl=impl, **model)
    return build_engine(cfg, ParallelConfig(), optim,
                        role="reference" if optim is None else "policy", seed=0, total_steps=8)


@pytest.fixture(scope="module")
def weights():
    from tests.unit.engine.hf_reference import hf_model, to_mcore

    hf = hf_model(dataclasses.replace(CFG, params_dtype="fp32"), seed=1)
    return hf, to_mcore(hf, CFG)


@pytest.fixture(scope="module")
def batch():
    return make_batch(rows=8, prompt=24, response=40, vocab=CFG.vocab_size, seed=0)


def _nll(logp: torch.Tensor, mb: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    return -(logp * mb["response_mask"]).sum(), {}


def _impl_or_skip(impl: str) -> None:
    if impl == "transformer_engine":
        _te_or_skip()


@pytest.mark.parametrize("impl", ["local", "transformer_engine"])
def test_bf16_logprobs_match_hf(weights, batch, impl):
    _impl_or_skip(impl)
    from tests.unit.engine.hf_reference import hf_logprobs

    hf, named = weights
    engine = _engine(impl)
    engine.load_state(named.items())
    logp = engine.logprobs(batch, micro_batch_size=4)
    assert logp.device == batch["response_mask"].device  # a CPU batch gets CPU log-probs
    gap = (logp - hf_logprobs(hf, batch))[batch["response_mask"].bool()].abs()
    assert gap.mean() < 3e-2
    assert gap.max() < 0.3
    on_gpu = engine.logprobs({k: v.cuda() for k, v in batch.items()}, micro_batch_size=4)
    assert on_gpu.device.type == "cuda"  # and a GPU batch gets GPU log-probs
    assert torch.allclose(on_gpu.cpu(), logp, atol=1e-5)


def test_te_bf16_logprobs_match_local(weights, batch):
    _te_or_skip()
    _, named = weights
    te, local = _engine("transformer_engine"), _engine("local")
    te.load_state(named.items())
    local.load_state(named.items())
    mask = batch["response_mask"].bool()
    te_logp = te.logprobs(batch, micro_batch_size=4).cpu()
    assert (te_logp - local.logprobs(batch, micro_batch_size=4).cpu())[mask].abs().mean() < 2e-2


def test_te_bf16_train_step_matches_local(weights, batch):
    _te_or_skip()
    _, named = weights
    metrics = {}
    for impl in ("transformer_engine", "local"):
        engine = _engine(impl, OPTIM)
        engine.load_state(named.items())
        metrics[impl] = engine.train_step(token_loss, batch, micro_batch_size=4,
                                          normalizer="token")
    te, local = metrics["transformer_engine"], metrics["local"]
    assert te["loss"] == pytest.approx(local["loss"], rel=2e-2)
    assert te["grad_norm"] == pytest.approx(local["grad_norm"], rel=5e-2)


def test_bf16_entropy_step_matches_hf(weights, batch):
    """The entropy bonus on the GPU (bf16 logits, fp32 entropy): the per-sequence mean entropy
    the step reports equals HF's fp32 one to bf16 precision, and the step is finite."""
    hf, named = weights
    engine = _engine("local", OPTIM)
    engine.load_state(named.items())
    metrics = engine.train_step(sequence_entropy_loss, batch, micro_batch_size=4,
                                normalizer="sequence", entropy=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = batch["response_mask"].shape[1]
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits[:, -width - 1:-1].float(), -1)
    resp = batch["response_mask"].float()
    per_token = -(logp.exp() * logp).sum(-1) * resp
    expected = float((per_token.sum(1) / resp.sum(1).clamp(min=1)).mean())
    assert metrics["entropy"] == pytest.approx(expected, rel=2e-2)
    assert torch.isfinite(torch.tensor(metrics["grad_norm"])) and metrics["grad_norm"] > 0


def test_local_bf16_training_lowers_the_loss(weights, batch):
    """Adam on fp32 master weights through Megatron's CUDA optimizer path (not the CPU one)."""
    _, named = weights
    engine = _engine("local", dataclasses.replace(OPTIM, lr=1e-3))
    engine.load_state(named.items())
    losses = [engine.train_step(_nll, batch, micro_batch_size=4,
                                normalizer="token")["loss"] for _ in range(6)]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("impl", ["local", "transformer_engine"])
def test_bf16_resume(weights, batch, tmp_path, impl):
    _impl_or_skip(impl)
    _, named = weights
    engine = _engine(impl, OPTIM)
    engine.load_state(named.items())
    engine.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    engine.save(tmp_path / "ck", step=1)
    engine.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    uninterrupted = dict(engine.export_weights())
    resumed = _engine(impl, OPTIM)
    assert resumed.load(tmp_path / "ck")[0] == 1
    resumed.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    after = dict(resumed.export_weights())
    # bf16 weights from fp32 master weights: equal unless a kernel is non-deterministic
    assert max(float((after[k].float() - uninterrupted[k].float()).abs().max())
               for k in after) < 1e-3


def test_one_fp8_step(weights, batch):
    _te_or_skip()
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9 (Ada/Hopper)")
    _, named = weights
    engine = _engine("transformer_engine", OPTIM, fp8="hybrid", fp8_recipe="delayed")
    engine.load_state(named.items())
    before = dict(engine.export_weights())
    metrics = engine.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    assert all(map(torch.isfinite, map(torch.tensor, (metrics["loss"], metrics["grad_norm"]))))
    after = dict(engine.export_weights())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logp = engine.logprobs(batch, micro_batch_size=4)
    assert torch.isfinite(logp).all()
