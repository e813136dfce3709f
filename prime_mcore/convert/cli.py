"""Shared pieces of the ``tools/convert`` command lines: parsers, exit codes, the check report.

Exit codes: 0 success; 1 ``--check`` found the two sides further apart than the tolerance
(nothing is published); 2 bad input or output (``ConversionError``, an existing output
without ``--force``, an engine ``CheckpointError``), with one line naming the item.

``--check`` compares full logits of the HF model (transformers) and the engine on fixed
prompts, both computed in fp32 (bf16 weights are upcast exactly), so one tolerance serves both
dtypes: it measures the conversion, not bf16 arithmetic. The tolerances cover the two
implementations' fp32 rounding (different op order: fused QKV, SDPA kernels), measured at
<= 2e-5 on SmolLM2-135M's logits of magnitude ~20 and ~1e-6 on tiny models.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.convert.mapping import ConversionError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2
LOGIT_TOLERANCE = 1e-4
"""Max |HF logit - engine logit| accepted by ``--check``."""
KL_TOLERANCE = 1e-6
"""Max KL(HF || engine) per position (nats) accepted by ``--check``."""
CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog. Then it runs back into the forest.",
    "Question: what is 12 + 30? Answer: let's think step by step. 12 + 30 = 42.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
)


class CheckFailed(RuntimeError):
    """``--check`` measured a difference above tolerance (the message has the numbers)."""


def parse_size(text: str) -> int:
    """"2GB", "500MB", "1GiB" or plain bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 2GB, 500MB, 1GiB)")
    value, unit = float(m.group(1)), m.group(2).upper()
    base = 1024 if m.group(3) else 1000
    return int(value * base ** " KMGT".index(unit)) if unit else int(value)


def hf_to_mcore_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf_to_mcore.py",
        description="Convert an HF Qwen2/Llama directory (safetensors + config.json) into a "
                    "prime_mcore engine checkpoint (Megatron dist checkpoint). The tensors are "
                    "stored by global keys, so the checkpoint loads at any TP x PP x VPP; --tp "
                    "sets the vocabulary padding (make_vocab_size_divisible_by * tp rows) and, "
                    "with --pp, is checked to divide the heads, FFN and layers. Load it at "
                    "another TP with model.make_vocab_size_divisible_by = padded_vocab / tp "
                    "(padded_vocab: see prime_mcore.json).")
    p.add_argument("--hf", required=True, help="HF checkpoint directory")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size to pad for (1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to check (1)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="stored dtype (default: the HF checkpoint's; fp16 becomes fp32)")
    _common(p)
    return p


def mcore_to_hf_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcore_to_hf.py",
        description="Convert a prime_mcore engine checkpoint (any layout) into an HF directory "
                    "that transformers and vLLM load: config.json, generation_config.json, "
                    "tokenizer files, safetensors shards with an index. The architecture comes "
                    "from model_config.json in the checkpoint (or up to 3 parent directories).")
    p.add_argument("--ckpt", required=True, help="engine checkpoint directory")
    p.add_argument("--out", required=True, help="HF directory to create")
    p.add_argument("--max-shard-size", type=parse_size, default=2 << 30,
                   help="largest safetensors shard, e.g. 2GB (default 2 GiB)")
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="compare HF and engine logits on fixed prompts (fp32; both models are "
                        "loaded one after the other) and fail above tolerance")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


@dataclass(frozen=True)
class CheckReport:
    max_abs: float
    kl_max: float
    kl_mean: float
    positions: int
    prompts: int

    @property
    def ok(self) -> bool:
        return self.max_abs <= LOGIT_TOLERANCE and self.kl_max <= KL_TOLERANCE

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"check: max |logit diff| {self.max_abs:.3e} (tol {LOGIT_TOLERANCE:.0e}), "
                f"KL(HF||mcore) max {self.kl_max:.3e} mean {self.kl_mean:.3e} "
                f"(tol {KL_TOLERANCE:.0e}) over {self.prompts} prompts / {self.positions} "
                f"positions: {verdict}")


def compare_logits(hf: Sequence[Tensor], mcore: Sequence[Tensor]) -> CheckReport:
    """Max |difference| and KL(HF || mcore) per position, over [seq, vocab] logits pairs."""
    max_abs, kls = 0.0, []
    for a, b in zip(hf, mcore, strict=True):
        if a.shape != b.shape:
            raise CheckFailed(f"logits shapes differ: HF {tuple(a.shape)}, mcore {tuple(b.shape)}")
        a, b = a.double(), b.double()
        max_abs = max(max_abs, float((a - b).abs().max()))
        la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kls.append((la.exp() * (la - lb)).sum(-1))
    kl = torch.cat(kls)
    return CheckReport(max_abs, float(kl.max()), float(kl.mean()), kl.numel(), len(hf))


def convert_and_report(convert: Callable[[dict[str, int]], Path]) -> Path:
    """Run ``convert(stats)`` (a pipeline call filling ``stats`` with bytes moved), then
    print where it wrote, how long it took and how the bytes moved."""
    start, stats = time.perf_counter(), {}
    out = convert(stats)
    mib = {k: v / 2**20 for k, v in stats.items()}
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s ({mib.get('copied', 0):.0f} MiB "
          f"copied in the kernel, {mib.get('written', 0):.0f} MiB written)", flush=True)
    return out


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse, run, and map the documented failures to exit codes with a one-line message."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except CheckFailed as err:
        print(f"{parser.prog}: {err} (no output written)", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (ConversionError, FileExistsError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        # The engine's CheckpointError (a RuntimeError) is bad input too; import-free test.
        if type(err).__name__ == "CheckpointError":
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    return EXIT_OK
