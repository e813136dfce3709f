"""Independent reference for the engine's numerics: HF transformers Qwen2/Llama models.

``to_mcore`` maps an HF state dict onto the engine's canonical names (weights.py), written
here from the HF modelling code, not from the engine, so that logprob equality checks the
model builder (norms, RoPE base, GQA layout, QKV bias, SwiGLU order, tying, vocab padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prime_mcore.config import ModelConfig


def hf_model(cfg: ModelConfig, *, seed: int) -> torch.nn.Module:
    """A randomly initialised HF model with ``cfg``'s architecture (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                  intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_attention_heads,
                  num_key_value_heads=cfg.num_query_groups, rms_norm_eps=cfg.norm_eps,
                  max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
                  tie_word_embeddings=cfg.tie_word_embeddings, attention_dropout=0.0,
                  torch_dtype=torch.float32)
    torch.manual_seed(seed)
    if cfg.arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False, mlp_bias=False))
    # HF inits norms to 1; perturb them so a swapped or missing norm cannot go unnoticed.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.float().eval()


def _grouped(q: Tensor, k: Tensor, v: Tensor, groups: int) -> Tensor:
    """Megatron's QKV layout: per KV group, its query heads then its key then its value."""
    qs, ks, vs = q.chunk(groups), k.chunk(groups), v.chunk(groups)
    return torch.cat([torch.cat([qs[g], ks[g], vs[g]]) for g in range(groups)])


def to_mcore(model: torch.nn.Module, cfg: ModelConfig) -> dict[str, Tensor]:
    """HF state dict -> canonical mcore names."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output_layer.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        attn = hf + "self_attn."
        out[mc + "input_layernorm.weight"] = sd[hf + "input_layernorm.weight"]
        out[mc + "pre_mlp_layernorm.weight"] = sd[hf + "post_attention_layernorm.weight"]
        out[mc + "self_attention.linear_qkv.weight"] = _grouped(
            sd[attn + "q_proj.weight"], sd[attn + "k_proj.weight"], sd[attn + "v_proj.weight"],
            cfg.num_query_groups)
        if cfg.qkv_bias:
            out[mc + "self_attention.linear_qkv.bias"] = _grouped(
                sd[attn + "q_proj.bias"], sd[attn + "k_proj.bias"], sd[attn + "v_proj.bias"],
                cfg.num_query_groups)
        out[mc + "self_attention.linear_proj.weight"] = sd[attn + "o_proj.weight"]
        out[mc + "mlp.linear_fc1.weight"] = torch.cat([sd[hf + "mlp.gate_proj.weight"],
                                                       sd[hf + "mlp.up_proj.weight"]])
        out[mc + "mlp.linear_fc2.weight"] = sd[hf + "mlp.down_proj.weight"]
    return out


def hf_logprobs(model: torch.nn.Module, batch: dict[str, Tensor], *,
                temperature: float = 1.0) -> Tensor:
    """[B, R] log-probs of the response tokens the HF way (positions from the mask)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = batch["response_mask"].shape[1]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    logp = torch.log_softmax(logits[:, -width - 1:-1].float() / temperature, dim=-1)
    out = logp.gather(-1, ids[:, -width:].unsqueeze(-1)).squeeze(-1)
    return out * mask[:, -width:]
