"""The HF <-> mcore name/layout mapping: exact round trips, shapes, GQA interleaving, configs."""

import pytest
import torch

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
from prime_mcore.convert.mapping import (
    check_parallel,
    fuse_qkv,
    hf_shapes,
    mcore_shapes,
    pieces,
)

from .tiny import CASES, tiny_model


def _hf_state(model, cfg):
    return {k: v for k, v in model.state_dict().items()
            if not (cfg.tie_word_embeddings and k == "lm_head.weight")}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("te_norms", [False, True])
def test_round_trip_is_bitwise(case, te_norms):
    model = tiny_model(case)
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg, tp=2, te_norms=te_norms)
    hf_sd = _hf_state(model, cfg)
    assert sorted(hf_sd) == sorted(expected_hf_names(lay))
    assert {k: tuple(v.shape) for k, v in hf_sd.items()} == hf_shapes(lay)
    mc = dict(hf_to_mcore(hf_sd.items(), lay))
    assert sorted(mc) == sorted(expected_mcore_names(lay))
    assert {k: tuple(v.shape) for k, v in mc.items()} == mcore_shapes(lay)
    # 300 tokens padded to a multiple of 128 * TP 2 = 256 -> 512 rows, zeros past 300
    emb = mc["embedding.word_embeddings.weight"]
    assert emb.shape == (512, 64) and torch.count_nonzero(emb[300:]) == 0
    back = dict(mcore_to_hf(mc.items(), lay))
    assert sorted(back) == sorted(hf_sd)
    for name, t in hf_sd.items():
        assert torch.equal(back[name], t), name


def test_tied_checkpoints_may_store_lm_head():
    model = tiny_model("qwen2_tied_gqa")
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg)
    mc = dict(hf_to_mcore(model.state_dict().items(), lay))  # includes lm_head.weight
    assert "output_layer.weight" not in mc


def test_qkv_interleaving_matches_megatron_layout():
    # 4 query heads in 2 groups, head_dim 2: rows per group = [q_a, q_b, k, v] * 2 rows each
    lay = Layout(num_layers=1, hidden=8, heads=4, groups=2, head_dim=2, vocab=8,
                 padded_vocab=8, tied=True, qkv_bias=True)
    q = torch.arange(8.0)  # heads 0..3, 2 rows each
    k = 100 + torch.arange(4.0)
    v = 200 + torch.arange(4.0)
    fused = fuse_qkv(q, k, v, lay)
    assert fused.tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]


def test_config_round_trip_and_rope():
    model = tiny_model("llama_untied_gqa")
    hf = model.config.to_dict()
    assert "rope_theta" not in hf and hf["rope_parameters"]["rope_theta"] == 5e5  # transformers 5
    cfg = model_config_from_hf(hf)
    assert (cfg.arch, cfg.num_query_groups, cfg.qkv_bias, cfg.rope_theta) == ("llama", 2, False,
                                                                              5e5)
    out = hf_config_from_model(cfg, base=hf)
    assert out["rope_theta"] == out["rope_parameters"]["rope_theta"] == 5e5
    assert model_config_from_hf(out) == cfg
    legacy = {k: v for k, v in hf.items() if k != "rope_parameters"} | {"rope_theta": 1234.0}
    assert model_config_from_hf(legacy).rope_theta == 1234.0
    qwen = model_config_from_hf(tiny_model("qwen2_tied_gqa").config.to_dict())
    assert qwen.qkv_bias and qwen.tie_word_embeddings and qwen.rope_theta == 1e6


@pytest.mark.parametrize(("change", "match"), [
    ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_unsupported_configs_are_named(change, match):
    hf = tiny_model("llama_untied_gqa").config.to_dict() | change
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(ConversionError, match=match):
        model_config_from_hf(hf)


def test_parallel_divisibility():
    cfg = model_config_from_hf(tiny_model("qwen2_tied_gqa").config.to_dict())
    check_parallel(cfg, tp=2, pp=2)
    with pytest.raises(ConversionError, match="--tp 3 does not divide num_attention_heads=4"):
        check_parallel(cfg, tp=3, pp=1)
    with pytest.raises(ConversionError, match="--tp 4 does not divide num_key_value_heads=2"):
        check_parallel(cfg, tp=4, pp=1)
    with pytest.raises(ConversionError, match="--pp 3 does not divide num_hidden_layers=2"):
        check_parallel(cfg, tp=1, pp=3)


def test_bad_tensors_are_named():
    model = tiny_model("qwen2_untied_gqa1")
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg)
    sd = dict(model.state_dict())
    del sd["model.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(ConversionError, match="model.layers.1.self_attn.v_proj.weight"):
        list(hf_to_mcore(sd.items(), lay))
    wrong = {"model.embed_tokens.weight": torch.zeros(299, 64)}
    with pytest.raises(ConversionError, match="299"):
        list(hf_to_mcore(wrong.items(), lay))
    with pytest.raises(ConversionError, match="model.layers.0.mlp.experts"):
        list(hf_to_mcore([("model.layers.0.mlp.experts.w", torch.zeros(1))], lay))
    with pytest.raises(ConversionError, match="layer 7 >= num_hidden_layers 2"):
        list(hf_to_mcore([("model.layers.7.mlp.up_proj.weight", torch.zeros(1))], lay))
    with pytest.raises(ConversionError, match="decoder.layers.0.foo"):
        list(mcore_to_hf([("decoder.layers.0.foo", torch.zeros(1))], lay))
    assert padded_vocab_size(151665, 128, 4) == 152064  # Qwen2.5's padded embedding size


@pytest.mark.parametrize("case", sorted(CASES))
def test_pieces_assemble_the_fused_tensors(case):
    """The row pieces the converters copy give exactly the tensors hf_to_mcore computes."""
    model = tiny_model(case)
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg, tp=2)
    hf_sd = _hf_state(model, cfg)
    want = dict(hf_to_mcore(hf_sd.items(), lay))
    got = {name: torch.full(shape, float("nan")) for name, shape in mcore_shapes(lay).items()}
    for p in pieces(lay):
        src = torch.zeros(p.rows, *got[p.mcore].shape[1:]) if p.hf is None else \
            hf_sd[p.hf][p.hf_row: p.hf_row + p.rows]
        got[p.mcore][p.mcore_row: p.mcore_row + p.rows] = src
    for name, t in want.items():
        assert torch.equal(got[name], t), name
