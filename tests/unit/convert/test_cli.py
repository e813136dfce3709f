"""tools/convert end to end, in process: round trips with --check, dtypes, and bad input.

Every bad input must exit 2 with a message naming the item and leave no output (nor a
temporary directory) behind; a --check above tolerance exits 1, also without output.
"""

import dataclasses
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from prime_mcore.convert import pipeline
from prime_mcore.convert.cli import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, LOGIT_TOLERANCE

from .tiny import CASES, assert_bitwise_equal, hf_tensors, leftovers, make_hf_dir, tool


def to_mcore(*args) -> int:
    return tool("hf_to_mcore").main([str(a) for a in args])


def to_hf(*args) -> int:
    return tool("mcore_to_hf").main([str(a) for a in args])


def _check_line(text: str) -> float:
    m = re.search(r"max \|logit diff\| (\S+) .*: OK", text)
    assert m, text
    return float(m.group(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_with_check(tmp_path, capsys, case):
    hf = make_hf_dir(tmp_path / "hf", case)
    assert to_mcore("--hf", hf, "--out", tmp_path / "ckpt", "--check") == 0
    assert _check_line(capsys.readouterr().out) < LOGIT_TOLERANCE
    assert to_hf("--ckpt", tmp_path / "ckpt", "--out", tmp_path / "back", "--check") == 0
    assert _check_line(capsys.readouterr().out) < LOGIT_TOLERANCE
    assert_bitwise_equal(hf_tensors(tmp_path / "back"), hf_tensors(hf))
    before, after = (json.loads((d / "config.json").read_text()) for d in (hf, tmp_path / "back"))
    for key in ("architectures", "vocab_size", "num_key_value_heads", "tie_word_embeddings",
                "rope_parameters", "rms_norm_eps"):
        assert after[key] == before[key], key
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("tp", [1, 2])
def test_bf16_and_vocab_padding(tmp_path, tp):
    hf = make_hf_dir(tmp_path / "hf", "qwen2_tied_gqa")
    assert to_mcore("--hf", hf, "--out", tmp_path / "c", "--dtype", "bf16", "--tp", tp,
                    "--check") == 0
    manifest = json.loads((tmp_path / "c" / "prime_mcore.json").read_text())
    assert manifest["padded_vocab"] == 128 * tp * -(-300 // (128 * tp))  # 384 / 512
    assert to_hf("--ckpt", tmp_path / "c", "--out", tmp_path / "b", "--max-shard-size",
                 "40KB") == 0
    assert len(list((tmp_path / "b").glob("model-*-of-*.safetensors"))) > 1
    want = {k: v.to(torch.bfloat16) for k, v in hf_tensors(hf).items()}
    stats: dict[str, int] = {}
    pipeline.hf_to_dist(hf, tmp_path / "c2", dtype="bf16", stats=stats)
    assert stats["copied"] == 0  # a cast reads the tensors: nothing to copy in the kernel
    assert_bitwise_equal(hf_tensors(tmp_path / "b"), want)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dtype"] == "bfloat16"


def test_tokenizer_and_generation_config_are_carried(tmp_path):
    hf = make_hf_dir(tmp_path / "hf", "llama_tied_mha")
    (hf / "tokenizer.json").write_text('{"fake": 1}')
    (hf / "generation_config.json").write_text('{"eos_token_id": 7}')
    assert to_mcore("--hf", hf, "--out", tmp_path / "c") == 0
    assert to_hf("--ckpt", tmp_path / "c", "--out", tmp_path / "b") == 0
    for name in ("tokenizer.json", "generation_config.json"):
        assert (tmp_path / "b" / name).read_text() == (hf / name).read_text()


def test_failed_check_publishes_nothing(tmp_path, capsys, monkeypatch):
    """A classic mapping bug (k and v swapped in one layer's fused QKV) fails --check."""
    hf = make_hf_dir(tmp_path / "hf", "llama_untied_gqa")
    real = pipeline.pieces

    def k_v_swapped(lay):
        out = real(lay)
        qkv = [i for i, p in enumerate(out)
               if p.mcore == "decoder.layers.2.self_attention.linear_qkv.weight"]
        k, v = qkv[1], qkv[2]  # group 0: [q, k, v]
        out[k], out[v] = (dataclasses.replace(out[k], hf=out[v].hf),
                          dataclasses.replace(out[v], hf=out[k].hf))
        return out

    monkeypatch.setattr(pipeline, "pieces", k_v_swapped)
    assert to_mcore("--hf", hf, "--out", tmp_path / "c", "--check") == EXIT_CHECK_FAILED
    assert "FAILED" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def _edit_config(hf, **changes):
    cfg = json.loads((hf / "config.json").read_text()) | changes
    (hf / "config.json").write_text(json.dumps(cfg))


def _drop_tensor(hf, name):
    path = hf / "model.safetensors"
    tensors = load_file(str(path))
    del tensors[name]
    save_file(tensors, str(path))


BAD_HF = {
    "unsupported architecture": (lambda hf: _edit_config(hf, architectures=["GPT2LMHeadModel"]),
                                 (), "unsupported architecture 'GPT2LMHeadModel'"),
    "config/weights mismatch": (lambda hf: _edit_config(hf, intermediate_size=128), (),
                                "'model.layers.0.mlp.gate_proj.weight' has shape"),
    "missing tensor": (lambda hf: _drop_tensor(hf, "model.layers.1.self_attn.v_proj.bias"), (),
                       "model.layers.1.self_attn.v_proj.bias"),
    "extra layer": (lambda hf: _edit_config(hf, num_hidden_layers=1), (),
                    "model.layers.1."),
    "tp does not divide heads": (lambda hf: None, ("--tp", "3"),
                                 "--tp 3 does not divide num_attention_heads=4"),
    "pp does not divide layers": (lambda hf: None, ("--pp", "4"),
                                  "--pp 4 does not divide num_hidden_layers=2"),
    "no config": (lambda hf: (hf / "config.json").unlink(), (), "config.json"),
}


@pytest.mark.parametrize("what", sorted(BAD_HF))
def test_bad_hf_input(tmp_path, capsys, what):
    edit, extra, message = BAD_HF[what]
    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1")
    edit(hf)
    assert to_mcore("--hf", hf, "--out", tmp_path / "c", *extra) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_missing_shard(tmp_path, capsys):
    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1", max_shard_size="100KB")
    victim = sorted(hf.glob("model-*.safetensors"))[-1]
    victim.unlink()
    assert to_mcore("--hf", hf, "--out", tmp_path / "c") == EXIT_BAD_INPUT
    assert victim.name in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep").write_text("mine")
    assert to_mcore("--hf", hf, "--out", tmp_path / "c") == EXIT_BAD_INPUT
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "c" / "keep").read_text() == "mine"
    assert to_mcore("--hf", hf, "--out", tmp_path / "c", "--force") == 0
    assert not (tmp_path / "c" / "keep").exists()
    assert (tmp_path / "c" / "prime_mcore.json").is_file()


def _corrupt_distcp(ckpt):
    path = next((ckpt / "dist").glob("*.distcp"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unlist_model_config(ckpt):
    """Like an engine-saved checkpoint: no model_config.json, and none in the manifest."""
    manifest = json.loads((ckpt / "prime_mcore.json").read_text())
    del manifest["files"]["model_config.json"]
    (ckpt / "prime_mcore.json").write_text(json.dumps(manifest))
    (ckpt / "model_config.json").unlink()


BAD_CKPT = {
    "not a checkpoint": (lambda c: (c / "prime_mcore.json").unlink(), "prime_mcore.json"),
    "missing file": (lambda c: next((c / "dist").glob("*.distcp")).unlink(), "__0_0.distcp"),
    "corrupt file": (_corrupt_distcp, "CRC32 mismatch"),
    "missing model config": (lambda c: (c / "model_config.json").unlink(),
                             "model_config.json is missing"),
    "no model config": (_unlist_model_config, "no model_config.json"),
}


@pytest.mark.parametrize("what", sorted(BAD_CKPT))
def test_bad_checkpoint(tmp_path, capsys, what):
    edit, message = BAD_CKPT[what]
    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1")
    assert to_mcore("--hf", hf, "--out", tmp_path / "c") == 0
    edit(tmp_path / "c")
    assert to_hf("--ckpt", tmp_path / "c", "--out", tmp_path / "b") == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []
