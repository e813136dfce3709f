"""Helpers of the converter tests: tiny random HF checkpoints and the CLIs run in-process.

Norms and biases are randomised too (HF initialises them to 1 and 0), so a swapped or
dropped mapping changes the logits and the round trip.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ROOT / "tools" / "convert"

# name -> (family, config overrides): tied and untied, GQA and MHA, Qwen2's QKV bias.
CASES: dict[str, tuple[str, dict]] = {
    "qwen2_tied_gqa": ("qwen2", dict(tie_word_embeddings=True, num_key_value_heads=2)),
    "qwen2_untied_gqa1": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=1)),
    "llama_untied_gqa": ("llama", dict(tie_word_embeddings=False, num_key_value_heads=2,
                                       num_hidden_layers=4)),
    "llama_tied_mha": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4)),
}


def tiny_model(case: str, *, vocab: int = 300, seed: int = 0, **overrides) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    family, extra = CASES[case]
    cfg_cls, model_cls = ((Qwen2Config, Qwen2ForCausalLM) if family == "qwen2"
                          else (LlamaConfig, LlamaForCausalLM))
    kwargs = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128,
                  rope_theta=1e6 if family == "qwen2" else 5e5, rms_norm_eps=1e-5,
                  initializer_range=0.1)
    kwargs.update(extra)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf(model: torch.nn.Module, out: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    return out


def make_hf_dir(out: Path, case: str, **kwargs) -> Path:
    shard = kwargs.pop("max_shard_size", None)
    return save_hf(tiny_model(case, **kwargs), out, shard)


def hf_tensors(hf_dir: Path) -> dict[str, Tensor]:
    """Every tensor of an HF directory (read with safetensors itself, not our reader)."""
    from safetensors.torch import load_file

    out: dict[str, Tensor] = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def assert_bitwise_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def tool(name: str) -> ModuleType:
    """tools/convert/<name>.py as a module (its ``main(argv)`` returns the exit code)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def leftovers(parent: Path) -> list[str]:
    """Temporary directories an atomic write left behind."""
    return sorted(p.name for p in parent.glob(".*tmp*"))
