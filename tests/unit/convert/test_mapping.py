"""The HF <-> mcore name/layout mapping: exact round trips and the GQA interleaving."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prime_mcore.convert import (
    ConversionError,
    Layout,
    expected_hf_names,
    expected_mcore_names,
    hf_config_from_model,
    hf_to_mcore,
    mcore_to_hf,
    model_config_from_hf,
    padded_vocab_size,
)
from prime_mcore.convert.mapping import fuse_qkv

CASES = {
    "qwen2_tied_gqa": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True,
                                                           num_key_value_heads=2)),
    "qwen2_untied": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False,
                                                         num_key_value_heads=4)),
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False,
                                                      num_key_value_heads=1)),
}


def tiny_hf(case):
    cfg_cls, model_cls, extra = CASES[case]
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, **extra)
    return model_cls(cfg).eval()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("te_norms", [False, True])
def test_round_trip_is_bitwise(case, te_norms):
    model = tiny_hf(case)
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg, tp=2, te_norms=te_norms)
    hf_sd = {k: v for k, v in model.state_dict().items()
             if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    assert sorted(hf_sd) == sorted(expected_hf_names(lay))
    mc = dict(hf_to_mcore(hf_sd.items(), lay))
    assert sorted(mc) == sorted(expected_mcore_names(lay))
    # 300 tokens padded to a multiple of 128 * TP 2 = 256 -> 512 rows, zeros past 300
    emb = mc["embedding.word_embeddings.weight"]
    assert emb.shape == (512, 64) and torch.count_nonzero(emb[300:]) == 0
    back = dict(mcore_to_hf(mc.items(), lay))
    assert sorted(back) == sorted(hf_sd)
    for name, t in hf_sd.items():
        assert torch.equal(back[name], t), name


def test_qkv_interleaving_matches_megatron_layout():
    # 4 query heads in 2 groups, head_dim 2: rows per group = [q_a, q_b, k, v] * 2 rows each
    lay = Layout(num_layers=1, hidden=8, heads=4, groups=2, head_dim=2, vocab=8,
                 padded_vocab=8, tied=True, qkv_bias=True)
    q = torch.arange(8.0)  # heads 0..3, 2 rows each
    k = 100 + torch.arange(4.0)
    v = 200 + torch.arange(4.0)
    fused = fuse_qkv(q, k, v, lay)
    assert fused.tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]


def test_config_round_trip_and_unsupported_arch():
    model = tiny_hf("llama_gqa")
    cfg = model_config_from_hf(model.config.to_dict())
    assert (cfg.arch, cfg.num_query_groups, cfg.qkv_bias) == ("llama", 1, False)
    again = model_config_from_hf(hf_config_from_model(cfg))
    assert again == cfg
    with pytest.raises(ConversionError, match="MistralForCausalLM"):
        model_config_from_hf({"architectures": ["MistralForCausalLM"]})
    with pytest.raises(ConversionError, match="rope_scaling"):
        model_config_from_hf({**model.config.to_dict(), "rope_scaling": {"type": "llama3"}})


def test_bad_tensors_are_named():
    model = tiny_hf("qwen2_untied")
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg)
    sd = dict(model.state_dict())
    del sd["model.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(ConversionError, match="1.q.weight"):
        list(hf_to_mcore(sd.items(), lay))
    wrong = {"model.embed_tokens.weight": torch.zeros(299, 64)}
    with pytest.raises(ConversionError, match="299"):
        list(hf_to_mcore(wrong.items(), lay))
    with pytest.raises(ConversionError, match="model.layers.0.mlp.experts"):
        list(hf_to_mcore([("model.layers.0.mlp.experts.w", torch.zeros(1))], lay))
    assert padded_vocab_size(151665, 128, 4) == 152064  # Qwen2.5's padded embedding size
