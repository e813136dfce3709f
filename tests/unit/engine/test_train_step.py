"""train_step on one process: textbook equivalence, normalizers, schedules, input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prime_mcore.config import OptimConfig, ParallelConfig
from prime_mcore.engine import build_engine
from tests.unit.engine.cases import (
    ENTROPY_COEF,
    LOSSES,
    MODELS,
    OPTIM,
    make_batch,
    sequence_entropy_loss,
    token_loss,
)
from tests.unit.engine.hf_reference import hf_model, to_mcore

CFG = MODELS["qwen2"]


def _policy(optim: OptimConfig = OPTIM, *, total_steps: int = 4, hf=None):
    engine = build_engine(CFG, ParallelConfig(), optim, role="policy", seed=0,
                          total_steps=total_steps)
    if hf is not None:
        engine.load_state(to_mcore(hf, CFG).items())
    return engine


def _hf_step(hf, batch, normalizer: str, optim: OptimConfig) -> float:
    """The same step written out with HF + torch AdamW (decay on matrices only, as Megatron)."""
    width = batch["response_mask"].shape[1]
    mask = batch["attention_mask"]
    logits = hf(input_ids=batch["input_ids"], attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = torch.log_softmax(logits[:, -width - 1:-1], -1)
    logp = logp.gather(-1, batch["input_ids"][:, -width:, None]).squeeze(-1) * mask[:, -width:]
    loss_sum, _ = LOSSES[normalizer](logp, batch)
    count = batch["response_mask"].sum() if normalizer == "token" else len(mask)
    (loss_sum / count).backward()
    params = [p for p in hf.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                      eps=optim.adam_eps).step()
    return float(grad_norm)


@pytest.mark.parametrize("normalizer", ["token", "sequence"])
def test_step_equals_textbook_adamw(normalizer):
    optim = dataclasses.replace(OPTIM, lr_schedule="constant", warmup_steps=0)
    hf = hf_model(CFG, seed=5).train()
    engine = _policy(optim, hf=hf)
    batch = make_batch(rows=8, prompt=6, response=8, seed=9)
    metrics = engine.train_step(LOSSES[normalizer], batch, micro_batch_size=4,
                                normalizer=normalizer)
    grad_norm = _hf_step(hf, batch, normalizer, optim)
    assert metrics["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    after = dict(engine.export_weights())
    expected = to_mcore(hf, CFG)
    assert max(float((after[k] - expected[k]).abs().max()) for k in expected) < 1e-6


def test_entropy_step_equals_textbook():
    """``entropy=True``: the loss gets each response position's entropy at the temperature
    (padded vocabulary rows excluded), and its gradient is the textbook one."""
    temperature = 0.7
    optim = dataclasses.replace(OPTIM, lr_schedule="constant", warmup_steps=0)
    hf = hf_model(CFG, seed=5).train()
    engine = _policy(optim, hf=hf)
    batch = make_batch(rows=6, prompt=5, response=7, seed=4)
    metrics = engine.train_step(sequence_entropy_loss, batch, micro_batch_size=3,
                                normalizer="sequence", temperature=temperature, entropy=True)

    width, mask = batch["response_mask"].shape[1], batch["attention_mask"]
    logits = hf(input_ids=batch["input_ids"], attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -width - 1:-1]
    logp_all = torch.log_softmax(logits / temperature, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) * mask[:, -width:]
    logp = logp_all.gather(-1, batch["input_ids"][:, -width:, None]).squeeze(-1) * mask[:, -width:]
    loss_sum, parts = sequence_entropy_loss(logp, batch, entropy)
    assert metrics["entropy"] == pytest.approx(parts["entropy"].item() / 6, rel=1e-5)
    assert 0 < metrics["entropy"] < torch.log(torch.tensor(float(CFG.vocab_size)))
    assert metrics["loss"] == pytest.approx(loss_sum.item() / 6, rel=1e-5)
    (loss_sum / 6).backward()
    params = list(hf.parameters())
    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)
    assert metrics["grad_norm"] == pytest.approx(float(grad_norm), rel=1e-5)
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                      eps=optim.adam_eps).step()
    after, expected = dict(engine.export_weights()), to_mcore(hf, CFG)
    assert max(float((after[k] - expected[k]).abs().max()) for k in expected) < 1e-6
    assert ENTROPY_COEF > 0  # the bonus is in the loss (else this test proves nothing new)


@pytest.mark.parametrize("normalizer", ["token", "sequence"])
def test_micro_batch_size_does_not_change_the_step(normalizer):
    batch = make_batch(rows=8, prompt=6, response=8, seed=3)
    results = []
    for micro_batch_size in (8, 2):
        engine = _policy()
        metrics = engine.train_step(LOSSES[normalizer], batch, micro_batch_size=micro_batch_size,
                                    normalizer=normalizer)
        results.append((metrics, dict(engine.export_weights())))
    (m8, w8), (m2, w2) = results
    assert max(float((w8[k] - w2[k]).abs().max()) for k in w8) < 1e-7
    for key in ("loss", "grad_norm", "clipfrac", "denominator"):
        assert m8[key] == pytest.approx(m2[key], rel=1e-6)


def test_loss_and_denominators_are_the_documented_ones():
    batch = make_batch(rows=6, prompt=5, response=7, seed=8)
    engine = _policy()
    logp = engine.logprobs(batch, micro_batch_size=6)
    tokens = batch["response_mask"].sum().item()
    token_sum, token_metrics = LOSSES["token"](logp, batch)
    seq_sum, _ = LOSSES["sequence"](logp, batch)
    metrics = engine.train_step(LOSSES["token"], batch, micro_batch_size=3, normalizer="token")
    assert metrics["denominator"] == tokens
    assert metrics["loss"] == pytest.approx(token_sum.item() / tokens, rel=1e-5)
    assert metrics["clipfrac"] == pytest.approx(token_metrics["clipfrac"].item() / tokens, rel=1e-6)
    engine = _policy()
    metrics = engine.train_step(LOSSES["sequence"], batch, micro_batch_size=2,
                                normalizer="sequence")
    assert metrics["denominator"] == 6
    assert metrics["loss"] == pytest.approx(seq_sum.item() / 6, rel=1e-5)


@pytest.mark.parametrize(("schedule", "warmup", "expected"), [
    ("constant", 2, [0.5e-3, 1e-3, 1e-3, 1e-3]),
    # cosine from lr at the end of warm-up (step 1) to min_lr at total_steps (4)
    ("cosine", 1, [1e-3, 1e-4 + 0.9e-3 * 0.75, 1e-4 + 0.9e-3 * 0.25, 1e-4]),
])
def test_lr_schedules(schedule, warmup, expected):
    optim = OptimConfig(lr=1e-3, min_lr=1e-4, lr_schedule=schedule, warmup_steps=warmup)
    engine = _policy(optim, total_steps=4)
    batch = make_batch(rows=2, prompt=3, response=3, seed=1)
    lrs = [engine.train_step(token_loss, batch, micro_batch_size=2, normalizer="token")["lr"]
           for _ in expected]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_cosine_needs_total_steps():
    optim = OptimConfig(lr=1e-3, lr_schedule="cosine", warmup_steps=2)
    with pytest.raises(ValueError, match="total_steps > optim.warmup_steps=2"):
        _policy(optim, total_steps=None)  # type: ignore[arg-type]


def test_bad_inputs_are_rejected():
    engine = _policy()
    batch = make_batch(rows=6, prompt=3, response=3, seed=2)
    with pytest.raises(ValueError, match="normalizer='mean'"):
        engine.train_step(token_loss, batch, micro_batch_size=2, normalizer="mean")
    with pytest.raises(ValueError, match="rows % micro_batch_size"):
        engine.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    with pytest.raises(ValueError, match="missing 'response_mask'"):
        engine.logprobs({k: v for k, v in batch.items() if k != "response_mask"},
                        micro_batch_size=2)
    holes = {**batch, "attention_mask": batch["attention_mask"].clone()}
    holes["attention_mask"][1, -2] = 0
    holes["attention_mask"][1, -1] = 1
    with pytest.raises(ValueError, match=r"rows \[1\] have padding between real tokens"):
        engine.logprobs(holes, micro_batch_size=2)
    with pytest.raises(ValueError, match="scalar sum"):
        engine.train_step(lambda logp, mb: (logp, {}), batch, micro_batch_size=2,
                          normalizer="token")
    with pytest.raises(ValueError, match=r"\['loss'\]"):
        engine.train_step(lambda logp, mb: (logp.sum(), {"loss": 1.0}), batch,
                          micro_batch_size=2, normalizer="token")


def test_bf16_params_keep_fp32_master_weights(tmp_path):
    # bf16 model (Float16Module) with fp32 main params in the (distributed) optimizer, on CPU.
    bf16 = dataclasses.replace(CFG, params_dtype="bf16")
    hf = hf_model(CFG, seed=5)
    fp32_engine, bf16_engine = _policy(hf=hf), build_engine(
        bf16, ParallelConfig(), OPTIM, role="policy", seed=0, total_steps=4)
    bf16_engine.load_state(to_mcore(hf, CFG).items())
    batch = make_batch(rows=4, prompt=5, response=6, seed=6)
    reference = fp32_engine.logprobs(batch, micro_batch_size=4)
    logp = bf16_engine.logprobs(batch, micro_batch_size=4)
    assert logp.dtype == torch.float32 and (logp - reference).abs().max() < 0.1
    before = dict(bf16_engine.export_weights())
    assert before["decoder.final_layernorm.weight"].dtype == torch.bfloat16
    for _ in range(2):  # lr=1e-4 updates are near bf16 resolution: fp32 masters accumulate them
        bf16_engine.train_step(token_loss, batch, micro_batch_size=2, normalizer="token")
    bf16_engine.save(tmp_path / "ck", step=2)
    bf16_engine.train_step(token_loss, batch, micro_batch_size=2, normalizer="token")
    uninterrupted = dict(bf16_engine.export_weights())
    assert any(not torch.equal(before[k], uninterrupted[k]) for k in before)
    resumed = build_engine(bf16, ParallelConfig(), OPTIM, role="policy", seed=0, total_steps=4)
    resumed.load(tmp_path / "ck")
    resumed.train_step(token_loss, batch, micro_batch_size=2, normalizer="token")
    after = dict(resumed.export_weights())
    assert all(torch.equal(after[k], uninterrupted[k]) for k in after)


def test_activation_recompute_gives_the_same_step():
    batch = make_batch(rows=4, prompt=5, response=6, seed=7)
    weights = {}
    for recompute in (None, "selective", "full"):
        engine = build_engine(dataclasses.replace(CFG, recompute=recompute), ParallelConfig(),
                              OPTIM, role="policy", seed=0, total_steps=4)
        engine.train_step(token_loss, batch, micro_batch_size=2, normalizer="token")
        weights[recompute] = dict(engine.export_weights())
    for recompute in ("selective", "full"):
        assert all(torch.allclose(weights[recompute][k], weights[None][k], rtol=0, atol=1e-7)
                   for k in weights[None])


def test_train_step_and_logprobs_returns_the_forward_before_the_update():
    batch = make_batch(rows=8, prompt=6, response=8, seed=4)
    engine, twin = _policy(), _policy()
    before = engine.logprobs(batch, micro_batch_size=8)
    metrics, logp = engine.train_step_and_logprobs(token_loss, batch, micro_batch_size=4,
                                                   normalizer="token")
    assert logp.shape == before.shape
    assert float((logp - before).abs().max()) < 1e-6
    assert float((engine.logprobs(batch, micro_batch_size=8) - before).abs().max()) > 1e-5
    # the same step as train_step: same metrics, same weights
    expected = twin.train_step(token_loss, batch, micro_batch_size=4, normalizer="token")
    assert metrics == pytest.approx(expected, rel=1e-6)
    w, t = dict(engine.export_weights()), dict(twin.export_weights())
    assert max(float((w[k] - t[k]).abs().max()) for k in w) == 0.0
