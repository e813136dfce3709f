"""Weight sync from the real trainer: a Megatron-Core engine step, then vLLM serves its weights.

The trainer's path end to end (what ``trainers/rollout_side.py`` does every step):
``Engine.train_step`` -> ``Engine.export_weights`` -> HF names (``convert.engine_hf_tensors``)
-> ``VLLMBackend.update_weights`` -> vLLM samples -> ``Engine.logprobs`` of the same sequences.
In float32 the sampled-token logprobs agree within 1e-4 and greedy continuations equal HF's
(an HF model exported from the engine). Before the sync they disagree, so the check can fail.
Two layouts: Qwen2 with untied embeddings, Llama with a tied lm_head (the CPU re-pack).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prime_mcore.config import OptimConfig, ParallelConfig
from prime_mcore.rollout import HFBackend, RolloutOutput, SamplingParams
from prime_mcore.rollout.weight_sync import bucket_checksum

from .tiny_model import MAX_POSITIONS, build_tiny_checkpoint, load_hf, make_prompts

pytest.importorskip("vllm")

TOL = 1e-4
# One large Adam step, so that stale rollout weights are far off (mean gap > 0.05 nats).
OPTIM = OptimConfig(lr=1e-2, weight_decay=0.0)


@pytest.fixture(scope="module", autouse=True)
def _world1_teardown():
    yield
    from prime_mcore.engine import destroy_distributed

    destroy_distributed()  # later tests expect no process group


def to_llama(ckpt: Path) -> None:
    """Rewrite a tiny Qwen2 checkpoint as a Llama one (no q/k/v biases, same weights)."""
    import json

    from safetensors.torch import load_file, save_file

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    weights = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("_proj.bias")},
              ckpt / "model.safetensors", metadata={"format": "pt"})


def engine_batch(prompts: list[list[int]], out: RolloutOutput, tok) -> dict[str, torch.Tensor]:
    """The trainer's batch layout (``PRIMETrainer.to_batch``) plus vLLM's logprobs [B, R]."""
    from prime_mcore.data.batching import pad_rollouts

    rb = pad_rollouts([prompts[s.prompt_index] for s in out.samples],
                      [s.token_ids for s in out.samples], tok.pad_token_id,
                      eos_id=tok.eos_token_id)
    rollout_logp = torch.zeros(rb.response_mask.shape)
    for row, s in enumerate(out.samples):
        rollout_logp[row, :len(s.logprobs)] = torch.tensor(s.logprobs)
    return {"input_ids": rb.input_ids, "attention_mask": rb.attention_mask,
            "response_mask": rb.response_mask, "rollout_logp": rollout_logp}


def gap(engine, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """|vLLM logprob - engine logprob| over the response tokens."""
    trainer = engine.logprobs(batch, micro_batch_size=8, temperature=temperature)
    mask = batch["response_mask"].bool()
    assert mask.sum() >= 20  # enough tokens for the comparison to mean something
    return (batch["rollout_logp"] - trainer.float())[mask].abs()


def nll_loss(logp: torch.Tensor, mb: dict[str, torch.Tensor]):
    """SFT on the sampled responses: a token-summed NLL (engine LossFn contract)."""
    return -(logp * mb["response_mask"]).sum(), {}


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("llama", True)])
def test_engine_step_then_sync_matches_vllm(tmp_path, arch, tied, monkeypatch):
    from prime_mcore.convert.engine_io import (
        engine_hf_tensors,
        export_engine_to_hf,
        load_hf_into_engine,
    )
    from prime_mcore.convert.hf_io import read_hf_config
    from prime_mcore.convert.mapping import model_config_from_hf
    from prime_mcore.engine import build_engine
    from prime_mcore.rollout import VLLMBackend
    from prime_mcore.trainers.common import hf_special_ids

    ckpt = build_tiny_checkpoint(tmp_path / "init", seed=2, tied=tied)
    if arch == "llama":
        to_llama(ckpt)
    cfg = model_config_from_hf(read_hf_config(ckpt))
    assert (cfg.arch, cfg.tie_word_embeddings, cfg.params_dtype) == (arch, tied, "fp32")
    policy = build_engine(cfg, ParallelConfig(), OPTIM, role="policy", seed=0, total_steps=2)
    load_hf_into_engine(policy, cfg, ckpt)
    _, tok = load_hf(ckpt)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm = VLLMBackend(ckpt, dtype="float32", enforce_eager=True,
                       kv_cache_memory_bytes=64 << 20, max_model_len=MAX_POSITIONS)
    try:
        # Two prompts longer than a KV block (128 tokens on CPU) get prefix-cached: a sync
        # that skipped the cache reset would reuse their pre-step KV.
        prompts = make_prompts(tok, 3, min_len=3, max_len=40, seed=1) + make_prompts(
            tok, 2, min_len=150, max_len=200, seed=6)
        sample = SamplingParams(max_new_tokens=16, seed=3)
        before = engine_batch(prompts, vllm.generate(prompts, 2, sample), tok)
        assert gap(policy, before, 1.0).max() <= TOL  # same weights on both sides

        metrics = policy.train_step(nll_loss, before, micro_batch_size=5, normalizer="token")
        assert metrics["grad_norm"] > 0
        stale = engine_batch(prompts, vllm.generate(prompts, 2, sample), tok)
        assert gap(policy, stale, 1.0).mean() > 0.05  # the step moved the policy

        result = vllm.update_weights(engine_hf_tensors(policy, cfg))
        assert result.prefix_cache_reset
        assert result.checksum == bucket_checksum(engine_hf_tensors(policy, cfg))
        for temperature in (1.0, 0.7):
            out = vllm.generate(prompts, 2, sample.replace(temperature=temperature, seed=5))
            assert gap(policy, engine_batch(prompts, out, tok), temperature).max() <= TOL

        greedy = SamplingParams(temperature=0, max_new_tokens=20)
        exported = export_engine_to_hf(policy, cfg, tmp_path / "after", writer=True,
                                       tokenizer_dir=ckpt, base_config=hf_special_ids(tok))
        hf_greedy = HFBackend.from_pretrained(exported).generate(prompts, 1, greedy)
        assert [s.token_ids for s in vllm.generate(prompts, 1, greedy).samples] == [
            s.token_ids for s in hf_greedy.samples]
    finally:
        vllm.close()
