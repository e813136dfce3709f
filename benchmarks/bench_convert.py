"""Benchmark of tools/convert on a Qwen2.5-3B-shaped checkpoint (random bf16 weights, ~6 GB).

    python benchmarks/bench_convert.py [--workdir DIR] [--layers 36] [--keep] [--no-verify]

1. Generates an HF directory of Qwen2.5-3B's shapes (36 layers, hidden 2048, FFN 11008,
   16 heads / 2 KV heads, vocab 151936, tied embeddings, QKV bias) with random bf16 weights,
   streamed tensor by tensor into 2 GiB shards (never the whole model in memory).
2. Times a plain copy of those bytes (``shutil.copytree``, i.e. an in-kernel file copy) as
   the baseline, before and again after the conversions (ratios use the faster one).
3. Times ``hf_to_mcore.py`` and ``mcore_to_hf.py`` (each a child process, interpreter start
   and imports included; peak RSS from ``wait4``), then checks that the round trip is
   bitwise identical, tensor by tensor. ``sync`` runs before every timed phase.

Prints one JSON object: wall seconds and peak RSS (GiB) per phase, the ratios to the copy and
the targets (time <= 3x the copy per direction, peak RSS <= 4 GiB). All phases read from the
page cache when it holds the files (24 GiB machine): the copy and the conversions alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
# The parent process stays small (no torch): a child's peak RSS (wait4) starts from what it
# inherits at fork, so generating and verifying run in children of their own too.


def qwen25_3b(layers: int):  # -> ModelConfig
    from prime_mcore.config import ModelConfig

    return ModelConfig(arch="qwen2", vocab_size=151936, hidden_size=2048, ffn_hidden_size=11008,
                       num_layers=layers, num_attention_heads=16, num_query_groups=2,
                       max_position_embeddings=32768, rope_theta=1e6, norm_eps=1e-6,
                       qkv_bias=True, tie_word_embeddings=True, params_dtype="bf16")


def generate(cfg, out: Path) -> int:
    """Random bf16 HF checkpoint, streamed into shards; returns the bytes of weights."""
    import torch

    from prime_mcore.convert.hf_io import INDEX
    from prime_mcore.convert.hf_write import _ShardFile, plan_shards
    from prime_mcore.convert.mapping import Layout, hf_config_from_model, hf_shapes

    out.mkdir(parents=True)
    shapes = hf_shapes(Layout.from_config(cfg, pad_vocab=False))
    plan = {n: (s, torch.bfloat16) for n, s in shapes.items()}
    groups = plan_shards(plan, 2 * GIB)
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = _ShardFile(out / fname, names, plan)
        try:
            for name in names:
                t = torch.randn(shapes[name], generator=gen, dtype=torch.float32).mul_(0.02)
                shard.put(name, 0, t.to(torch.bfloat16), {})
                weight_map[name] = fname
        finally:
            shard.close()
        total += shard.size
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}))
    config = hf_config_from_model(cfg, dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


def timed_child(cmd: list[str]) -> dict[str, float]:
    """Wall time and peak RSS of one child process (its own, via wait4). Dirty pages of the
    previous phase are flushed first, so no phase pays for another's writeback."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()  # drain before waiting (a full pipe would block the child)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output.decode()[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3)}


def verify(a: Path, b: Path) -> int:
    """Bitwise comparison of every tensor of two HF directories; returns the count."""
    import torch

    from prime_mcore.convert.hf_io import SafetensorsReader

    ra, rb = SafetensorsReader(a), SafetensorsReader(b)
    if sorted(ra.tensors) != sorted(rb.tensors):
        raise AssertionError(f"tensor names differ: {sorted(set(ra.tensors) ^ set(rb.tensors))}")
    for name in ra.tensors:
        x, y = ra.read(name), rb.read(name)
        if x.dtype != y.dtype or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            raise AssertionError(f"{name} differs after the round trip")
    return len(ra.tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--layers", type=int, default=36, help="36 = Qwen2.5-3B")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--no-verify", action="store_true", help="skip the bitwise comparison")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # generate|verify ARGS
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        if args.child[0] == "generate":
            print(generate(qwen25_3b(args.layers), Path(args.child[1])))
        else:
            print(verify(Path(args.child[1]), Path(args.child[2])))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    hf, copy, ckpt, back = (work / n for n in ("hf", "copy", "mcore", "hf_back"))
    for d in (hf, copy, ckpt, back):
        shutil.rmtree(d, ignore_errors=True)
    py = sys.executable
    tools = ROOT / "tools" / "convert"
    try:
        me = [py, str(Path(__file__).resolve()), "--layers", str(args.layers), "--child"]
        start = time.perf_counter()
        nbytes = int(subprocess.check_output([*me, "generate", str(hf)], cwd=ROOT).split()[-1])
        result: dict[str, object] = {
            "model": f"Qwen2.5-3B-shaped, {args.layers} layers, bf16",
            "weights_gib": round(nbytes / GIB, 3),
            "generate_s": round(time.perf_counter() - start, 1)}
        copy_code = f"import shutil; shutil.copytree({str(hf)!r}, {str(copy)!r})"
        result["copy"] = timed_child([py, "-c", copy_code])
        shutil.rmtree(copy)
        result["hf_to_mcore"] = timed_child(
            [py, str(tools / "hf_to_mcore.py"), "--hf", str(hf), "--out", str(ckpt)])
        result["mcore_to_hf"] = timed_child(
            [py, str(tools / "mcore_to_hf.py"), "--ckpt", str(ckpt), "--out", str(back)])
        # Shared machines are noisy: the copy again, after the conversions; ratios use the
        # faster of the two copies (the conservative choice).
        result["copy_again"] = timed_child([py, "-c", copy_code])
        shutil.rmtree(copy)
        copy_s = min(result["copy"]["wall_s"], result["copy_again"]["wall_s"])  # type: ignore[index]
        for phase in ("hf_to_mcore", "mcore_to_hf"):
            result[f"{phase}_vs_copy"] = round(result[phase]["wall_s"] / copy_s, 2)  # type: ignore[index]
        result["round_trip_vs_copy"] = round(
            (result["hf_to_mcore"]["wall_s"] + result["mcore_to_hf"]["wall_s"]) / copy_s, 2)  # type: ignore[index]
        result["targets"] = "per direction <= 3x copy time, peak RSS <= 4 GiB"
        if not args.no_verify:
            result["bitwise_identical_tensors"] = int(subprocess.check_output(
                [*me, "verify", str(hf), str(back)], cwd=ROOT).split()[-1])
        result["load_average"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
