#!/usr/bin/env python
"""HF Qwen2/Llama directory -> prime_mcore engine checkpoint (see ``--help``).

    python tools/convert/hf_to_mcore.py --hf DIR --out DIR [--tp N] [--pp M]
        [--dtype bf16|fp32] [--check] [--force]

Streams tensor by tensor (``prime_mcore.convert.pipeline.hf_to_dist``); exit codes in
``prime_mcore.convert.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from prime_mcore.convert.cli import convert_and_report, hf_to_mcore_parser, run
from prime_mcore.convert.pipeline import hf_to_dist


def convert(args: argparse.Namespace) -> None:
    hook = None
    if args.check:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _check import run_check

        def hook(tmp: Path) -> None:
            run_check(Path(args.hf), tmp)

    convert_and_report(lambda stats: hf_to_dist(
        args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, force=args.force,
        progress=True, before_publish=hook, stats=stats))


def main(argv: Sequence[str] | None = None) -> int:
    return run(convert, hf_to_mcore_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
