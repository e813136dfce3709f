#!/usr/bin/env python
"""prime_mcore engine checkpoint (any layout) -> HF directory (see ``--help``).

    python tools/convert/mcore_to_hf.py --ckpt DIR --out DIR [--check] [--force]
        [--max-shard-size 2GB]

Streams tensor by tensor (``prime_mcore.convert.pipeline.dist_to_hf``); exit codes in
``prime_mcore.convert.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from prime_mcore.convert.cli import convert_and_report, mcore_to_hf_parser, run
from prime_mcore.convert.pipeline import dist_to_hf


def convert(args: argparse.Namespace) -> None:
    hook = None
    if args.check:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _check import run_check

        def hook(tmp: Path) -> None:
            run_check(tmp, Path(args.ckpt))

    convert_and_report(lambda stats: dist_to_hf(
        args.ckpt, args.out, force=args.force, progress=True,
        max_shard_bytes=args.max_shard_size, before_publish=hook, stats=stats))


def main(argv: Sequence[str] | None = None) -> int:
    return run(convert, mcore_to_hf_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
